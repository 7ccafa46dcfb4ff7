"""Reading a provider's `text/event-stream` answer into events.

Follows the WHATWG event-stream interpretation
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end with CRLF, LF or CR; `event:` names the event; `data:` lines are joined with LF; a
blank line dispatches; `:` lines are comments. One deliberate difference: an event still
pending at the end of the body is dispatched instead of dropped, because providers end streams
without the final blank line (recorded Anthropic streams end right after `message_stop`'s data
line, and Gemini's blocked-prompt answer is one `data:` line ended by a single CRLF). httpx-sse
follows the spec there and would lose those events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

__all__ = ["ServerSentEvent", "aiter_sse"]


class ServerSentEvent(NamedTuple):
    """One dispatched event: its name ("" when the stream gave none) and its data.

    A named tuple: one is built per provider chunk, and a tuple is the cheapest to build.
    """

    event: str
    data: str


class _EventBuilder:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._pending = False

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self.dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
            self._pending = True
        elif name == "data":
            self._data.append(value)
            self._pending = True
        return None

    def dispatch(self) -> ServerSentEvent | None:
        if not self._pending:
            return None
        event = ServerSentEvent(event=self._event, data="\n".join(self._data))
        self._event, self._data, self._pending = "", [], False
        return event


async def aiter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Yields the events of an event-stream body given as byte chunks of any size.

    Closing this iterator closes `chunks`.
    """
    try:
        async for event in _events(chunks):
            yield event
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _events(chunks: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
    builder = _EventBuilder()
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" not in buffer:
            # Every line ends with LF (what providers send): split them all at once.
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = builder.feed(line.decode("utf-8"))
                if event is not None:
                    yield event
            continue
        start = 0
        while True:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            if buffer[end : end + 1] == b"\r":
                if end + 1 == len(buffer):
                    break  # A CR at the end of a chunk may be the first half of a CRLF.
                step = 2 if buffer[end + 1 : end + 2] == b"\n" else 1
            else:
                step = 1
            event = builder.feed(buffer[start:end].decode("utf-8"))
            start = end + step
            if event is not None:
                yield event
        buffer = buffer[start:]
    if buffer:
        event = builder.feed(buffer.rstrip(b"\r").decode("utf-8"))
        if event is not None:
            yield event
    event = builder.dispatch()
    if event is not None:
        yield event
