"""Overload: load shedding past a model's queue limit, and interactive work under a batch
backlog.

The mesh (module scope, the machine's broker under a random prefix): one scheduler allowing
4 waiting interactive requests per model (`LLM_MESH_SCHEDULER_MAX_QUEUED_PER_MODEL=4`), a
gateway, and two synthetic workers: `narrow` runs one sequence at a time; `busy` runs 8, each
with a 100 ms first-token delay (a prefill) and 10 ms per token.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import pytest_asyncio
from edge_client import native_body
from fault_mesh import FaultMesh, chat
from llmmesh.v1 import chat_pb2, events_pb2

from bench.process_mesh import ServiceProcess
from plumbing.client import SchedulerClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

NARROW = "narrow"
BUSY = "busy"
MAX_QUEUED = 4
#: A shed request is answered this fast.
FAST_ANSWER = 0.5
BACKLOG = 500
SAMPLES = 15


@dataclass
class Overload:
    mesh: FaultMesh
    scheduler: ServiceProcess
    narrow: ServiceProcess
    busy: ServiceProcess
    gateway: ServiceProcess
    api_key: str
    client: SchedulerClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def overload(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Overload]:
    mesh = FaultMesh(
        tmp_path_factory.mktemp("overload"), f"test-{uuid.uuid4().hex[:8]}.", [NARROW, BUSY]
    )
    try:
        scheduler = await mesh.start_scheduler(
            LLM_MESH_SCHEDULER_MAX_QUEUED_PER_MODEL=str(MAX_QUEUED)
        )
        narrow = await mesh.start_worker(
            NARROW, capacity=1, LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.02"
        )
        busy = await mesh.start_worker(
            BUSY,
            capacity=8,
            LLM_MESH_WORKER_SYNTHETIC_FIRST_TOKEN_DELAY="0.1",
            LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL="0.01",
        )
        for model in (NARROW, BUSY):
            await mesh.wait_for_workers(scheduler, model)
        gateway = await mesh.start_gateway([scheduler])
        yield Overload(
            mesh, scheduler, narrow, busy, gateway, mesh.create_key(), mesh.client(scheduler)
        )
    finally:
        await mesh.aclose()


async def _post(overload: Overload, body: dict[str, object]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=overload.gateway.http_url,
        headers={"authorization": f"Bearer {overload.api_key}"},
    ) as http:
        response = await http.post("/v1/generate", json=body, timeout=30)
    return response, time.monotonic() - started


async def test_past_the_queue_limit_interactive_requests_are_shed_and_batch_ones_wait(
    overload: Overload,
) -> None:
    """Fault: a model's only worker is busy and 4 interactive requests already wait for it.
    Promise: further interactive requests are refused at once — 429 with `Retry-After` from
    the gateway (RESOURCE_EXHAUSTED from the scheduler) — while batch requests past the limit
    are accepted and wait; once the worker frees up, every admitted request completes, and
    interactive requests are admitted again. Bound: a refusal within 0.5 s."""
    client = overload.client
    blocker = client.generate(chat(model=NARROW, max_tokens=1000, ignore_eos=True))
    assert (await anext(blocker)).HasField("generation_start")
    waiting = [
        asyncio.create_task(_collect(client, chat(model=NARROW, max_tokens=2)))
        for _ in range(MAX_QUEUED)
    ]
    batch = [
        asyncio.create_task(
            _collect(client, chat(model=NARROW, priority=chat_pb2.PRIORITY_BATCH, max_tokens=2))
        )
        for _ in range(3)
    ]
    await overload.mesh.wait_queue_depth(NARROW, MAX_QUEUED + 3)
    for _ in range(3):
        response, seconds = await _post(overload, native_body(NARROW, max_tokens=2))
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["retryable"] is True
        assert seconds < FAST_ANSWER, seconds
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _collect(client, chat(model=NARROW, max_tokens=2))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Through the gateway too, a batch request past the limit is accepted: it waits.
    late_batch = asyncio.create_task(
        _post(overload, {**native_body(NARROW, max_tokens=2), "priority": "PRIORITY_BATCH"})
    )
    await overload.mesh.wait_queue_depth(NARROW, MAX_QUEUED + 4)
    await blocker.aclose()
    async with asyncio.timeout(15):
        for events in await asyncio.gather(*waiting, *batch):
            assert events[-1].HasField("generation_finish")
            assert not any(event.HasField("error") for event in events)
        response, _ = await late_batch
    assert response.status_code == 200, response.text
    response, _ = await _post(overload, native_body(NARROW, max_tokens=2))
    assert response.status_code == 200, response.text


async def test_a_batch_backlog_leaves_interactive_time_to_first_token_within_2x(
    overload: Overload,
) -> None:
    """Fault: 500 batch requests arrive at once for a model whose worker runs 8 at a time
    (about 7 s of work). Promise: batch requests are not shed, and interactive requests jump
    the queue (strict message priorities): their p50 time to first token with the backlog
    stays within twice its value without one. Bound: p50 TTFT(backlog) <= 2 * p50 TTFT(idle),
    over 15 sequential interactive requests each, the backlog still waiting at the end."""
    client = overload.client
    idle = [await _time_to_first_token(client) for _ in range(SAMPLES)]
    done = 0

    async def batch_request() -> None:
        nonlocal done
        events = await _collect(
            client, chat(model=BUSY, priority=chat_pb2.PRIORITY_BATCH, max_tokens=2)
        )
        assert events[-1].HasField("generation_finish")
        done += 1

    backlog = [asyncio.create_task(batch_request()) for _ in range(BACKLOG)]
    try:
        await overload.mesh.wait_queue_depth(BUSY, 100, at_least=True)
        loaded = [await _time_to_first_token(client) for _ in range(SAMPLES)]
        assert await overload.mesh.queue_depth(BUSY) > 0, "the backlog drained too soon"
        assert done < BACKLOG
    finally:
        async with asyncio.timeout(60):
            await asyncio.gather(*backlog)
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    assert loaded_p50 <= 2 * idle_p50, (idle_p50, loaded_p50)


async def _time_to_first_token(client: SchedulerClient) -> float:
    started = time.monotonic()
    async with asyncio.timeout(10):
        events = client.generate(chat(model=BUSY, max_tokens=2))
        try:
            async for event in events:
                if event.HasField("sequence_delta"):
                    return time.monotonic() - started
        finally:
            await events.aclose()
    raise AssertionError("no token")


async def _collect(
    client: SchedulerClient, request: chat_pb2.ChatRequest
) -> list[events_pb2.StreamEvent]:
    return [event async for event in client.generate(request)]
