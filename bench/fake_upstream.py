"""A fake OpenAI-compatible upstream: `/v1/chat/completions` streaming N tokens at a fixed rate.

The baseline of the overhead benchmark (`bench/overhead.py`), so it must cost next to nothing:
a raw asyncio HTTP/1.1 server (uvloop when installed), keep-alive connections, chunked
responses, and a timer callback per token instead of a task per stream. Every sequence gets
its role chunk and its first token as soon as the request is read, then one token every
`interval` seconds on an absolute schedule, then its `finish_reason` chunk (`stop`, or
`length` when the request's `max_tokens`/`max_completion_tokens` cut it short); with
`stream_options.include_usage` a last `choices: []` chunk carries the usage; then
`data: [DONE]`. `n` > 1 streams one chunk per choice per step, as OpenAI does. A request with
`stream: false` gets one `chat.completion` document once the tokens would have been generated.
`GET /v1/models` and `GET /health` answer at once.

Tokens are whole words (" w0", " w1", ...), so a client can check the count by splitting the
text. Not a test double of OpenAI's errors: anything it does not understand gets a 400/404.

    .venv/bin/python bench/fake_upstream.py [--port 0] [--tokens 32] [--interval 0.002]

prints `fake upstream ready: http://HOST:PORT` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["UpstreamConfig", "serve"]

_MAX_HEAD: Final = 64 * 1024
_MAX_BODY: Final = 16 * 1024 * 1024
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}


@dataclass(frozen=True)
class UpstreamConfig:
    """How the fake upstream answers."""

    tokens: int = 32
    interval: float = 0.002
    first_token_delay: float = 0.0


def _json_response(status: int, document: Any, *, keep_alive: bool) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _shape(body: dict[str, Any], config: UpstreamConfig) -> tuple[int, str, int]:
    """Tokens per choice, their finish reason and the number of choices a request gets."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = config.tokens
    if isinstance(limit, int) and 0 < limit < tokens:
        tokens = limit
    choices = body.get("n")
    return (
        tokens,
        "length" if tokens < config.tokens else "stop",
        choices if isinstance(choices, int) and choices > 1 else 1,
    )


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += len(part["text"].split())
    return max(words, 1)


class _Generation:
    """One streamed answer: its chunks, written by timer callbacks on an absolute schedule."""

    def __init__(
        self,
        connection: _Connection,
        body: dict[str, Any],
        config: UpstreamConfig,
        *,
        keep_alive: bool,
    ) -> None:
        self._connection = connection
        self._keep_alive = keep_alive
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._tokens, self._finish_reason, self._choices = _shape(body, config)
        options = body.get("stream_options")
        self._include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self._prompt_tokens = _prompt_tokens(body)
        model = json.dumps(str(body.get("model") or "fake"))
        created = int(time.time())
        self._prefix = (
            f'data: {{"id":"chatcmpl-{uuid.uuid4().hex}","object":"chat.completion.chunk",'
            f'"created":{created},"model":{model},"system_fingerprint":null,"choices":['
        ).encode()
        self._suffix = b',"usage":null}\n\n' if self._include_usage else b"}\n\n"
        self._step = 0
        self._handle: asyncio.TimerHandle | None = None

    def _event(self, choices: bytes) -> bytes:
        return self._prefix + choices + b"]" + self._suffix

    def start(self) -> None:
        head = (
            "HTTP/1.1 200 OK\r\n"
            "content-type: text/event-stream\r\n"
            "cache-control: no-cache\r\n"
            "transfer-encoding: chunked\r\n"
            f"connection: {'keep-alive' if self._keep_alive else 'close'}\r\n\r\n"
        ).encode()
        roles = b"".join(
            self._event(
                b'{"index":%d,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}' % index
            )
            for index in range(self._choices)
        )
        self._connection.write(head + _chunk(roles))
        self._started = self._loop.time() + self._config.first_token_delay
        if self._config.first_token_delay > 0:
            self._handle = self._loop.call_at(self._started, self._emit)
        else:
            self._emit()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _emit(self) -> None:
        self._handle = None
        step = self._step
        self._step += 1
        payload = b"".join(
            self._event(
                b'{"index":%d,"delta":{"content":" w%d"},"logprobs":null,"finish_reason":null}'
                % (index, step)
            )
            for index in range(self._choices)
        )
        if self._step < self._tokens:
            self._connection.write(_chunk(payload))
            when = self._started + self._step * self._config.interval
            self._handle = self._loop.call_at(when, self._emit)
            return
        payload += b"".join(
            self._event(
                b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":"%s"}'
                % (index, self._finish_reason.encode())
            )
            for index in range(self._choices)
        )
        if self._include_usage:
            completion = self._tokens * self._choices
            usage = json.dumps(
                {
                    "prompt_tokens": self._prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": self._prompt_tokens + completion,
                },
                separators=(",", ":"),
            ).encode()
            payload += self._prefix + b'],"usage":' + usage + b"}\n\n"
        payload += b"data: [DONE]\n\n"
        self._connection.write(_chunk(payload) + b"0\r\n\r\n")
        self._connection.finished(self._keep_alive)


class _Connection(asyncio.Protocol):
    """One client connection: requests one after another (no pipelining needed)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._transport: asyncio.WriteTransport | None = None
        self._buffer = b""
        self._busy = False
        self._generation: _Generation | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not `asyncio.Transport` subclasses; they do write and close.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._generation is not None:
            self._generation.cancel()
            self._generation = None
        for task in self._pending:
            task.cancel()

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def finished(self, keep_alive: bool) -> None:
        """The current answer is complete: close, or read the next request."""
        self._generation = None
        self._busy = False
        if not keep_alive:
            if self._transport is not None:
                self._transport.close()
            return
        self._handle_buffer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._handle_buffer()

    def _handle_buffer(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._reject(400, "request head too large")
            return
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._reject(400, "malformed request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length_text = headers.get("content-length", "0" if method == "GET" else "")
        if not length_text.isdigit() or int(length_text) > _MAX_BODY:
            self._reject(411, "a content-length is required")
            return
        length = int(length_text)
        if len(self._buffer) < end + 4 + length:
            return  # The body is still coming.
        body = self._buffer[end + 4 : end + 4 + length]
        self._buffer = self._buffer[end + 4 + length :]
        connection_header = headers.get("connection", "").lower()
        keep_alive = connection_header != "close" and (
            version == "HTTP/1.1" or connection_header == "keep-alive"
        )
        self._busy = True
        self._dispatch(method, target.split("?", 1)[0], body, keep_alive=keep_alive)

    def _reject(self, status: int, message: str) -> None:
        self.write(_json_response(status, {"error": {"message": message}}, keep_alive=False))
        if self._transport is not None:
            self._transport.close()

    def _answer(self, status: int, document: Any, *, keep_alive: bool) -> None:
        self.write(_json_response(status, document, keep_alive=keep_alive))
        self.finished(keep_alive)

    def _dispatch(self, method: str, path: str, body: bytes, *, keep_alive: bool) -> None:
        path = path.rstrip("/")
        if method == "GET" and path in ("/health", "/v1/models", "/models"):
            models = {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            self._answer(200, {"status": "ok"} if path == "/health" else models, keep_alive=True)
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            self._answer(404, {"error": {"message": f"no route {method} {path}"}}, keep_alive=True)
            return
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._answer(400, {"error": {"message": f"invalid JSON: {exc}"}}, keep_alive=True)
            return
        if request.get("stream"):
            self._generation = _Generation(self, request, self._config, keep_alive=keep_alive)
            self._generation.start()
            return
        task = asyncio.get_running_loop().create_task(self._complete(request, keep_alive))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _complete(self, request: dict[str, Any], keep_alive: bool) -> None:
        config = self._config
        tokens, reason, choices = _shape(request, config)
        await asyncio.sleep(config.first_token_delay + (tokens - 1) * config.interval)
        prompt = _prompt_tokens(request)
        text = "".join(f" w{step}" for step in range(tokens))
        document = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(request.get("model") or "fake"),
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": reason,
                }
                for index in range(choices)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": tokens * choices,
                "total_tokens": prompt + tokens * choices,
            },
        }
        self._answer(200, document, keep_alive=keep_alive)


async def serve(
    config: UpstreamConfig, host: str, port: int, ready: asyncio.Future[int] | None = None
) -> None:
    """Serves until cancelled; `ready` gets the bound port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(config), host, port, backlog=1024)
    async with server:
        bound = server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set_result(bound)
        await server.serve_forever()


async def _main(arguments: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    ready: asyncio.Future[int] = loop.create_future()
    config = UpstreamConfig(arguments.tokens, arguments.interval, arguments.first_token_delay)
    serving = asyncio.create_task(serve(config, arguments.host, arguments.port, ready))
    waits: list[asyncio.Future[Any]] = [ready, serving]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await serving  # It failed to listen: raise why.
    port = ready.result()
    print(f"fake upstream ready: http://{arguments.host}:{port}", flush=True)
    await stopping.wait()
    serving.cancel()
    await asyncio.wait([serving])


def _run(arguments: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(arguments))
    else:
        uvloop.run(_main(arguments))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds per token")
    parser.add_argument(
        "--first-token-delay", type=float, default=0.0, help="seconds before the first token"
    )
    return parser.parse_args()


if __name__ == "__main__":
    _run(_parse())
