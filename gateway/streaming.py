"""One generation from its first event to its usage record, streamed or gathered.

`start_generation` waits for the backend's first event: until `GenerationStart` arrives every
failure is a mesh error (an HTTP status; DESIGN.md, "When the HTTP status is decided"). After
it, `GenerationStream` forwards the events, metered; a backend stream that breaks (gRPC error,
EOF before `GenerationFinish`) ends with a `StreamError` and a `GenerationFinish`, never
silently. `GenerationResponse` streams it as SSE (sse-starlette: keep-alive comments, send
timeout, disconnect watch) and `gather` collects it for a non-streamed answer. Either way
`GenerationStream.aclose` closes the backend call (cancelling the gRPC call, hence the
worker's generation) and records the usage, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Literal

import anyio
import grpc
from llmmesh.v1 import events_pb2
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway.completion import Completion
from gateway.edge_api import StreamEncoder
from gateway.errors import (
    InternalError,
    MeshError,
    WorkerFailed,
    error_from_grpc,
    error_from_provider,
    error_from_stream_error,
    stream_error_code,
)
from gateway.metrics import GatewayMetrics
from gateway.providers.errors import ProviderError
from gateway.quotas import LedgerEntry
from plumbing.usage_meter import UsageMeter

__all__ = ["GenerationResponse", "GenerationStream", "gather", "start_generation"]

logger = logging.getLogger(__name__)

#: Bound of closing a backend call (it runs shielded from cancellation).
_CLOSE_TIMEOUT = 10.0


async def _close_quietly(events: AsyncIterator[events_pb2.StreamEvent]) -> None:
    aclose: Callable[[], Any] | None = getattr(events, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await aclose()
        except (grpc.aio.AioRpcError, ProviderError, RuntimeError) as exc:
            logger.debug("closing a backend stream: %r", exc)


async def start_generation(
    events: AsyncIterator[events_pb2.StreamEvent], metrics: GatewayMetrics | None = None
) -> events_pb2.StreamEvent:
    """Waits for the first event of a backend stream; it is always a `GenerationStart`.

    Raises the mesh error of any earlier failure (the stream is closed then); a provider's
    failure is counted in `metrics`.
    """
    error: MeshError
    try:
        first = await anext(events)
    except StopAsyncIteration:
        error = WorkerFailed("the backend stream ended before it started")
    except grpc.aio.AioRpcError as exc:
        error = error_from_grpc(exc)
    except ProviderError as exc:
        if metrics is not None:
            metrics.provider_errors.labels(exc.provider, type(exc).__name__).inc()
        error = error_from_provider(exc)
    except BaseException:
        await _close_quietly(events)
        raise
    else:
        which = first.WhichOneof("event")
        if which == "generation_start":
            return first
        if which == "error":
            error = error_from_stream_error(first.error)
        else:
            error = InternalError(f"the backend stream began with {which}, not generation_start")
    await _close_quietly(events)
    raise error


class GenerationStream:
    """A started generation: its events (metered) and, at the end, its usage record.

    `provider` names the adapter of an external backend (None for the scheduler's streams),
    whose in-band failures count as provider errors.
    """

    def __init__(
        self,
        first: events_pb2.StreamEvent,
        events: AsyncIterator[events_pb2.StreamEvent],
        entry: LedgerEntry,
        *,
        meter: UsageMeter,
        metrics: GatewayMetrics,
        api: str,
        model: str,
        provider: str | None = None,
    ) -> None:
        self._first = first
        self._events = events
        self._entry = entry
        self._metrics = metrics
        self._api = api
        self._model = model
        self._provider = provider
        self.meter = meter
        self._closed = False
        metrics.streaming.inc()

    async def events(self) -> AsyncIterator[events_pb2.StreamEvent]:
        """Every event from `GenerationStart` to `GenerationFinish`, in order.

        After a failure of the backend stream: a `StreamError`, then a `GenerationFinish` with
        the usage counted so far. Cancelling the consumer cancels the backend call.
        """
        self.meter.observe(self._first)
        yield self._first
        failure: MeshError
        try:
            async for event in self._events:
                self.meter.observe(event)
                yield event
                if event.HasField("generation_finish"):
                    return
            failure = WorkerFailed("the backend stream ended before the generation finished")
        except grpc.aio.AioRpcError as exc:
            failure = error_from_grpc(exc)
        except ProviderError as exc:
            self._metrics.provider_errors.labels(exc.provider, type(exc).__name__).inc()
            failure = error_from_provider(exc)
        finally:
            # Adapters report failures after their start in-band; counted once per stream,
            # however it ends, and never the `StreamError` of `_failure_events` below.
            if self._provider is not None and self.meter.error is not None:
                self._metrics.count_provider_stream_error(self._provider, self.meter.error)
        for event in self._failure_events(failure):
            self.meter.observe(event)
            yield event

    def _failure_events(self, failure: MeshError) -> list[events_pb2.StreamEvent]:
        events = []
        if not self.meter.failed:
            events.append(
                events_pb2.StreamEvent(
                    error=events_pb2.StreamError(
                        code=stream_error_code(failure),
                        message=failure.message,
                        retryable=failure.retryable,
                    )
                )
            )
        usage = events_pb2.Usage(
            prompt_tokens=self.meter.prompt_tokens,
            completion_tokens=self.meter.completion_tokens,
            total_tokens=self.meter.prompt_tokens + self.meter.completion_tokens,
        )
        events.append(
            events_pb2.StreamEvent(generation_finish=events_pb2.GenerationFinish(usage=usage))
        )
        return events

    async def aclose(self, status: Literal["ok", "error", "cancelled"] | None = None) -> None:
        """Closes the backend call and records the usage (the meter's status unless given)."""
        if self._closed:
            return
        self._closed = True
        await _close_quietly(self._events)
        await self._entry.close(self.meter, status)
        outcome = status or self.meter.status()
        self._metrics.streaming.dec()
        self._metrics.requests.labels(self._api, self._model, outcome).inc()
        self._metrics.tokens.labels(self._model, "prompt").inc(self.meter.prompt_tokens)
        self._metrics.tokens.labels(self._model, "completion").inc(self.meter.completion_tokens)


#: Events read ahead of the SSE writer (the bound of `_encoded`'s queue).
_READ_AHEAD = 256
#: Marks the end of the events in `_encoded`'s queue.
_END: Final = object()


async def _encoded(stream: GenerationStream, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """The stream's SSE bytes: everything the backend has ready goes out in one write.

    A reader task moves the events into a bounded queue; each item yielded here is the SSE
    encoding of every event queued by then. The scheduler delivers a worker's coalesced
    chunk as one burst of events, so a chunk costs one send (sse-starlette's timeout scope,
    the ASGI chain, one socket write) instead of one per event. Closing this iterator
    cancels the reader, and so the backend call.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(_READ_AHEAD)

    async def read() -> None:
        try:
            async for event in stream.events():
                await queue.put(event)
        except Exception as exc:  # Handed to the writer, which raises it.
            await queue.put(exc)
        else:
            await queue.put(_END)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            item = await queue.get()
            encoded: list[bytes] = []
            while True:
                if item is _END:
                    if encoded:
                        yield b"".join(encoded)
                    return
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, events_pb2.StreamEvent)
                encoded += [sse.encode() for sse in encoder.encode(item)]
                if queue.empty():
                    break
                item = queue.get_nowait()
            if encoded:
                yield b"".join(encoded)
    finally:
        reader.cancel()
        # Shielded: the backend call must be closed before the generation's own close.
        with anyio.CancelScope(shield=True):
            await asyncio.wait([reader])


class GenerationResponse(EventSourceResponse):
    """The SSE answer of a started generation; closes the generation however it ends.

    Client disconnects and send timeouts (a client that stopped reading) cancel the body
    iterator, which cancels the backend call; `__call__` then records the usage.
    """

    def __init__(
        self,
        stream: GenerationStream,
        encoder: StreamEncoder,
        *,
        send_timeout: float,
        ping_interval: float,
        shutdown_grace: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            _encoded(stream, encoder),
            headers=headers,
            ping=ping_interval,
            send_timeout=send_timeout,
            # On shutdown a stream may run this long to its end before it is cancelled.
            shutdown_grace_period=shutdown_grace,
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Streams the events; whatever happens, closes the generation afterwards."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.aclose()


async def gather(stream: GenerationStream, request: Request) -> Completion | None:
    """Collects every event of a non-streamed generation; None when the client disconnected.

    The client's disconnect (an `http.disconnect` on the request's receive channel once the
    body was read) cancels the collection, and so the backend call.
    """
    completion = Completion()
    disconnected = False

    async def collect(scope: anyio.CancelScope) -> None:
        async for event in stream.events():
            completion.add(event)
        scope.cancel()

    async def watch_disconnect(scope: anyio.CancelScope) -> None:
        nonlocal disconnected
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                scope.cancel()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(collect, group.cancel_scope)
        group.start_soon(watch_disconnect, group.cancel_scope)
    return None if disconnected else completion
