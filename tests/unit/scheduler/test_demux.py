"""The demux: ordering, duplicates, gaps, ownership, overflow and cleanup of request streams."""

from __future__ import annotations

import asyncio

import pytest
from llmmesh.v1 import broker_pb2, events_pb2

from scheduler.demux import Demux, Verdict
from scheduler.errors import SlowReader, WorkerFailed


def _chunk(request_id: str, sequence: int, worker: str = "w1") -> broker_pb2.TaskChunk:
    delta = events_pb2.SequenceDelta(index=0, text=f"t{sequence}")
    return broker_pb2.TaskChunk(
        request_id=request_id,
        worker_id=worker,
        sequence_number=sequence,
        events=[events_pb2.StreamEvent(sequence_delta=delta)],
    )


async def test_chunks_come_out_in_order_and_duplicates_are_dropped() -> None:
    demux = Demux(queue_size=8)
    with demux.open("r1") as stream:
        assert demux.dispatch(_chunk("r1", 0)) is Verdict.ACCEPTED
        assert demux.dispatch(_chunk("r1", 1)) is Verdict.ACCEPTED
        assert demux.dispatch(_chunk("r1", 1)) is Verdict.DUPLICATE
        assert demux.dispatch(_chunk("r1", 0)) is Verdict.DUPLICATE
        assert demux.dispatch(_chunk("r1", 2)) is Verdict.ACCEPTED
        numbers = [(await stream.get()).sequence_number for _ in range(3)]
        assert numbers == [0, 1, 2]
        assert stream.owner == "w1"


async def test_a_gap_fails_the_stream_after_the_chunks_before_it() -> None:
    demux = Demux(queue_size=8)
    with demux.open("r1") as stream:
        demux.dispatch(_chunk("r1", 0))
        assert demux.dispatch(_chunk("r1", 2)) is Verdict.GAP
        assert demux.dispatch(_chunk("r1", 1)) is Verdict.LATE
        assert (await stream.get()).sequence_number == 0
        with pytest.raises(WorkerFailed, match="lost"):
            await stream.get()


async def test_a_lost_chunk_zero_is_a_gap() -> None:
    demux = Demux(queue_size=8)
    with demux.open("r1") as stream:
        assert demux.dispatch(_chunk("r1", 3)) is Verdict.GAP
        with pytest.raises(WorkerFailed):
            await stream.get()


async def test_a_second_worker_is_refused_and_the_stream_fails() -> None:
    demux = Demux(queue_size=8)
    with demux.open("r1") as stream:
        demux.dispatch(_chunk("r1", 0, worker="w1"))
        assert demux.dispatch(_chunk("r1", 0, worker="w2")) is Verdict.REFUSED
        assert (await stream.get()).worker_id == "w1"
        with pytest.raises(WorkerFailed) as failure:
            await stream.get()
        assert failure.value.error_code == events_pb2.ERROR_CODE_WORKER_LOST
        assert failure.value.retryable


async def test_a_blocked_reader_wakes_up_on_failure() -> None:
    demux = Demux(queue_size=8)
    with demux.open("r1") as stream:
        reader = asyncio.create_task(stream.get())
        await asyncio.sleep(0)  # Let the reader block on the empty queue.
        assert demux.fail_owned_by("nobody", WorkerFailed("x")) == 0
        demux.dispatch(_chunk("r1", 0, worker="w9"))
        assert (await reader).sequence_number == 0
        reader = asyncio.create_task(stream.get())
        await asyncio.sleep(0)
        assert demux.fail_owned_by("w9", WorkerFailed("heartbeats stopped")) == 1
        with pytest.raises(WorkerFailed, match="heartbeats"):
            await reader


async def test_a_slow_reader_overflows_after_its_buffer_without_losing_order() -> None:
    demux = Demux(queue_size=2)
    with demux.open("r1") as stream:
        assert demux.dispatch(_chunk("r1", 0)) is Verdict.ACCEPTED
        assert demux.dispatch(_chunk("r1", 1)) is Verdict.ACCEPTED
        assert demux.dispatch(_chunk("r1", 2)) is Verdict.OVERFLOW
        assert [(await stream.get()).sequence_number for _ in range(2)] == [0, 1]
        with pytest.raises(SlowReader):
            await stream.get()


async def test_unknown_ids_are_reported_once_and_ended_ids_are_late() -> None:
    demux = Demux(queue_size=2)
    assert demux.dispatch(_chunk("ghost", 0)) is Verdict.UNKNOWN
    assert demux.dispatch(_chunk("ghost", 1)) is Verdict.LATE
    with demux.open("r1"):
        pass
    assert demux.dispatch(_chunk("r1", 5)) is Verdict.LATE
    # A new stream for a request that ended is a redelivered copy: it gets a Cancel.
    assert demux.dispatch(_chunk("r1", 0, worker="w2")) is Verdict.UNKNOWN
    assert demux.dispatch(_chunk("r1", 1, worker="w2")) is Verdict.LATE


async def test_streams_are_removed_even_when_their_reader_fails() -> None:
    demux = Demux(queue_size=2)
    with pytest.raises(RuntimeError), demux.open("r1"):
        assert len(demux) == 1
        raise RuntimeError("boom")
    assert len(demux) == 0
    with demux.open("r2"), pytest.raises(ValueError):
        with demux.open("r2"):
            pass
