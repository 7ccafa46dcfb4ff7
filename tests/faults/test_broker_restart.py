"""The broker restarts under traffic: a private RabbitMQ node is stopped and started again.

One outage, observed once (`outage`, module scope), and one test per promise it must keep.
The mesh: a scheduler, a gateway and a synthetic worker for `restart`, plus a second
scheduler (the "orphan" one) whose tasks for `orphans` wait in their queue behind a busy
worker and which is killed while the broker is down. Every service connects with
`reconnect_interval=0.5` (an AMQP URL parameter of aio-pika's `connect_robust`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import grpc
import httpx
import pytest
import pytest_asyncio
from edge_client import SseEvent, native_body, stream_native
from fault_mesh import FaultMesh, chat
from private_broker import PrivateBroker

from bench.process_mesh import ServiceProcess, sample_sum, wait_until

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(not PrivateBroker.available(), reason="RabbitMQ is not installed"),
]

MODEL = "restart"
ORPHANS = "orphans"
#: In-flight streams end (error event, then generation.finish) this soon after the broker stops.
IN_FLIGHT_BOUND = 3.0
#: A request arriving while the broker is down is answered (503) this fast.
FAST_ANSWER = 2.0
#: Everything works again this soon after the broker accepts connections.
RECOVERY_BOUND = 15.0
IN_FLIGHT = 4
ORPHANED = 3
REQUESTER_GONE = 'llm_mesh_worker_tasks_aborted_total{reason="requester_gone"}'
BROKER_LOST = 'llm_mesh_worker_tasks_aborted_total{reason="broker_lost"}'


@dataclass
class _Answer:
    status: int
    retry_after: str | None
    seconds: float


@dataclass
class Outage:
    """What the mesh did around one broker restart."""

    mesh: FaultMesh
    broker: PrivateBroker
    gateway: ServiceProcess
    api_key: str
    #: The in-flight streams: their events, and how long after the stop each ended.
    streams: list[list[SseEvent]] = field(default_factory=list)
    stream_end_after_stop: list[float] = field(default_factory=list)
    #: The metrics of the worker that ran the in-flight streams, once they ended.
    in_flight_worker_metrics: dict[str, float] = field(default_factory=dict)
    #: Requests made while the broker was down.
    gateway_answers: list[_Answer] = field(default_factory=list)
    grpc_codes: list[tuple[grpc.StatusCode, float]] = field(default_factory=list)
    #: After the restart.
    queues_after: set[str] = field(default_factory=set)
    recovered_after: float = 0.0
    orphans_worker: ServiceProcess | None = None
    orphans_before: dict[str, float] = field(default_factory=dict)
    orphans_after: dict[str, float] = field(default_factory=dict)
    orphans_depth_after: int = -1


async def _depth(broker: PrivateBroker, queue: str) -> int:
    """Ready messages in `queue` (a passive declare)."""
    connection = await aio_pika.connect(broker.amqp_url, timeout=5)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count


async def _gateway_answer(
    gateway: ServiceProcess, api_key: str, body: dict[str, object]
) -> _Answer:
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=gateway.http_url, headers={"authorization": f"Bearer {api_key}"}
    ) as http:
        response = await http.post("/v1/generate", json=body, timeout=30)
    return _Answer(
        response.status_code, response.headers.get("retry-after"), time.monotonic() - started
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outage]:
    root: Path = tmp_path_factory.mktemp("broker-restart")
    broker = PrivateBroker(root / "broker")
    await broker.start()
    mesh = FaultMesh(
        root / "mesh",
        f"test-{uuid.uuid4().hex[:8]}.",
        [MODEL, ORPHANS],
        amqp_url=f"{broker.amqp_url}?reconnect_interval=0.5",
        # The defaults: a worker is declared lost 6 s after its last heartbeat, later than
        # the bound on in-flight streams (only the broker connection's loss is that fast).
        extra_env={
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "2",
            "LLM_MESH_SCHEDULER_MISSED_HEARTBEATS": "3",
        },
    )
    try:
        yield await _run_outage(mesh, broker)
    finally:
        try:
            await mesh.aclose()
        finally:
            await broker.close()


async def _run_outage(mesh: FaultMesh, broker: PrivateBroker) -> Outage:
    scheduler = await mesh.start_scheduler()
    orphan_scheduler = await mesh.start_scheduler(LLM_MESH_SCHEDULER_QUEUE_TIMEOUT="120")
    worker = await mesh.start_worker(
        MODEL, capacity=8, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.02"
    )
    busy = await mesh.start_worker(
        ORPHANS, capacity=1, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.02"
    )
    gateway = await mesh.start_gateway([scheduler])
    await mesh.wait_for_workers(scheduler, MODEL)
    await mesh.wait_for_workers(orphan_scheduler, ORPHANS)
    observed = Outage(mesh, broker, gateway, mesh.create_key(), orphans_worker=busy)

    # Traffic: long streams through the gateway, and orphans queued behind a busy worker.
    streaming = asyncio.Event()
    deltas = 0

    def count(event: SseEvent) -> None:
        nonlocal deltas
        deltas += event.event == "sequence.delta"
        if deltas >= 3 * IN_FLIGHT:
            streaming.set()

    long = native_body(MODEL, max_tokens=2000, ignore_eos=True)
    streams = [
        asyncio.create_task(stream_native(gateway, observed.api_key, long, on_event=count))
        for _ in range(IN_FLIGHT)
    ]
    orphan_client = mesh.client(orphan_scheduler)
    orphan_calls = [
        asyncio.create_task(
            _drain(orphan_client.generate(chat(model=ORPHANS, max_tokens=2000, ignore_eos=True)))
        )
        for _ in range(1 + ORPHANED)
    ]
    async with asyncio.timeout(10):
        await streaming.wait()
    await busy.wait_metric("llm_mesh_worker_running_tasks", lambda v: v == 1)
    await wait_until(lambda: _depth_is(broker, mesh.topology.task_queue(ORPHANS), ORPHANED))

    # The outage.
    await broker.stop()
    stopped = time.monotonic()
    ends = [asyncio.create_task(_ended_after(stream, stopped)) for stream in streams]
    async with asyncio.timeout(IN_FLIGHT_BOUND + 5):
        for status, events, seconds in await asyncio.gather(*ends):
            assert status == 200
            observed.streams.append(events)
            observed.stream_end_after_stop.append(seconds)
    await worker.wait_metric("llm_mesh_worker_running_tasks", lambda v: v == 0)
    observed.in_flight_worker_metrics = await worker.metrics()
    orphan_scheduler.kill()  # Its reply queue will not come back with the broker.
    await orphan_scheduler.wait(10)
    async with asyncio.timeout(10):
        await asyncio.gather(*orphan_calls, return_exceptions=True)
    body = native_body(MODEL, max_tokens=4)
    observed.gateway_answers = [
        await _gateway_answer(gateway, observed.api_key, body) for _ in range(3)
    ]
    direct = mesh.client(scheduler)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async with asyncio.timeout(10):
                await _drain(direct.generate(chat(model=MODEL, max_tokens=4)))
        observed.grpc_codes.append((failure.value.code(), time.monotonic() - started))
    await busy.wait_metric("llm_mesh_worker_running_tasks", lambda v: v == 0)
    observed.orphans_before = await busy.metrics()

    # The broker comes back with its data.
    await broker.start()
    back = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:

        async def ready() -> bool:
            return (await http.get("/readyz", timeout=5)).status_code == 200

        await wait_until(ready, within=RECOVERY_BOUND)
    status, events = await stream_native(gateway, observed.api_key, native_body(MODEL))
    assert status == 200, status
    assert [e.event for e in events][-1] == "generation.finish"
    assert "error" not in [e.event for e in events]
    observed.recovered_after = time.monotonic() - back
    observed.queues_after = await broker.queue_names()
    gone_before = sample_sum(observed.orphans_before, REQUESTER_GONE)
    await busy.wait_metric(REQUESTER_GONE, lambda v: v >= gone_before + 1 + ORPHANED)
    await busy.wait_metric("llm_mesh_worker_running_tasks", lambda v: v == 0)
    observed.orphans_after = await busy.metrics()
    observed.orphans_depth_after = await _depth(broker, mesh.topology.task_queue(ORPHANS))
    return observed


async def _drain(events: AsyncIterator[object]) -> None:
    async for _ in events:
        pass


async def _ended_after(
    stream: asyncio.Task[tuple[int, list[SseEvent]]], since: float
) -> tuple[int, list[SseEvent], float]:
    status, events = await stream
    return status, events, time.monotonic() - since


async def _depth_is(broker: PrivateBroker, queue: str, expected: int) -> bool:
    return await _depth(broker, queue) == expected


async def test_in_flight_streams_end_with_a_retryable_error_when_the_broker_stops(
    outage: Outage,
) -> None:
    """Fault: the broker shuts down under 4 running streams (clients get CONNECTION_FORCED).
    Promise: each stream ends in-band — a retryable `error` event, then `generation.finish`
    with the usage so far — never hangs. Bound: within 3 s of the stop."""
    assert len(outage.streams) == IN_FLIGHT
    for events, seconds in zip(outage.streams, outage.stream_end_after_stop, strict=True):
        names = [event.event for event in events]
        assert names[0] == "generation.start"
        assert names[-2:] == ["error", "generation.finish"], names[-5:]
        assert events[-2].data["retryable"] is True
        assert events[-1].data["usage"]["completion_tokens"] >= 3
        assert seconds < IN_FLIGHT_BOUND, seconds


async def test_the_worker_counts_the_generations_the_outage_aborted(outage: Outage) -> None:
    """Fault: as above, seen from the worker that ran the 4 streams (its broker connection
    drops under them). Promise: it aborts each generation and counts it once, under its own
    reason — `tasks_aborted{reason="broker_lost"}` — neither as completed nor as a requester
    that went away."""
    metrics = outage.in_flight_worker_metrics
    assert sample_sum(metrics, BROKER_LOST) == IN_FLIGHT
    assert sample_sum(metrics, REQUESTER_GONE) == 0
    assert sample_sum(metrics, "llm_mesh_worker_tasks_completed_total") == 0
    assert sample_sum(metrics, "llm_mesh_worker_tasks_started_total") == IN_FLIGHT


async def test_requests_while_the_broker_is_down_get_503_with_retry_after_fast(
    outage: Outage,
) -> None:
    """Fault: requests arrive while the broker is down. Promise: the gateway answers 503 with
    `Retry-After` (never 500, never a hang); the scheduler's own API answers UNAVAILABLE.
    Bound: each answer within 2 s."""
    assert outage.gateway_answers
    for answer in outage.gateway_answers:
        assert answer.status == 503, answer
        assert answer.retry_after is not None and int(answer.retry_after) >= 1
        assert answer.seconds < FAST_ANSWER, answer
    for code, seconds in outage.grpc_codes:
        assert code == grpc.StatusCode.UNAVAILABLE
        assert seconds < FAST_ANSWER


async def test_every_service_reconnects_and_redeclares_its_topology(outage: Outage) -> None:
    """Fault: the broker restarts (exclusive queues are gone with the old connections).
    Promise: every surviving service reconnects on its own (`connect_robust`) and re-declares
    its queues: the scheduler's reply and control queues, the worker's control queue, the
    task queues; the gateway is ready again and a new request streams to its end.
    Bound: within 15 s of the broker accepting connections."""
    mesh = outage.mesh
    names = outage.queues_after
    prefix = mesh.prefix
    assert mesh.topology.task_queue(MODEL) in names
    assert mesh.topology.dead_letter_queue in names
    assert sum(name.startswith(f"{prefix}llm.replies.") for name in names) == 1
    assert sum(name.startswith(f"{prefix}llm.control.scheduler.") for name in names) == 1
    assert sum(name.startswith(f"{prefix}llm.control.worker.") for name in names) == 2
    assert outage.recovered_after < RECOVERY_BOUND


async def test_tasks_whose_requester_is_gone_are_dropped_at_the_first_unroutable_reply(
    outage: Outage,
) -> None:
    """Fault: tasks wait in their durable queue when the broker stops, and their scheduler is
    killed while it is down, so nothing re-declares its reply queue. Promise: after the
    restart the worker takes each one (the one it was running comes back redelivered) and
    aborts it at its first reply, which comes back unroutable: counted as `requester_gone`,
    no chunk confirmed, nothing run to its end, the queue drained."""
    before, after = outage.orphans_before, outage.orphans_after

    def delta(name: str) -> float:
        return sample_sum(after, name) - sample_sum(before, name)

    assert delta(REQUESTER_GONE) == 1 + ORPHANED
    assert delta("llm_mesh_worker_chunks_published_total") == 0
    assert delta("llm_mesh_worker_tasks_completed_total") == 0
    assert outage.orphans_depth_after == 0
