"""A request's reply: engine events in, coalesced `TaskChunk`s out to the task's `reply_to`.

One message per token does not scale (MACHINE-NOTES.md), so `ReplyStream` coalesces: each
request has at most one chunk in flight, and while it is in flight (or within
`flush_interval` of the previous one) new events accumulate into the next chunk. Urgent events
— chunk 0's `GenerationStart`, the first token, the end — skip the interval. Nothing is ever
dropped. Sequence numbers count from 0 per request.

Large outputs: a batch of coalesced events whose chunk would exceed `max_chunk_bytes` (the
worker's `payload_threshold_bytes`) goes out as several consecutive chunks, split between
events. This is simpler than storing big outputs in S3 and keeps the stream's sequence
numbers and order. Engines emit one small delta per step, so a single event never comes
close to the limit; one that did would travel alone in an oversized chunk.

Chunks are transient and `mandatory`, published to the default exchange with routing key =
`reply_to` on a channel with publisher confirms and `on_return_raises`: when the requester's
reply queue is gone, the publish fails, and the stream reports it (`on_undeliverable`) so the
worker aborts the request instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, Protocol

import aio_pika
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, PublishError
from llmmesh.v1 import broker_pb2, events_pb2

__all__ = ["AmqpChunkSink", "ChunkSink", "ReplyStream", "ReplyUndeliverable"]

_CONTENT_TYPE: Final = "application/x-protobuf"
_CHUNK_TYPE: Final = broker_pb2.TaskChunk.DESCRIPTOR.full_name


class ReplyUndeliverable(Exception):
    """A chunk could not be delivered: the requester's reply queue is gone (or the broker)."""


class ChunkSink(Protocol):
    """Where a request's chunks go."""

    async def publish(self, chunk: broker_pb2.TaskChunk) -> None:
        """Delivers one chunk (confirmed); raises `ReplyUndeliverable` when it cannot."""
        ...


class AmqpChunkSink:
    """Publishes chunks to `reply_to` through the default exchange of a confirming channel.

    The exchange's channel must have `publisher_confirms=True, on_return_raises=True`.
    """

    def __init__(self, exchange: AbstractExchange, reply_to: str) -> None:
        self._exchange = exchange
        self._reply_to = reply_to
        #: AMQP headers of the chunks published from now on: the W3C trace context of the
        #: request's engine span, while tracing is on (`plumbing.telemetry.inject_headers`).
        self.headers: dict[str, Any] | None = None

    async def publish(self, chunk: broker_pb2.TaskChunk) -> None:
        """Publishes and waits for the broker's confirm (or return)."""
        message = aio_pika.Message(
            chunk.SerializeToString(),
            content_type=_CONTENT_TYPE,
            type=_CHUNK_TYPE,
            correlation_id=chunk.request_id,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            headers=self.headers,
        )
        try:
            await self._exchange.publish(message, routing_key=self._reply_to, mandatory=True)
        except PublishError as exc:
            raise ReplyUndeliverable(f"reply queue {self._reply_to!r} is gone") from exc
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            raise ReplyUndeliverable("the broker connection failed") from exc


class ReplyStream:
    """Coalesces one request's events into chunks; use as `async with`, end with `finish`.

    `send` never blocks. Leaving the block without `finish` (an exception, a cancellation)
    stops publishing. `on_undeliverable` is called once when a chunk comes back unroutable.
    """

    def __init__(
        self,
        sink: ChunkSink,
        *,
        request_id: str,
        worker_id: str,
        flush_interval: float,
        max_chunk_bytes: int | None = None,
        on_undeliverable: Callable[[], None] = lambda: None,
    ) -> None:
        self._sink = sink
        self._events_budget = (
            None
            if max_chunk_bytes is None
            else max_chunk_bytes - _envelope_size(request_id, worker_id)
        )
        self._request_id = request_id
        self._worker_id = worker_id
        self._flush_interval = flush_interval
        self._on_undeliverable = on_undeliverable
        self._pending: list[events_pb2.StreamEvent] = []
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._closing = False
        self._last_flush = float("-inf")
        self._flusher: asyncio.Task[None] | None = None
        self._failure: ReplyUndeliverable | None = None
        #: Chunks published (and confirmed) so far.
        self.chunks_sent = 0

    @property
    def undeliverable(self) -> bool:
        """Whether a chunk came back: the requester is gone."""
        return self._failure is not None

    async def __aenter__(self) -> ReplyStream:
        self._flusher = asyncio.create_task(self._flush_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.wait([self._flusher])

    def send(self, events: list[events_pb2.StreamEvent], *, urgent: bool = False) -> None:
        """Queues events for the next chunk; `urgent` ones go without waiting the interval."""
        if self._closing or self._failure is not None:
            return
        self._pending.extend(events)
        self._wake.set()
        if urgent:
            self._hurry.set()

    async def finish(self, events: list[events_pb2.StreamEvent]) -> None:
        """Sends the last events and returns when every chunk is confirmed.

        Raises `ReplyUndeliverable` when some chunk could not be delivered.
        """
        assert self._flusher is not None, "use `async with`"
        self.send(events, urgent=True)
        self._closing = True
        self._wake.set()
        self._hurry.set()
        await asyncio.shield(self._flusher)
        if self._failure is not None:
            raise self._failure

    async def reject(self, rejection: broker_pb2.TaskRejection) -> None:
        """Sends chunk 0 as a refusal of the task (instead of any events)."""
        await self._sink.publish(
            broker_pb2.TaskChunk(
                request_id=self._request_id,
                worker_id=self._worker_id,
                sequence_number=0,
                rejection=rejection,
            )
        )
        self.chunks_sent += 1

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self._last_flush + self._flush_interval - loop.time()
            if self._pending and delay > 0 and not self._hurry.is_set():
                # The coalescing window: urgent events and `finish` cut it short.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._hurry.wait()
            if self._pending:
                events, self._pending = self._pending, []
                self._hurry.clear()
                for batch in _batches(events, self._events_budget):
                    chunk = broker_pb2.TaskChunk(
                        request_id=self._request_id,
                        worker_id=self._worker_id,
                        sequence_number=self.chunks_sent,
                        events=batch,
                    )
                    try:
                        await self._sink.publish(chunk)
                    except ReplyUndeliverable as failure:
                        self._failure = failure
                        self._on_undeliverable()
                        return
                    self.chunks_sent += 1
                self._last_flush = loop.time()
            if self._closing and not self._pending:
                return
            if self._pending:
                self._wake.set()


def _batches(
    events: list[events_pb2.StreamEvent], budget: int | None
) -> Iterator[list[events_pb2.StreamEvent]]:
    """`events` in order, cut into lists whose encoding fits `budget` bytes (None: one list).

    An event too large on its own gets a list of its own.
    """
    if budget is None:
        yield events
        return
    batch: list[events_pb2.StreamEvent] = []
    size = 0
    for event in events:
        encoded = _field_size(event.ByteSize())
        if batch and size + encoded > budget:
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += encoded
    if batch:
        yield batch


def _envelope_size(request_id: str, worker_id: str) -> int:
    """The bytes of a chunk without its events (with the largest sequence number)."""
    return broker_pb2.TaskChunk(
        request_id=request_id, worker_id=worker_id, sequence_number=2**31 - 1
    ).ByteSize()


def _field_size(length: int) -> int:
    """The encoded size of one length-delimited field (`events` is field 4: a 1-byte tag)."""
    return 1 + max(1, (length.bit_length() + 6) // 7) + length
