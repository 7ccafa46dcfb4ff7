"""The worker pool changes under load: workers join, leave gracefully (SIGTERM) or crash
(SIGKILL of the whole process group).

Each test has its own model (its own queue) on one scheduler (module scope, the machine's
broker under a random prefix); requests go straight to the scheduler's gRPC API.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from fault_mesh import FaultMesh, chat, kinds
from llmmesh.v1 import events_pb2

from bench.process_mesh import ServiceProcess, wait_until
from plumbing.client import SchedulerClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODELS = ("elastic", "draining", "crashing")
STARTED = "llm_mesh_worker_tasks_started_total"
PUBLISHED = "llm_mesh_scheduler_tasks_published_total"
#: 20 ms per token.
TOKEN_INTERVAL = "0.02"
#: The worker's grace period on SIGTERM, set for this module.
GRACE = 2.0


class Pool:
    def __init__(self, mesh: FaultMesh, scheduler: ServiceProcess) -> None:
        self.mesh = mesh
        self.scheduler = scheduler
        self.client: SchedulerClient = mesh.client(scheduler)

    async def capacity(self, model: str) -> int:
        models = await self.client.list_models(timeout=5)
        return sum(info.capacity for info in models if info.name == model)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pool]:
    mesh = FaultMesh(
        tmp_path_factory.mktemp("worker-pool"),
        f"test-{uuid.uuid4().hex[:8]}.",
        MODELS,
        extra_env={"LLM_MESH_WORKER_GRACE_PERIOD": str(GRACE)},
    )
    try:
        yield Pool(mesh, await mesh.start_scheduler())
    finally:
        await mesh.aclose()


async def _generate(
    client: SchedulerClient, model: str, *, max_tokens: int
) -> list[events_pb2.StreamEvent]:
    """A stream of exactly `max_tokens` tokens (`ignore_eos`)."""
    request = chat(model=model, max_tokens=max_tokens, ignore_eos=True)
    return [event async for event in client.generate(request)]


async def _depth_is(mesh: FaultMesh, model: str, expected: int) -> bool:
    return await mesh.queue_depth(model) == expected


def _clean(events: list[events_pb2.StreamEvent], tokens: int) -> bool:
    """Whether a stream ran to its end without an error, with `tokens` tokens."""
    return (
        kinds(events)[0] == "generation_start"
        and "error" not in kinds(events)
        and events[-1].generation_finish.usage.completion_tokens == tokens
    )


async def test_adding_and_removing_workers_under_load_changes_capacity_without_errors(
    pool: Pool,
) -> None:
    """Fault: under a steady load of 8 concurrent streams, two workers join, then the first
    one leaves (SIGTERM). Promise: the pool's capacity follows (2 → 6 → 4 sequences, as
    ListModels reports it), the newcomers take tasks, and not one request fails.
    Bound: every request of the load completes, and the whole change takes under 30 s."""
    model = "elastic"
    first = await pool.mesh.start_worker(
        model, capacity=2, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
    )
    await pool.mesh.wait_for_workers(pool.scheduler, model)
    assert await pool.capacity(model) == 2
    published = await pool.scheduler.metric(PUBLISHED)
    outcomes: list[list[events_pb2.StreamEvent]] = []
    changed = asyncio.Event()

    async def client_loop() -> None:
        while not changed.is_set():
            outcomes.append(await _generate(pool.client, model, max_tokens=10))

    async with asyncio.timeout(30):
        async with asyncio.TaskGroup() as load:
            for _ in range(8):
                load.create_task(client_loop())
            joined = [
                await pool.mesh.start_worker(
                    model, capacity=2, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
                )
                for _ in range(2)
            ]
            await pool.mesh.wait_for_workers(pool.scheduler, model, count=3)
            assert await pool.capacity(model) == 6
            assert await first.stop() == 0
            await pool.mesh.wait_for_workers(pool.scheduler, model, count=2)
            assert await pool.capacity(model) == 4
            for worker in joined:  # Under load, after the first one left.
                await worker.wait_metric(STARTED, lambda v: v >= 5)
            changed.set()
    # Not one task lost: every task published during the change came back as a whole answer
    # (at least the 5 each newcomer started).
    assert await pool.scheduler.metric(PUBLISHED) == published + len(outcomes)
    assert len(outcomes) >= 10
    assert all(_clean(events, 10) for events in outcomes)


async def test_sigterm_finishes_in_flight_sequences_stops_consuming_and_exits_within_grace(
    pool: Pool,
) -> None:
    """Fault: a worker gets SIGTERM with 3 short streams and 1 long stream running, and a
    request arrives after the signal. Promise: the short streams finish normally; the long
    one, cut at the end of the grace period, ends with a retryable WORKER_LOST error; the
    worker takes no new task (the late request is served by the other worker); it exits 0.
    Bound: the process is gone within the grace period (2 s) + 1.5 s of the signal."""
    model = "draining"
    # A higher consumer priority: `leaving` gets every task while it has room.
    leaving = await pool.mesh.start_worker(
        model, capacity=4, priority=2, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
    )
    staying = await pool.mesh.start_worker(
        model, capacity=4, priority=1, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
    )
    await pool.mesh.wait_for_workers(pool.scheduler, model, count=2)
    short = [asyncio.create_task(_generate(pool.client, model, max_tokens=30)) for _ in range(3)]
    long = asyncio.create_task(_generate(pool.client, model, max_tokens=1000))
    await leaving.wait_metric(STARTED, lambda v: v == 4)
    leaving.signal_group(signal.SIGTERM)
    signalled = time.monotonic()
    late = asyncio.create_task(_generate(pool.client, model, max_tokens=5))
    assert await leaving.wait(GRACE + 1.5) == 0
    exited = time.monotonic() - signalled
    async with asyncio.timeout(10):
        short_events = await asyncio.gather(*short)
        long_events, late_events = await long, await late
    assert all(_clean(events, 30) for events in short_events)
    assert kinds(long_events)[-2:] == ["error", "generation_finish"]
    error = long_events[-2].error
    assert error.code == events_pb2.ERROR_CODE_WORKER_LOST and error.retryable
    assert _clean(late_events, 5)
    assert await staying.metric(STARTED) == 1
    assert exited < GRACE + 1.5


async def test_a_crashed_worker_loses_only_its_started_streams(pool: Pool) -> None:
    """Fault: a worker's whole process group is SIGKILLed with 2 streams running and 2 tasks
    prefetched but not started (its engine is slow to prepare them), while another worker
    serves the same model. Promise: the started streams end with a retryable WORKER_LOST
    error (missing heartbeats); the tasks it held but never started are redelivered, taken
    by the other worker and complete invisibly to their callers (ownership rules).
    Bound: the started streams end within 2 s of the kill (heartbeats every 0.25 s, 4 may
    be missed); the redelivered ones complete within 10 s."""
    model = "crashing"
    doomed = await pool.mesh.start_worker(
        model, capacity=4, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
    )
    await pool.mesh.wait_for_workers(pool.scheduler, model)
    running = [
        asyncio.create_task(_generate(pool.client, model, max_tokens=1000)) for _ in range(2)
    ]
    await doomed.wait_metric(STARTED, lambda v: v == 2)
    # A lower consumer priority: the broker hands `doomed` every task it has room for.
    survivor = await pool.mesh.start_worker(
        model, capacity=4, priority=0, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=TOKEN_INTERVAL
    )
    await pool.mesh.wait_for_workers(pool.scheduler, model, count=2)
    published = await pool.scheduler.metric(PUBLISHED)
    doomed.signal_group(signal.SIGSTOP)  # It holds what it is given, and starts nothing more.
    held = [asyncio.create_task(_generate(pool.client, model, max_tokens=5)) for _ in range(2)]
    await pool.scheduler.wait_metric(PUBLISHED, lambda v: v == published + 2)
    await wait_until(lambda: _depth_is(pool.mesh, model, 0))
    assert await survivor.metric("llm_mesh_worker_tasks_received_total") == 0
    doomed.kill()
    killed = time.monotonic()
    async with asyncio.timeout(2):
        for events in await asyncio.gather(*running):
            assert kinds(events)[-2:] == ["error", "generation_finish"]
            assert events[-2].error.code == events_pb2.ERROR_CODE_WORKER_LOST
            assert events[-2].error.retryable
    assert time.monotonic() - killed < 2
    try:
        async with asyncio.timeout(10):
            for events in await asyncio.gather(*held):
                assert _clean(events, 5)
    except grpc.aio.AioRpcError as failure:
        raise AssertionError(f"a held task failed: {failure.code()}") from failure
    # The two it started were redelivered too: their requests had ended, so the scheduler
    # answered their chunk 0 with a Cancel.
    await survivor.wait_metric(
        'llm_mesh_worker_tasks_aborted_total{reason="cancelled"}', lambda v: v == 2
    )
    assert await survivor.metric("llm_mesh_worker_tasks_completed_total") == 2
