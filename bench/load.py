"""Load generator for streaming chat endpoints: fixed concurrency or Poisson arrivals.

Measures time to first token (TTFT), inter-token latency (ITL, between the content-carrying
events of sequence 0 as the client reads them), end-to-end latency (p50/p90/p99), output
tokens/s and errors, and verifies every response so a broken target cannot look fast: HTTP
200, the stream's end marker, exactly one finish per choice and no unknown choice, the
expected number of tokens per choice (counted as whitespace-separated words, or, with
`--count usage`, only from the usage totals) and the usage's `completion_tokens` when the
stream reports it. Only verified responses count towards the throughput.

Three wire protocols:

- `openai`: `POST /v1/chat/completions` with `stream: true` and
  `stream_options.include_usage` (the fake upstream, LiteLLM, vLLM's server, the gateway);
- `native`: the gateway's `POST /v1/generate` (canonical events as named SSE events);
- `grpc`: the scheduler's `Generate` stream (`plumbing.client.SchedulerClient`), for the
  scheduler → RabbitMQ → worker path without the gateway.

The HTTP client is a raw asyncio protocol (uvloop when installed) on keep-alive connections,
one per concurrent stream: an HTTP client library costs more CPU per chunk than the servers
under test, and on a small machine the client competes with them for the cores.

Timeline: `--warmup` seconds whose requests are not counted, then a `--duration` window;
requests that complete inside the window are measured. With `--json`, it prints
`measuring` and `measured` lines when the window opens and closes (the driver samples the
servers' CPU then) and finally one JSON document.

    .venv/bin/python bench/load.py --url http://127.0.0.1:8080 --model M --api-key K \\
        --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

__all__ = ["LoadSpec", "Record", "run", "summarize"]

Api = Literal["openai", "native", "grpc"]
Count = Literal["words", "usage"]

_MAX_ERROR_SAMPLES: Final = 5


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and how much."""

    url: str
    model: str
    api: Api = "openai"
    api_key: str = ""
    tokens: int = 32
    choices: int = 1
    count: Count = "words"
    ignore_eos: bool = False
    concurrency: int = 1
    rate: float | None = None
    max_in_flight: int = 1024
    warmup: float = 1.0
    duration: float = 5.0
    request_timeout: float = 120.0


@dataclass
class Record:
    """One request as the client saw it (seconds on the event loop's clock)."""

    started: float
    ended: float = 0.0
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


class _Tally:
    """Everything one response said, checked against the expectation at the end."""

    def __init__(self, spec: LoadSpec, record: Record) -> None:
        self._spec = spec
        self.record = record
        self.tokens = [0] * spec.choices
        self.finishes = [0] * spec.choices
        self.usage_tokens: int | None = None
        self.done = False
        self.failure: str | None = None

    def content(self, index: int, tokens: int, now: float) -> None:
        if not 0 <= index < self._spec.choices:
            self.failure = self.failure or f"unknown choice index {index}"
            return
        self.tokens[index] += tokens
        if self.record.first_token is None:
            self.record.first_token = now
        if index == 0:
            self.record.token_times.append(now)

    def finish(self, index: int) -> None:
        if not 0 <= index < self._spec.choices:
            self.failure = self.failure or f"finish of unknown choice index {index}"
            return
        self.finishes[index] += 1

    def verdict(self) -> str | None:
        """None when the response is complete and right, else what is wrong."""
        spec = self._spec
        if self.failure is not None:
            return self.failure
        if not self.done:
            return "the stream ended without its end marker"
        if any(count != 1 for count in self.finishes):
            return f"finishes per choice {self.finishes} (expected exactly one each)"
        expected_total = spec.tokens * spec.choices
        if spec.count == "words" and any(count != spec.tokens for count in self.tokens):
            return f"tokens per choice {self.tokens} (expected {spec.tokens})"
        if self.usage_tokens is not None and self.usage_tokens != expected_total:
            return f"usage completion_tokens {self.usage_tokens} (expected {expected_total})"
        if spec.count == "usage" and self.usage_tokens is None:
            return "no usage reported"
        if self.record.first_token is None:
            return "no content"
        self.record.tokens = expected_total
        return None


class _OpenAIEvents:
    """`chat.completion.chunk` events into a tally."""

    def __init__(self, tally: _Tally, count: Count) -> None:
        self._tally = tally
        self._words = count == "words"

    def __call__(self, name: str, data: bytes, now: float) -> None:
        tally = self._tally
        if data == b"[DONE]":
            tally.done = True
            return
        chunk = json.loads(data)
        if chunk.get("error"):
            tally.failure = tally.failure or f"in-band error: {chunk['error']}"
            return
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            content = (choice.get("delta") or {}).get("content")
            if content:
                tally.content(index, len(content.split()) if self._words else 1, now)
            if choice.get("finish_reason"):
                tally.finish(index)
        usage = chunk.get("usage")
        if usage:
            tally.usage_tokens = usage.get("completion_tokens")


class _NativeEvents:
    """The gateway's native events (`sequence.delta`, ...) into a tally."""

    def __init__(self, tally: _Tally, count: Count) -> None:
        self._tally = tally

    def __call__(self, name: str, data: bytes, now: float) -> None:
        tally = self._tally
        if name == "sequence.delta":
            delta = json.loads(data)
            token_ids = delta.get("token_ids")
            tokens = len(token_ids) if token_ids else len(delta.get("text", "").split())
            tally.content(delta.get("index", 0), tokens, now)
        elif name == "sequence.finish":
            tally.finish(json.loads(data).get("index", 0))
        elif name == "generation.finish":
            usage = json.loads(data).get("usage") or {}
            tally.usage_tokens = usage.get("completion_tokens")
            tally.done = True
        elif name == "error":
            tally.failure = tally.failure or f"in-band error: {data.decode()}"


EventHandler = Callable[[str, bytes, float], None]


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; SSE bodies decoded inline."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._transport: asyncio.WriteTransport | None = None
        self._handler: EventHandler | None = None
        self._done: asyncio.Future[int] | None = None
        self._lost = False
        self._reset()

    def _reset(self) -> None:
        self._raw = b""
        self._head_done = False
        self._status = 0
        self._framing: Literal["chunked", "length", "close"] = "close"
        self._left = 0
        self._state: Literal["size", "data", "crlf", "trailer"] = "size"
        self._sse = b""
        self._body = b""
        self._keep_alive = True

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._lost and self._keep_alive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._done is not None and not self._done.done():
            if self._head_done and self._framing == "close":
                self._flush_close_body()
                self._done.set_result(self._status)
            else:
                self._done.set_exception(ConnectionError("the server closed the connection"))

    def request(self, head: bytes, body: bytes, handler: EventHandler) -> asyncio.Future[int]:
        """Sends one request; the future gets the status once the whole body was read."""
        assert self._transport is not None
        self._reset()
        self._handler = handler
        self._done = asyncio.get_running_loop().create_future()
        self._transport.write(head + body)
        return self._done

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            return
        now = self._clock()
        self._raw += data
        if not self._head_done and not self._parse_head():
            return
        if self._framing == "chunked":
            self._read_chunked(now)
        elif self._framing == "length":
            take = self._raw[: self._left]
            self._raw = self._raw[len(take) :]
            self._left -= len(take)
            self._body_bytes(take, now)
            if self._left == 0:
                self._end(now)
        else:
            take, self._raw = self._raw, b""
            self._body_bytes(take, now)

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = self._raw[:end].decode("latin-1").split("\r\n")
        self._raw = self._raw[end + 4 :]
        self._status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        self._keep_alive = headers.get("connection") != "close"
        if "chunked" in headers.get("transfer-encoding", ""):
            self._framing = "chunked"
        elif "content-length" in headers:
            self._framing = "length"
            self._left = int(headers["content-length"])
        else:
            self._framing = "close"
            self._keep_alive = False
        self._head_done = True
        if self._framing == "length" and self._left == 0:
            self._end(self._clock())
            return False
        return True

    def _read_chunked(self, now: float) -> None:
        raw = self._raw
        position = 0
        while True:
            if self._state == "size":
                line_end = raw.find(b"\r\n", position)
                if line_end < 0:
                    break
                size = int(raw[position:line_end].split(b";", 1)[0], 16)
                position = line_end + 2
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._left = "data", size
            elif self._state == "data":
                piece = raw[position : position + self._left]
                if not piece:
                    break
                position += len(piece)
                self._left -= len(piece)
                self._body_bytes(piece, now)
                if self._left == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if len(raw) - position < 2:
                    break
                position += 2
                self._state = "size"
            else:  # trailer: no trailers expected, only the final CRLF
                if len(raw) - position < 2:
                    break
                self._raw = b""
                self._end(now)
                return
        self._raw = raw[position:]

    def _body_bytes(self, piece: bytes, now: float) -> None:
        if self._status != 200:
            self._body += piece
            return
        buffer = self._sse + piece
        held = b""
        if buffer.endswith(b"\r"):
            buffer, held = buffer[:-1], b"\r"  # Maybe half of a CRLF.
        blocks = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        self._sse = blocks.pop() + held
        for block in blocks:
            self._dispatch(block, now)

    def _dispatch(self, block: bytes, now: float) -> None:
        name = ""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
        if data and self._handler is not None:
            self._handler(name, b"\n".join(data), now)

    def _flush_close_body(self) -> None:
        if self._sse.strip():
            self._dispatch(self._sse, self._clock())
            self._sse = b""

    def _end(self, now: float) -> None:
        if self._status == 200 and self._sse.strip():
            self._dispatch(self._sse, now)
        if self._done is not None and not self._done.done():
            self._done.set_result(self._status)

    @property
    def error_body(self) -> bytes:
        return self._body


class _HttpTarget:
    """Requests in the `openai` or `native` shape over a pool of keep-alive connections."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        parts = urlsplit(spec.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        base = parts.path.rstrip("/")
        path = "/v1/generate" if spec.api == "native" else "/chat/completions"
        if spec.api == "openai" and not base.endswith("/v1"):
            base += "/v1"
        self._path = (base if spec.api == "openai" else "") + path
        self._idle: list[_HttpConnection] = []
        self._all: list[_HttpConnection] = []
        self._number = 0

    def _body(self) -> bytes:
        spec = self._spec
        self._number += 1
        text = f"benchmark request number {self._number}"
        document: dict[str, Any]
        if spec.api == "native":
            parameters: dict[str, Any] = {"max_tokens": spec.tokens}
            if spec.choices > 1:
                parameters["n"] = spec.choices
            if spec.ignore_eos:
                parameters["ignore_eos"] = True
            document = {
                "model": spec.model,
                "messages": [{"role": "ROLE_USER", "content": [{"text": text}]}],
                "generation_parameters": parameters,
                "stream": True,
            }
        else:
            document = {
                "model": spec.model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": spec.tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if spec.choices > 1:
                document["n"] = spec.choices
            if spec.ignore_eos:
                document["ignore_eos"] = True
        return json.dumps(document, separators=(",", ":")).encode()

    def _head(self, length: int) -> bytes:
        lines = [
            f"POST {self._path} HTTP/1.1",
            f"host: {self._host}:{self._port}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {length}",
        ]
        if self._spec.api_key:
            lines.append(f"authorization: Bearer {self._spec.api_key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _connection(self) -> _HttpConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _HttpConnection(time.perf_counter), self._host, self._port
        )
        self._all.append(connection)
        return connection

    async def one(self, record: Record) -> None:
        spec = self._spec
        tally = _Tally(spec, record)
        handler: EventHandler = (
            _NativeEvents(tally, spec.count)
            if spec.api == "native"
            else _OpenAIEvents(tally, spec.count)
        )
        body = self._body()
        connection = await self._connection()
        try:
            status = await connection.request(self._head(len(body)), body, handler)
        except BaseException:
            connection.close()
            raise
        if connection.usable:
            self._idle.append(connection)
        else:
            connection.close()
        if status != 200:
            detail = connection.error_body[:200].decode(errors="replace")
            raise _Failed(f"HTTP {status}: {detail}")
        failure = tally.verdict()
        if failure is not None:
            raise _Failed(failure)

    async def aclose(self) -> None:
        for connection in self._all:
            connection.close()


class _GrpcTarget:
    """Requests on the scheduler's `Generate` stream (imports the project's client lazily)."""

    def __init__(self, spec: LoadSpec) -> None:
        from llmmesh.v1 import chat_pb2

        from plumbing.client import SchedulerClient

        self._spec = spec
        self._chat = chat_pb2
        self._client = SchedulerClient(spec.url, api_key=spec.api_key or None)
        self._number = 0

    async def one(self, record: Record) -> None:
        spec = self._spec
        chat = self._chat
        self._number += 1
        parameters = chat.GenerationParameters(max_tokens=spec.tokens, ignore_eos=spec.ignore_eos)
        if spec.choices > 1:
            parameters.n = spec.choices
        request = chat.ChatRequest(
            model=spec.model,
            messages=[
                chat.Message(
                    role=chat.ROLE_USER,
                    content=[chat.ContentPart(text=f"benchmark request number {self._number}")],
                )
            ],
            generation_parameters=parameters,
        )
        tally = _Tally(spec, record)
        async for event in self._client.generate(request, timeout=spec.request_timeout):
            now = time.perf_counter()
            which = event.WhichOneof("event")
            if which == "sequence_delta":
                delta = event.sequence_delta
                tally.content(delta.index, len(delta.token_ids) or len(delta.text.split()), now)
            elif which == "sequence_finish":
                tally.finish(event.sequence_finish.index)
            elif which == "generation_finish":
                tally.usage_tokens = event.generation_finish.usage.completion_tokens
                tally.done = True
            elif which == "error":
                tally.failure = tally.failure or f"in-band error: {event.error.message}"
        failure = tally.verdict()
        if failure is not None:
            raise _Failed(failure)

    async def aclose(self) -> None:
        await self._client.aclose()


class _Failed(Exception):
    """A response that does not verify."""


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    return {"p50": rank(0.5) * 1000, "p90": rank(0.9) * 1000, "p99": rank(0.99) * 1000}


def summarize(
    records: list[Record], window: tuple[float, float], errors: list[str]
) -> dict[str, Any]:
    """Statistics of the requests that completed inside `window` (times in milliseconds)."""
    opened, closed = window
    measured = [record for record in records if opened <= record.ended <= closed]
    good = [record for record in measured if record.error is None]
    itl: list[float] = []
    for record in good:
        times = record.token_times
        itl.extend(later - earlier for earlier, later in itertools.pairwise(times))
    span = closed - opened
    tokens = sum(record.tokens for record in good)
    return {
        "requests": len(measured),
        "ok": len(good),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:_MAX_ERROR_SAMPLES],
        "ttft_ms": _percentiles(
            [record.first_token - record.started for record in good if record.first_token]
        ),
        "itl_ms": _percentiles(itl),
        "e2e_ms": _percentiles([record.ended - record.started for record in good]),
        "output_tokens_per_s": tokens / span if span > 0 else 0.0,
        "requests_per_s": len(good) / span if span > 0 else 0.0,
    }


async def run(
    spec: LoadSpec, announce: Callable[[str], None] = lambda _line: None
) -> dict[str, Any]:
    """Runs the load; `announce` is called with `measuring` and `measured` at the window's ends."""
    target: _HttpTarget | _GrpcTarget = (
        _GrpcTarget(spec) if spec.api == "grpc" else _HttpTarget(spec)
    )
    loop = asyncio.get_running_loop()
    records: list[Record] = []
    errors: list[str] = []
    # uvloop's clock ticks in milliseconds: every time here is `time.perf_counter()`.
    clock = time.perf_counter
    opened = clock() + spec.warmup
    closed = opened + spec.duration
    cpu: dict[str, float] = {}

    def mark(name: str) -> None:
        cpu[name] = time.process_time()
        announce(name)

    loop.call_later(opened - clock(), mark, "measuring")
    loop.call_later(closed - clock(), mark, "measured")

    async def one() -> None:
        record = Record(started=clock())
        try:
            async with asyncio.timeout(spec.request_timeout):
                await target.one(record)
        except _Failed as failure:
            record.error = str(failure)
        except TimeoutError:
            record.error = f"no answer within {spec.request_timeout} s"
        except Exception as exc:  # A failed request is a result: transport, protocol, gRPC.
            record.error = f"{type(exc).__name__}: {exc}"
        record.ended = clock()
        records.append(record)
        if record.error is not None:
            errors.append(record.error)

    try:
        if spec.rate is None:
            await _fixed(one, spec.concurrency, closed, clock)
        else:
            await _poisson(one, spec, closed, clock, errors)
        if clock() < closed:  # Every request ended early (e.g. the target refuses).
            await asyncio.sleep(closed - clock())
            await asyncio.sleep(0.01)
    finally:
        await target.aclose()
    summary = summarize(records, (opened, closed), errors)
    summary["client_cpu_s"] = cpu.get("measured", 0.0) - cpu.get("measuring", 0.0)
    summary["mode"] = "fixed" if spec.rate is None else "poisson"
    summary["concurrency"] = spec.concurrency if spec.rate is None else None
    summary["rate"] = spec.rate
    summary["duration_s"] = spec.duration
    return summary


async def _fixed(
    one: Callable[[], Awaitable[None]], concurrency: int, closed: float, clock: Callable[[], float]
) -> None:
    async def stream() -> None:
        while clock() < closed:
            await one()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(stream())


async def _poisson(
    one: Callable[[], Awaitable[None]],
    spec: LoadSpec,
    closed: float,
    clock: Callable[[], float],
    errors: list[str],
) -> None:
    assert spec.rate is not None and spec.rate > 0
    arrivals = random.Random(0)
    slots = spec.max_in_flight
    in_flight = 0

    async def tracked() -> None:
        nonlocal in_flight
        try:
            await one()
        finally:
            in_flight -= 1

    async with asyncio.TaskGroup() as group:
        next_at = clock()
        while next_at < closed:
            await asyncio.sleep(max(0.0, next_at - clock()))
            if in_flight >= slots:
                errors.append(f"dropped: {slots} requests already in flight")
            else:
                in_flight += 1
                group.create_task(tracked())
            next_at += arrivals.expovariate(spec.rate)


def _print_summary(label: str, summary: dict[str, Any]) -> None:
    def ms(stats: dict[str, float | None]) -> str:
        return " / ".join("-" if value is None else f"{value:.1f}" for value in stats.values())

    print(
        f"{label}: {summary['ok']}/{summary['requests']} ok, {summary['errors']} errors, "
        f"{summary['output_tokens_per_s']:.0f} tokens/s, {summary['requests_per_s']:.1f} req/s\n"
        f"  TTFT p50/p90/p99 {ms(summary['ttft_ms'])} ms, ITL {ms(summary['itl_ms'])} ms, "
        f"E2E {ms(summary['e2e_ms'])} ms; client CPU {summary['client_cpu_s']:.2f} s"
    )
    for sample in summary["error_samples"]:
        print(f"  error: {sample}")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL (grpc: host:port)")
    parser.add_argument("--api", choices=["openai", "native", "grpc"], default="openai")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", ""))
    parser.add_argument("--tokens", type=int, default=32, help="expected tokens per choice")
    parser.add_argument("--n", type=int, default=1, help="choices per request")
    parser.add_argument("--count", choices=["words", "usage"], default="words")
    parser.add_argument("--ignore-eos", action="store_true")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=1, help="fixed concurrent streams")
    load.add_argument("--rate", type=float, help="Poisson arrivals per second instead")
    parser.add_argument("--max-in-flight", type=int, default=1024, help="Poisson cap")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--label", default="load")
    parser.add_argument("--json", action="store_true", help="phase lines, then one JSON line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The command line; see the module docstring."""
    arguments = _parse(argv)
    spec = LoadSpec(
        url=arguments.url,
        model=arguments.model,
        api=arguments.api,
        api_key=arguments.api_key,
        tokens=arguments.tokens,
        choices=arguments.n,
        count=arguments.count,
        ignore_eos=arguments.ignore_eos,
        concurrency=arguments.concurrency,
        rate=arguments.rate,
        max_in_flight=arguments.max_in_flight,
        warmup=arguments.warmup,
        duration=arguments.duration,
        request_timeout=arguments.request_timeout,
    )

    def announce(line: str) -> None:
        if arguments.json:
            print(line, flush=True)

    async def go() -> dict[str, Any]:
        return await run(spec, announce)

    try:
        import uvloop
    except ImportError:
        summary = asyncio.run(go())
    else:
        summary = uvloop.run(go())
    summary["label"] = arguments.label
    if arguments.json:
        print(json.dumps(summary), flush=True)
    else:
        _print_summary(arguments.label, summary)


if __name__ == "__main__":
    main()
