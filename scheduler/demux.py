"""Replies per request: the replica's one reply consumer feeds a bounded queue per request id.

Modelled on the correlation-id map of `aio_pika/patterns/rpc.py`, plus what DESIGN.md's "Who
owns a stream" asks for: the first worker to send chunk 0 owns the request; sequence numbers
drop duplicates and expose gaps; chunks for ids this replica does not know are dropped (the
caller answers the first one with a `Cancel`).
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from llmmesh.v1 import broker_pb2
from opentelemetry.trace import SpanContext

from scheduler.errors import MeshError, SlowReader, WorkerFailed

__all__ = ["Demux", "RequestStream", "Verdict"]

#: How many ended request ids are remembered, so their late chunks are dropped quietly.
_REMEMBERED_IDS: Final = 8192


class Verdict(enum.Enum):
    """What happened to one incoming chunk."""

    #: Queued for the request's reader.
    ACCEPTED = "accepted"
    #: A sequence number already accepted (a redelivered publish): dropped.
    DUPLICATE = "duplicate"
    #: For a request that ended or failed: dropped.
    LATE = "late"
    #: The first chunk for a request this replica never had, or a chunk 0 for one that ended
    #: (a redelivered copy): dropped; answer with a Cancel.
    UNKNOWN = "unknown"
    #: From a worker that does not own the request: the stream fails (WORKER_LOST).
    REFUSED = "refused"
    #: A sequence number was skipped, so chunks were lost: the stream fails.
    GAP = "gap"
    #: The request's reader fell too far behind: the stream fails.
    OVERFLOW = "overflow"


class RequestStream:
    """The chunks of one request, in order, as its reader (the gRPC servicer) consumes them.

    `get` returns the owner's chunks in sequence order and raises the stream's failure (a
    `MeshError`) once every chunk accepted before the failure was read.
    """

    def __init__(self, request_id: str, maxsize: int) -> None:
        self.request_id = request_id
        #: The worker that sent the accepted chunk 0, once one did.
        self.owner: str | None = None
        #: The worker's engine span, from the accepted chunk 0's headers (tracing on only).
        self.worker_span: SpanContext | None = None
        self._next_sequence = 0
        # None marks a failure, queued behind the chunks accepted before it.
        self._queue: asyncio.Queue[broker_pb2.TaskChunk | None] = asyncio.Queue(maxsize)
        self._failure: MeshError | None = None

    @property
    def failed(self) -> bool:
        """Whether the stream failed (its reader may still have chunks to read first)."""
        return self._failure is not None

    def offer(self, chunk: broker_pb2.TaskChunk, worker_span: SpanContext | None = None) -> Verdict:
        """Accepts the next chunk, drops a duplicate, or fails the stream.

        `worker_span`: the context of the sender's engine span, if its chunk carried one.
        """
        if self._failure is not None:
            return Verdict.LATE
        if self.owner is None:
            self.owner = chunk.worker_id  # Chunk 0 claims the request; a later one is a gap.
        elif chunk.worker_id != self.owner:
            self.fail(
                WorkerFailed(
                    f"worker {chunk.worker_id!r} sent chunks for a request owned by "
                    f"{self.owner!r} (a redelivered task)"
                )
            )
            return Verdict.REFUSED
        if chunk.sequence_number < self._next_sequence:
            return Verdict.DUPLICATE
        if chunk.sequence_number > self._next_sequence:
            self.fail(
                WorkerFailed(
                    f"chunks {self._next_sequence}..{chunk.sequence_number - 1} of the "
                    "worker's reply were lost"
                )
            )
            return Verdict.GAP
        try:
            self._queue.put_nowait(chunk)
        except asyncio.QueueFull:
            self.fail(SlowReader("the stream was not read fast enough"))
            return Verdict.OVERFLOW
        if self._next_sequence == 0:
            self.worker_span = worker_span
        self._next_sequence += 1
        return Verdict.ACCEPTED

    def fail(self, error: MeshError) -> None:
        """Ends the stream with `error` after the chunks already accepted; the first wins."""
        if self._failure is not None:
            return
        self._failure = error
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            pass  # The reader is not blocked: it meets the failure once it drained the queue.

    async def get(self) -> broker_pb2.TaskChunk:
        """The next chunk; raises the stream's failure when it is next in line."""
        if self._failure is not None and self._queue.empty():
            raise self._failure
        chunk = await self._queue.get()
        if chunk is None:
            assert self._failure is not None
            raise self._failure
        return chunk


class Demux:
    """Request id → `RequestStream`, for the requests this replica is serving now."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._streams: dict[str, RequestStream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    @contextmanager
    def open(self, request_id: str) -> Iterator[RequestStream]:
        """Registers a request's stream for the duration of the block; drops it in `finally`."""
        if request_id in self._streams:
            raise ValueError(f"request {request_id!r} is already open")
        stream = RequestStream(request_id, self._queue_size)
        self._streams[request_id] = stream
        try:
            yield stream
        finally:
            del self._streams[request_id]
            self._remember(request_id)

    def dispatch(
        self, chunk: broker_pb2.TaskChunk, worker_span: SpanContext | None = None
    ) -> Verdict:
        """Routes one chunk from the reply queue (with its sender's span context, if any) to
        its request's stream."""
        stream = self._streams.get(chunk.request_id)
        if stream is not None:
            return stream.offer(chunk, worker_span)
        if chunk.request_id in self._ended and chunk.sequence_number != 0:
            return Verdict.LATE
        # Unknown, or a new stream (chunk 0) for a request that ended: a redelivered copy
        # that should not run. Remembered, so one Cancel answers all of its chunks.
        self._remember(chunk.request_id)
        return Verdict.UNKNOWN

    def fail_owned_by(self, worker_id: str, error: MeshError) -> int:
        """Fails every open stream that `worker_id` owns (it stopped sending heartbeats)."""
        owned = [stream for stream in self._streams.values() if stream.owner == worker_id]
        for stream in owned:
            stream.fail(error)
        return len(owned)

    def fail_all(self, error: MeshError) -> int:
        """Fails every open stream (the broker connection dropped: chunks may be lost, and a
        redelivered copy of a task must not continue a stream)."""
        for stream in self._streams.values():
            stream.fail(error)
        return len(self._streams)

    def _remember(self, request_id: str) -> None:
        self._ended[request_id] = None
        self._ended.move_to_end(request_id)
        while len(self._ended) > _REMEMBERED_IDS:
            self._ended.popitem(last=False)
