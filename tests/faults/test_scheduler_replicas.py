"""Two scheduler replicas behind one gateway: load spread, a frozen replica, a killed one.

The mesh (module scope, the machine's broker under a random prefix): schedulers A and B, one
synthetic worker for `replicas` with room for every stream, and a gateway whose scheduler
targets are A and B. The tests run in order; the last kills A.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from edge_client import SseEvent, native_body, stream_native
from fault_mesh import FaultMesh

from bench.process_mesh import ServiceProcess, wait_until
from plumbing.client import HEALTH_CHECK_INTERVAL

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "replicas"
PUBLISHED = "llm_mesh_scheduler_tasks_published_total"
IN_FLIGHT = "llm_mesh_scheduler_requests_in_flight"
REQUESTER_GONE = 'llm_mesh_worker_tasks_aborted_total{reason="requester_gone"}'
#: A replica that stops answering health checks gets no new request after this long.
HEALTH_BOUND = 3 * HEALTH_CHECK_INTERVAL
#: Short requests through a healthy replica answer this fast.
FAST_ANSWER = 2.0


class Replicas:
    def __init__(
        self,
        mesh: FaultMesh,
        a: ServiceProcess,
        b: ServiceProcess,
        worker: ServiceProcess,
        gateway: ServiceProcess,
    ):
        self.mesh = mesh
        self.a = a
        self.b = b
        self.worker = worker
        self.gateway = gateway
        self.api_key = mesh.create_key()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Replicas]:
    mesh = FaultMesh(tmp_path_factory.mktemp("replicas"), f"test-{uuid.uuid4().hex[:8]}.", [MODEL])
    try:
        a = await mesh.start_scheduler()
        b = await mesh.start_scheduler()
        worker = await mesh.start_worker(
            MODEL, capacity=32, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.02"
        )
        await mesh.wait_for_workers(a, MODEL)
        await mesh.wait_for_workers(b, MODEL)
        gateway = await mesh.start_gateway([a, b])
        yield Replicas(mesh, a, b, worker, gateway)
    finally:
        await mesh.aclose()


async def _short(replicas: Replicas) -> tuple[int, list[SseEvent], float]:
    started = time.monotonic()
    # The request's own budget bounds a call that a frozen replica would never answer.
    body = {**native_body(MODEL, max_tokens=3), "timeout": "10s"}
    async with asyncio.timeout(15):
        status, events = await stream_native(replicas.gateway, replicas.api_key, body)
    return status, events, time.monotonic() - started


async def test_the_gateway_spreads_requests_across_its_scheduler_targets(
    replicas: Replicas,
) -> None:
    """Fault: none (the baseline). Promise: the gateway sends requests round-robin to both
    scheduler targets. Bound: of 20 sequential requests, each replica publishes at least 8."""
    before_a, before_b = await replicas.a.metric(PUBLISHED), await replicas.b.metric(PUBLISHED)
    for _ in range(20):
        status, events, _ = await _short(replicas)
        assert status == 200 and events[-1].event == "generation.finish"
    assert await replicas.a.metric(PUBLISHED) - before_a >= 8
    assert await replicas.b.metric(PUBLISHED) - before_b >= 8


async def test_a_frozen_replica_fails_its_health_checks_and_gets_no_traffic(
    replicas: Replicas,
) -> None:
    """Fault: replica B freezes (SIGSTOP: its port still accepts connections, nothing answers).
    Promise: the gateway's health checks fail, it stops sending requests to B, and every
    request succeeds through A; once B thaws (SIGCONT) it gets traffic again.
    Bound: 3 health-check intervals (3 s) after the freeze, each request answers within 2 s."""
    replicas.b.signal_group(signal.SIGSTOP)
    try:
        # The gateway's health checks run every interval; nothing outside it can be awaited.
        await asyncio.sleep(HEALTH_BOUND)
        for _ in range(10):
            status, events, seconds = await _short(replicas)
            assert status == 200 and events[-1].event == "generation.finish"
            assert seconds < FAST_ANSWER, seconds
    finally:
        replicas.b.signal_group(signal.SIGCONT)
    before = await replicas.b.metric(PUBLISHED)

    async def b_serves_again() -> bool:
        status, _, _ = await _short(replicas)
        assert status == 200
        return await replicas.b.metric(PUBLISHED) > before

    await wait_until(b_serves_again, within=HEALTH_BOUND + 5)


async def test_killing_a_replica_mid_stream_ends_only_its_streams(replicas: Replicas) -> None:
    """Fault: replica A is killed (SIGKILL) while 8 streams run, about half of them on A.
    Promise: A's streams end in-band with a retryable error then `generation.finish`; B's
    run to their natural end; the worker stops generating for A's requests (their reply queue
    vanished with A's connection: `requester_gone`); new requests succeed through B.
    Bounds: A's streams end within 2 s of the kill, the worker stops within 3 s."""
    gone_before = await replicas.worker.metric(REQUESTER_GONE)
    started = asyncio.Event()
    deltas = 0

    def count(event: SseEvent) -> None:
        nonlocal deltas
        deltas += event.event == "sequence.delta"
        if deltas >= 8 * 3:
            started.set()

    # 150 tokens every 20 ms: 3 s each, unless their replica dies.
    body = native_body(MODEL, max_tokens=150, ignore_eos=True)
    streams = [
        asyncio.create_task(stream_native(replicas.gateway, replicas.api_key, body, on_event=count))
        for _ in range(8)
    ]
    async with asyncio.timeout(10):
        await started.wait()
    on_a = int(await replicas.a.metric(IN_FLIGHT))
    assert 1 <= on_a <= 7, on_a
    replicas.a.kill()
    killed = time.monotonic()
    ended: list[tuple[list[SseEvent], float]] = []

    async def timed(stream: asyncio.Task[tuple[int, list[SseEvent]]]) -> None:
        status, events = await stream
        assert status == 200
        ended.append((events, time.monotonic() - killed))

    async with asyncio.timeout(15):
        await asyncio.gather(*(timed(stream) for stream in streams))
    failed = [(events, seconds) for events, seconds in ended if events[-2].event == "error"]
    finished = [events for events, _ in ended if events[-2].event != "error"]
    assert len(failed) == on_a
    for events, seconds in failed:
        assert events[-1].event == "generation.finish"
        assert events[-2].data["retryable"] is True
        assert seconds < 2.0, seconds
    for events in finished:
        assert events[-1].event == "generation.finish"
        assert events[-1].data["usage"]["completion_tokens"] == 150
    await replicas.worker.wait_metric(REQUESTER_GONE, lambda v: v == gone_before + on_a, within=3)
    for _ in range(4):
        status, events, seconds = await _short(replicas)
        assert status == 200 and events[-1].event == "generation.finish"
        assert seconds < FAST_ANSWER
