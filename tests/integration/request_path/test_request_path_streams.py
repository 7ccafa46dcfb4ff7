"""End to end through gRPC with the synthetic engine: streams, validation, fast failures, and
no leaks after a burst."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from broker_inspector import BrokerInspector
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from llmmesh.v1 import events_pb2
from request_path_harness import Mesh, chat, kinds, status_details

from bench.process_mesh import ServiceProcess
from plumbing.client import SchedulerClient
from scheduler.server import SchedulerServer

MODEL = "synth"
TOKENS = 8
MAX_CONTEXT = 64


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh) -> SchedulerServer:
    return await mesh.start_scheduler()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(mesh: Mesh, scheduler: SchedulerServer) -> ServiceProcess:
    return await mesh.start_worker(
        MODEL,
        scheduler=scheduler,
        capacity=8,
        tokens=TOKENS,
        token_interval=0.005,
        max_context=MAX_CONTEXT,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(mesh: Mesh, scheduler: SchedulerServer, worker: ServiceProcess) -> SchedulerClient:
    return mesh.client(scheduler)


async def _collect(events: AsyncIterator[events_pb2.StreamEvent]) -> list[events_pb2.StreamEvent]:
    async with asyncio.timeout(10):
        return [event async for event in events]


async def _status(events: AsyncIterator[events_pb2.StreamEvent]) -> grpc.aio.AioRpcError:
    """The call's error status, asserting that no event came before it."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async with asyncio.timeout(10):
            await anext(aiter(events))
    return failure.value


async def test_n3_streams_three_sequences_then_one_finish_with_usage(
    client: SchedulerClient,
) -> None:
    events = await _collect(client.generate(chat("one two three", model=MODEL, n=3, seed=5)))
    order = kinds(events)
    assert order[0] == "generation_start" and order[-1] == "generation_finish"
    assert order.count("generation_finish") == 1 and "error" not in order
    start = events[0].generation_start
    assert start.model == MODEL and start.prompt_tokens == 3 and start.request_id
    streamed_tokens = 0
    for index in range(3):
        mine = [
            kind
            for event, kind in zip(events, order, strict=True)
            if kind.startswith("sequence") and getattr(event, kind).index == index
        ]
        assert mine[0] == "sequence_start" and mine[-1] == "sequence_finish"
        assert set(mine[1:-1]) == {"sequence_delta"}
    for event in events:
        if event.HasField("sequence_delta"):
            streamed_tokens += len(event.sequence_delta.token_ids)
        if event.HasField("sequence_finish"):
            assert event.sequence_finish.reason == events_pb2.FINISH_REASON_STOP
    usage = events[-1].generation_finish.usage
    assert usage.prompt_tokens == 3
    assert usage.completion_tokens == streamed_tokens == 3 * TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    timings = events[-1].generation_finish.timings
    assert timings.total.ToNanoseconds() >= timings.time_to_first_token.ToNanoseconds() > 0
    # Same seed, same text.
    again = await _collect(client.generate(chat("one two three", model=MODEL, n=3, seed=5)))
    text = [e.sequence_delta.text for e in events if e.HasField("sequence_delta")]
    assert [e.sequence_delta.text for e in again if e.HasField("sequence_delta")] == text


async def test_list_models_reports_the_live_ready_worker(client: SchedulerClient) -> None:
    models = {model.name: model for model in await client.list_models()}
    assert models[MODEL].ready_workers == 1
    assert models[MODEL].capacity == 8
    assert models[MODEL].max_context == MAX_CONTEXT


async def test_a_prompt_over_the_context_is_invalid_argument_before_any_event(
    client: SchedulerClient,
) -> None:
    error = await _status(client.generate(chat("word " * MAX_CONTEXT, model=MODEL)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_details(error)
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert bad_request.field_violations[0].field == "messages"


async def test_tools_on_a_model_without_tool_support_are_invalid_argument(
    client: SchedulerClient,
) -> None:
    request = chat(model=MODEL)
    request.tools.add(name="lookup", description="looks things up")
    error = await _status(client.generate(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_details(error)
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert bad_request.field_violations[0].field == "tools"


async def test_an_unknown_model_is_not_found_fast(client: SchedulerClient) -> None:
    started = time.monotonic()
    error = await _status(client.generate(chat(model="no-such-model")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - started < 1


async def test_a_model_without_a_live_worker_is_unavailable_fast(
    client: SchedulerClient, broker: BrokerInspector
) -> None:
    await broker.declare_model_queue("orphan")
    started = time.monotonic()
    error = await _status(client.generate(chat(model="orphan")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 1
    assert await broker.depth(broker.prefix + "llm.tasks.orphan") == 0


async def test_a_burst_leaves_no_request_state_and_no_stray_queues(
    client: SchedulerClient,
    scheduler: SchedulerServer,
    worker: ServiceProcess,
    broker: BrokerInspector,
) -> None:
    slots = asyncio.Semaphore(50)

    async def one(number: int) -> int:
        async with slots:
            events = await _collect(
                client.generate(chat(f"burst {number}", model=MODEL, max_tokens=3))
            )
        assert kinds(events)[-1] == "generation_finish"
        return events[-1].generation_finish.usage.completion_tokens

    async with asyncio.timeout(60):
        completions = await asyncio.gather(*(one(number) for number in range(200)))
    assert completions == [3] * 200
    assert len(scheduler.demux) == 0
    samples = scheduler.metrics.registry
    assert samples.get_sample_value("llm_mesh_scheduler_requests_in_flight") == 0
    assert samples.get_sample_value("llm_mesh_scheduler_unknown_chunks_dropped_total") == 0
    await worker.wait_metric("llm_mesh_worker_running_tasks", lambda value: value == 0)
    prefix = broker.prefix
    assert await broker.queue_names() == {
        f"{prefix}llm.tasks.{MODEL}",
        f"{prefix}llm.tasks.orphan",
        f"{prefix}llm.dead",
        scheduler.broker.reply_queue_name,
        scheduler.broker.control_queue_name,
        f"{prefix}llm.control.worker.{worker.fields['worker_id']}",
    }
    assert await broker.depth(f"{prefix}llm.tasks.{MODEL}") == 0


async def test_probes_and_the_grpc_health_service_report_serving(
    scheduler: SchedulerServer, worker: ServiceProcess
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{scheduler.http_port}") as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert "llm_mesh_scheduler_requests_in_flight" in metrics
    assert "llm_mesh_scheduler_tasks_published_total" in metrics
    assert await worker.probe("/readyz") == 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        service = "llmmesh.v1.SchedulerService"
        response = await check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
