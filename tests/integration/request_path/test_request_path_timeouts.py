"""DESIGN.md's named limits: `queue` (a status before any event), `first_token`, `idle` and
`total` (an in-band error naming the limit, the finish, and a Cancel to the worker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
import pytest_asyncio
from llmmesh.v1 import events_pb2
from request_path_harness import Mesh, chat, kinds

from bench.process_mesh import wait_until
from plumbing.client import SchedulerClient
from scheduler.server import SchedulerServer

LIMIT = 1.0
ABORTED = "llm_mesh_worker_engine_aborted_total"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh) -> SchedulerServer:
    return await mesh.start_scheduler(
        queue_timeout=LIMIT, first_token_timeout=LIMIT, idle_timeout=LIMIT
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(mesh: Mesh, scheduler: SchedulerServer) -> SchedulerClient:
    return mesh.client(scheduler)


async def _failure(client: SchedulerClient, model: str, **parameters: Any) -> list[str]:
    """Runs a request that must fail in-band; returns its event kinds, checked."""
    async with asyncio.timeout(10):
        events = [event async for event in client.generate(chat(model=model, **parameters))]
    order = kinds(events)
    assert order[0] == "generation_start"
    assert order[-2:] == ["error", "generation_finish"]
    assert events[-2].error.retryable
    return [events_pb2.ErrorCode.Name(events[-2].error.code), *order]


async def test_no_worker_taking_the_task_within_the_queue_limit_is_deadline_exceeded(
    mesh: Mesh, scheduler: SchedulerServer, client: SchedulerClient
) -> None:
    model = "busy"
    await mesh.start_worker(model, scheduler=scheduler, capacity=1, token_interval=0.02)
    blocker = client.generate(chat(model=model, max_tokens=2000, ignore_eos=True))
    assert (await anext(blocker)).HasField("generation_start")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async with asyncio.timeout(10):
            await anext(client.generate(chat(model=model)))
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert LIMIT <= time.monotonic() - started < LIMIT + 1
    await blocker.aclose()


async def test_a_stall_before_the_first_token_is_a_first_token_timeout(
    mesh: Mesh, scheduler: SchedulerServer, client: SchedulerClient
) -> None:
    model = "stall-first"
    worker = await mesh.start_worker(model, scheduler=scheduler, first_token_delay=30)
    code, *_ = await _failure(client, model)
    assert code == "ERROR_CODE_FIRST_TOKEN_TIMEOUT"
    await worker.wait_metric(ABORTED, lambda v: v == 1)  # The Cancel reached the worker.


async def test_a_stall_between_chunks_is_an_idle_timeout(
    mesh: Mesh, scheduler: SchedulerServer, client: SchedulerClient
) -> None:
    model = "stall-idle"
    worker = await mesh.start_worker(model, scheduler=scheduler, token_interval=30)
    code, *order = await _failure(client, model)
    assert code == "ERROR_CODE_IDLE_TIMEOUT"
    assert "sequence_delta" in order  # The first token came; the second never did.
    await worker.wait_metric(ABORTED, lambda v: v == 1)


async def test_the_requests_own_budget_is_a_total_timeout(
    mesh: Mesh, scheduler: SchedulerServer, client: SchedulerClient
) -> None:
    model = "long"
    worker = await mesh.start_worker(model, scheduler=scheduler, token_interval=0.02)
    request = chat(model=model, max_tokens=2000, ignore_eos=True)
    request.timeout.FromMilliseconds(1500)
    async with asyncio.timeout(10):
        events = [event async for event in client.generate(request)]
    assert kinds(events)[-2:] == ["error", "generation_finish"]
    assert events[-2].error.code == events_pb2.ERROR_CODE_TOTAL_TIMEOUT
    usage = events[-1].generation_finish.usage
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    await worker.wait_metric(ABORTED, lambda v: v == 1)
    await wait_until(lambda: len(scheduler.demux) == 0)
