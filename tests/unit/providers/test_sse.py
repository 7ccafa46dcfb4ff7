"""The event-stream reader: line endings, chunk boundaries, and the unterminated last event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.providers.sse import ServerSentEvent, aiter_sse


async def _chunks(content: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


async def _read(content: bytes, size: int) -> list[ServerSentEvent]:
    return [event async for event in aiter_sse(_chunks(content, size))]


SIZES = [1, 2, 3, 1000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_every_line_ending(newline: bytes, size: int) -> None:
    content = newline.join(
        [b"event: a", b"data: one", b"", b": comment", b"data: two", b"data:three", b"", b""]
    )
    assert await _read(content, size) == [
        ServerSentEvent("a", "one"),
        ServerSentEvent("", "two\nthree"),
    ]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n", b"\r"], ids=["none", "LF", "CRLF", "CR"])
async def test_an_unterminated_last_event_is_dispatched(ending: bytes, size: int) -> None:
    content = b'event: message_stop\ndata: {}\n\nevent: last\ndata: {"x": 1}' + ending
    assert await _read(content, size) == [
        ServerSentEvent("message_stop", "{}"),
        ServerSentEvent("last", '{"x": 1}'),
    ]


async def test_utf8_split_across_chunks() -> None:
    content = "data: 30°C — ok\n\n".encode()
    assert await _read(content, 1) == [ServerSentEvent("", "30°C — ok")]


async def test_closing_the_reader_closes_the_chunks() -> None:
    closed = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal closed
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            closed = True

    events = aiter_sse(chunks())
    assert await anext(events) == ServerSentEvent("", "1")
    await events.aclose()  # type: ignore[attr-defined]
    assert closed
