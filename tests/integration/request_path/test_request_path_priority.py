"""Message priority (interactive before batch) and consumer priority (fast workers first)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from broker_inspector import BrokerInspector
from llmmesh.v1 import chat_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from request_path_harness import Mesh, chat

from bench.process_mesh import wait_until


async def test_an_interactive_task_is_served_before_a_batch_backlog(
    mesh: Mesh, broker: BrokerInspector
) -> None:
    """A worker of capacity 1 is kept busy (in effect paused) while a batch backlog and then
    one interactive task queue up; once it is free, it takes the interactive task first."""
    scheduler = await mesh.start_scheduler()
    model = "prio"
    await mesh.start_worker(model, scheduler=scheduler, capacity=1, token_interval=0.01)
    client = mesh.client(scheduler)
    blocker = client.generate(chat(model=model, max_tokens=2000, ignore_eos=True))
    async with asyncio.timeout(10):
        while not (await anext(blocker)).HasField("sequence_delta"):
            pass
    started: list[str] = []

    async def run(name: str, priority: int) -> None:
        request = chat(name, model=model, priority=priority, max_tokens=2)
        async for event in client.generate(request):
            if event.HasField("generation_start"):
                started.append(name)

    async with asyncio.TaskGroup() as tasks:
        for number in range(4):
            tasks.create_task(run(f"batch-{number}", chat_pb2.PRIORITY_BATCH))
        await wait_until(lambda: _depth_is(broker, f"{broker.prefix}llm.tasks.{model}", 4))
        tasks.create_task(run("interactive", chat_pb2.PRIORITY_INTERACTIVE))
        await wait_until(lambda: _depth_is(broker, f"{broker.prefix}llm.tasks.{model}", 5))
        await blocker.aclose()  # The worker is free again.
    assert started[0] == "interactive"
    assert sorted(started[1:]) == [f"batch-{number}" for number in range(4)]


async def _depth_is(broker: BrokerInspector, queue: str, expected: int) -> bool:
    return await broker.depth(queue) == expected


async def test_the_high_priority_worker_takes_every_task_it_has_room_for(mesh: Mesh) -> None:
    """Counts come from each worker's `tasks_started` metric."""
    scheduler = await mesh.start_scheduler()
    model = "tiers"
    slow: dict[str, Any] = {"token_interval": 0.02, "tokens": 10}
    high = await mesh.start_worker(model, scheduler=scheduler, priority=10, capacity=2, **slow)
    low = await mesh.start_worker(model, scheduler=scheduler, priority=1, capacity=2, **slow)
    client = mesh.client(scheduler)
    started = "llm_mesh_worker_tasks_started_total"

    async def run(count: int) -> None:
        async def one(number: int) -> None:
            events = [e async for e in client.generate(chat(f"{number}", model=model))]
            assert events[-1].HasField("generation_finish")

        async with asyncio.timeout(20), asyncio.TaskGroup() as tasks:
            for number in range(count):
                tasks.create_task(one(number))
        # Acks go out after the last chunk: wait until both are idle again.
        for worker in (high, low):
            await worker.wait_metric("llm_mesh_worker_running_tasks", lambda v: v == 0)

    for _ in range(3):
        await run(2)  # Within the high worker's capacity.
    assert (await high.metric(started), await low.metric(started)) == (6, 0)
    await run(4)  # Twice its capacity: the low worker takes the overflow.
    assert (await high.metric(started), await low.metric(started)) == (8, 2)


async def test_events_arrive_per_chunk_not_per_token(mesh: Mesh) -> None:
    """Coalescing: a fast stream arrives in far fewer gRPC messages than tokens."""
    scheduler = await mesh.start_scheduler()
    model = "coalesced"
    await mesh.start_worker(model, scheduler=scheduler, token_interval=0.001, tokens=200)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.port}")
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
    messages = tokens = 0
    async with channel, asyncio.timeout(10):
        call = stub.Generate(scheduler_service_pb2.GenerateRequest(request=chat(model=model)))
        async for response in call:
            messages += 1
            tokens += sum(len(e.sequence_delta.token_ids) for e in response.events)
    assert tokens == 200
    assert messages < 60
