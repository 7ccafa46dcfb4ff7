"""ReplyStream: coalescing, sequence numbers, urgency, and an undeliverable reply."""

from __future__ import annotations

import asyncio

import pytest
from llmmesh.v1 import broker_pb2, events_pb2

from worker.replies import ReplyStream, ReplyUndeliverable


class _GatedSink:
    """Records chunks; each publish waits until the test lets it through (a slow confirm)."""

    def __init__(self) -> None:
        self.chunks: list[broker_pb2.TaskChunk] = []
        self.published = asyncio.Queue[broker_pb2.TaskChunk]()
        self.gate = asyncio.Semaphore(0)
        self.gone = False

    async def publish(self, chunk: broker_pb2.TaskChunk) -> None:
        await self.gate.acquire()
        if self.gone:
            raise ReplyUndeliverable("reply queue is gone")
        self.chunks.append(chunk)
        self.published.put_nowait(chunk)


def _delta(text: str) -> events_pb2.StreamEvent:
    return events_pb2.StreamEvent(sequence_delta=events_pb2.SequenceDelta(text=text))


def _texts(chunk: broker_pb2.TaskChunk) -> list[str]:
    return [event.sequence_delta.text for event in chunk.events]


async def test_events_coalesce_while_a_chunk_is_in_flight() -> None:
    sink = _GatedSink()
    async with ReplyStream(sink, request_id="r", worker_id="w", flush_interval=0) as reply:
        reply.send([_delta("a")], urgent=True)
        await asyncio.sleep(0)  # The flusher takes "a" and waits for its confirm.
        reply.send([_delta("b")])
        reply.send([_delta("c")])
        sink.gate.release()
        assert _texts(await sink.published.get()) == ["a"]
        sink.gate.release()
        assert _texts(await sink.published.get()) == ["b", "c"]
        sink.gate.release()
        await reply.finish([_delta("end")])
    assert [chunk.sequence_number for chunk in sink.chunks] == [0, 1, 2]
    assert _texts(sink.chunks[2]) == ["end"]
    assert {chunk.request_id for chunk in sink.chunks} == {"r"}
    assert reply.chunks_sent == 3


async def test_non_urgent_events_wait_for_the_window_and_finish_cuts_it_short() -> None:
    sink = _GatedSink()
    for _ in range(3):
        sink.gate.release()
    async with ReplyStream(sink, request_id="r", worker_id="w", flush_interval=3600) as reply:
        reply.send([_delta("start")], urgent=True)
        await sink.published.get()
        reply.send([_delta("x")])
        reply.send([_delta("y")])
        reply.send([_delta("first token")], urgent=True)
        assert _texts(await sink.published.get()) == ["x", "y", "first token"]
        reply.send([_delta("z")])
        await asyncio.sleep(0)
        assert sink.published.empty()  # Held for the (hour-long) window...
        await reply.finish([_delta("end")])  # ...until the end.
    assert _texts(sink.chunks[-1]) == ["z", "end"]


async def test_an_undeliverable_chunk_is_reported_and_stops_the_stream() -> None:
    sink = _GatedSink()
    sink.gone = True
    sink.gate.release()
    gone = asyncio.Event()
    async with ReplyStream(
        sink, request_id="r", worker_id="w", flush_interval=0, on_undeliverable=gone.set
    ) as reply:
        reply.send([_delta("a")], urgent=True)
        async with asyncio.timeout(1):
            await gone.wait()
        assert reply.undeliverable
        reply.send([_delta("dropped: nobody listens")])
        with pytest.raises(ReplyUndeliverable):
            await reply.finish([])


async def test_a_rejection_is_chunk_zero() -> None:
    sink = _GatedSink()
    sink.gate.release()
    async with ReplyStream(sink, request_id="r", worker_id="w", flush_interval=0) as reply:
        await reply.reject(broker_pb2.TaskRejection(message="no", field="tools"))
    assert sink.chunks[0].sequence_number == 0
    assert sink.chunks[0].rejection.field == "tools"


async def test_a_batch_over_the_chunk_limit_goes_out_in_several_chunks_in_order() -> None:
    sink = _GatedSink()
    for _ in range(100):
        sink.gate.release()
    limit = 1024
    texts = [f"token {number:04d} " * 5 for number in range(200)]  # ~60 bytes each
    async with ReplyStream(
        sink, request_id="r" * 32, worker_id="w" * 40, flush_interval=0, max_chunk_bytes=limit
    ) as reply:
        reply.send([_delta(text) for text in texts])
        await reply.finish([_delta("end")])
    assert len(sink.chunks) > 10
    assert max(chunk.ByteSize() for chunk in sink.chunks) <= limit
    assert [chunk.sequence_number for chunk in sink.chunks] == list(range(len(sink.chunks)))
    assert [text for chunk in sink.chunks for text in _texts(chunk)] == [*texts, "end"]


async def test_an_event_over_the_chunk_limit_travels_alone() -> None:
    sink = _GatedSink()
    for _ in range(3):
        sink.gate.release()
    async with ReplyStream(
        sink, request_id="r", worker_id="w", flush_interval=0, max_chunk_bytes=1024
    ) as reply:
        reply.send([_delta("a"), _delta("x" * 5000), _delta("b")])
        await reply.finish([])
    assert [_texts(chunk) for chunk in sink.chunks] == [["a"], ["x" * 5000], ["b"]]
