"""The adapters' network (`gateway/providers/aiohttp_transport.py`) against real sockets.

Each failure must surface as the httpx exception httpx's own transport raises for it, since
`Upstream` maps those to mesh errors; the `total` budget (one timer per streamed body,
`upstream._Budget`) must hold even while the read timeout never fires, and a cancellation
from outside must stay a cancellation.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.aiohttp_transport import AiohttpTransport
from gateway.providers.base import ProviderConfig
from gateway.providers.openai import OpenAIAdapter

pytestmark = pytest.mark.asyncio(loop_scope="session")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(content: str) -> bytes:
    return (
        b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"'
        + content.encode()
        + b'"}}]}\n\n'
    )


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server on a free port, answering each connection with `handler`."""
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


async def _get(url: str, *, read_timeout: float = 5.0) -> bytes:
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(5.0, read=read_timeout),
    ) as client:
        response = await client.get(url)
        return response.content


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_refused_connection_is_a_connect_error() -> None:
    with pytest.raises(httpx.ConnectError):
        await _get(f"http://127.0.0.1:{_free_port()}/")


async def test_silence_before_the_headers_is_a_read_timeout() -> None:
    async def silent(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # Until the server closes.

    async with _server(silent) as url:
        with pytest.raises(httpx.ReadTimeout):
            await _get(url, read_timeout=0.2)


async def test_a_connection_closed_mid_body_is_a_protocol_error() -> None:
    async def truncated(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_HEAD + _chunk(_event("hi")))
        await writer.drain()

    async with _server(truncated) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            await _get(url)


async def test_a_complete_body_is_read_whole() -> None:
    async def complete(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_HEAD + _chunk(_event("a")) + _chunk(_event("b")) + b"0\r\n\r\n")
        await writer.drain()

    async with _server(complete) as url:
        assert await _get(url) == _event("a") + _event("b")


async def _trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes keep coming (well within the read timeout); the next event never completes."""
    writer.write(_HEAD + _chunk(_event("first")))
    while True:
        await asyncio.sleep(0.02)  # A slow provider: time passing is the point.
        writer.write(_chunk(b": still here\n"))
        await writer.drain()


async def _fall_silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Silence from when less budget is left than the read timeout: the budget ends it."""
    writer.write(_HEAD + _chunk(_event("first")))
    await asyncio.sleep(0.3)
    writer.write(_chunk(b": still here\n"))
    await writer.drain()
    await asyncio.Event().wait()  # Until the server closes.


@pytest.mark.parametrize("provider", [_trickle, _fall_silent], ids=["trickle", "silent"])
async def test_the_total_budget_ends_a_stream_before_its_read_timeout(provider: Handler) -> None:
    total, read = 0.6, 0.4
    request = chat_pb2.ChatRequest(model="m")
    async with _server(provider) as url:
        adapter = OpenAIAdapter(
            ProviderConfig(
                upstream_model="m",
                base_url=f"{url}/v1",
                api_key="k",
                read_timeout=read,
                total_timeout=total,
            )
        )
        started = time.monotonic()
        try:
            events = [event async for event in adapter.stream(request)]
        finally:
            await adapter.aclose()
    elapsed = time.monotonic() - started
    assert [event.WhichOneof("event") for event in events[-2:]] == ["error", "generation_finish"]
    assert events[-2].error.code == events_pb2.ERROR_CODE_TOTAL_TIMEOUT
    assert total <= elapsed < total + 0.1


async def test_cancelling_the_reader_is_not_a_timeout() -> None:
    request = chat_pb2.ChatRequest(model="m")
    seen: list[str] = []

    async def consume(adapter: OpenAIAdapter) -> None:
        async for event in adapter.stream(request):
            seen.append(str(event.WhichOneof("event")))

    async with _server(_fall_silent) as url:
        adapter = OpenAIAdapter(
            ProviderConfig(upstream_model="m", base_url=f"{url}/v1", api_key="k")
        )
        try:
            reading = asyncio.create_task(consume(adapter))
            await asyncio.sleep(0.1)  # The first event is out; the read waits on the provider.
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        finally:
            await adapter.aclose()
    assert seen == ["generation_start", "sequence_start", "sequence_delta"]
