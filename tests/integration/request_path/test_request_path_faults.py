"""Faults with the synthetic engine: workers killed (by process group), callers cancelling,
tasks cancelled while queued, a scheduler replica vanishing mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

import aio_pika
import grpc
import pytest
import pytest_asyncio
from broker_inspector import AMQP_URL, BrokerInspector
from llmmesh.v1 import broker_pb2, events_pb2
from request_path_harness import Mesh, chat, kinds

from bench.process_mesh import wait_until
from scheduler.server import SchedulerServer

#: A stream that runs for seconds unless stopped.
LONG: dict[str, Any] = {"max_tokens": 2000, "ignore_eos": True}
SLOW: dict[str, Any] = {"token_interval": 0.02}
ABORTED = "llm_mesh_worker_engine_aborted_total"
RUNNING = "llm_mesh_worker_running_tasks"
STARTED = "llm_mesh_worker_tasks_started_total"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh) -> SchedulerServer:
    # Heartbeats every 0.25 s, lost after 4 missed: a dead worker is noticed in ~1 s, well
    # before the idle limit.
    return await mesh.start_scheduler(idle_timeout=5, first_token_timeout=5, queue_timeout=10)


async def _until_tokens(events: AsyncGenerator[events_pb2.StreamEvent, None], count: int) -> None:
    """Reads the stream until `count` deltas arrived."""
    async with asyncio.timeout(10):
        seen = 0
        while seen < count:
            if (await anext(events)).HasField("sequence_delta"):
                seen += 1


async def test_a_worker_killed_mid_stream_ends_the_stream_with_a_retryable_error(
    mesh: Mesh, scheduler: SchedulerServer
) -> None:
    worker = await mesh.start_worker("fragile", scheduler=scheduler, **SLOW)
    events = mesh.client(scheduler).generate(chat(model="fragile", **LONG))
    await _until_tokens(events, 3)
    worker.kill()
    killed = time.monotonic()
    async with asyncio.timeout(5):
        rest = [event async for event in events]
    order = kinds(rest)
    assert order[-2:] == ["error", "generation_finish"]
    assert set(order[:-2]) <= {"sequence_delta"}
    error = rest[-2].error
    assert error.code == events_pb2.ERROR_CODE_WORKER_LOST and error.retryable
    assert rest[-1].generation_finish.usage.completion_tokens >= 3
    assert time.monotonic() - killed < 3  # Missing heartbeats, not the 5 s idle limit.


async def test_a_worker_killed_before_it_started_is_replaced_invisibly(
    mesh: Mesh, scheduler: SchedulerServer
) -> None:
    model = "takeover"
    stuck = await mesh.start_worker(model, scheduler=scheduler, prepare_delay=60)
    request = asyncio.create_task(
        _collect(mesh.client(scheduler).generate(chat(model=model, max_tokens=4)))
    )
    await stuck.wait_metric("llm_mesh_worker_tasks_received_total", lambda v: v == 1)
    healthy = await mesh.start_worker(model, scheduler=scheduler)
    stuck.kill()
    async with asyncio.timeout(10):
        events = await request
    assert kinds(events)[0] == "generation_start"
    assert kinds(events)[-1] == "generation_finish" and "error" not in kinds(events)
    assert events[-1].generation_finish.usage.completion_tokens == 4
    assert await healthy.metric("llm_mesh_worker_tasks_republished_total") == 1
    assert await healthy.metric(STARTED) == 1


async def test_a_caller_cancel_aborts_the_engine_request(
    mesh: Mesh, scheduler: SchedulerServer
) -> None:
    worker = await mesh.start_worker("cancelled", scheduler=scheduler, **SLOW)
    events = mesh.client(scheduler).generate(chat(model="cancelled", **LONG))
    await _until_tokens(events, 3)
    await events.aclose()
    # The generation stops (nothing runs, so no chunk flows) long before its natural end.
    await worker.wait_metric(ABORTED, lambda v: v == 1)
    await worker.wait_metric(RUNNING, lambda v: v == 0)
    metrics = await worker.metrics()
    assert metrics['llm_mesh_worker_tasks_aborted_total{reason="cancelled"}'] == 1
    assert metrics.get("llm_mesh_worker_tasks_completed_total", 0) == 0
    assert len(scheduler.demux) == 0


async def test_a_task_cancelled_while_queued_never_runs(
    mesh: Mesh, scheduler: SchedulerServer, broker: BrokerInspector
) -> None:
    model = "queued"
    worker = await mesh.start_worker(model, scheduler=scheduler, capacity=1, **SLOW)
    client = mesh.client(scheduler)
    blocker = client.generate(chat(model=model, **LONG))
    await _until_tokens(blocker, 1)
    waiting = client.generate(chat("never run", model=model))
    pending = asyncio.create_task(anext(waiting))
    queue = f"{broker.prefix}llm.tasks.{model}"
    await wait_until(lambda: _depth_is(broker, queue, 1))
    pending.cancel()
    await asyncio.wait([pending])
    await waiting.aclose()
    # Its Cancel went out before its demux entry was dropped; the blocker's goes after it.
    await wait_until(lambda: len(scheduler.demux) == 1)
    await blocker.aclose()
    await worker.wait_metric('llm_mesh_worker_tasks_dropped_total{reason="cancelled"}', bool)
    assert await worker.metric(STARTED) == 1
    assert await broker.depth(queue) == 0


async def test_a_vanished_scheduler_replica_stops_the_worker(mesh: Mesh) -> None:
    replica = await mesh.start_scheduler()
    worker = await mesh.start_worker("orphaned", scheduler=replica, **SLOW)
    events = mesh.client(replica).generate(chat(model="orphaned", **LONG))
    await _until_tokens(events, 3)
    # The replica's connection dies (as in a crash): its reply queue goes with it.
    await replica.broker.close()
    await worker.wait_metric('llm_mesh_worker_tasks_aborted_total{reason="requester_gone"}', bool)
    await worker.wait_metric(RUNNING, lambda v: v == 0)
    assert await worker.metric(ABORTED) == 1
    reading = asyncio.create_task(_collect(events))
    await replica.stop(grace=0)
    with pytest.raises(grpc.aio.AioRpcError):
        async with asyncio.timeout(10):
            await reading


async def _collect(
    events: AsyncGenerator[events_pb2.StreamEvent, None],
) -> list[events_pb2.StreamEvent]:
    return [event async for event in events]


async def _depth_is(broker: BrokerInspector, queue: str, expected: int) -> bool:
    return await broker.depth(queue) == expected


async def _dead_letters_from(dead: str, source: str) -> list[bytes]:
    """The bodies in the dead-letter queue `dead` that came from queue `source`.

    Reads without acking: closing the channel puts every message back. Other tests of the
    module dead-letter too (e.g. the task a killed worker held expires in its queue).
    """
    bodies = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        queue = await (await connection.channel()).get_queue(dead)
        while (message := await queue.get(fail=False)) is not None:
            deaths = message.headers.get("x-death")
            if isinstance(deaths, list) and any(
                isinstance(death, dict) and death.get("queue") == source for death in deaths
            ):
                bodies.append(message.body)
    return bodies


async def test_poison_tasks_go_to_the_dead_letter_queue(
    mesh: Mesh, scheduler: SchedulerServer, broker: BrokerInspector
) -> None:
    """Undecodable tasks at once; a task that keeps killing workers past its attempt limit."""
    model = "poison"
    stuck = await mesh.start_worker(model, scheduler=scheduler, prepare_delay=60)
    dead = f"{broker.prefix}llm.dead"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        tasks = await channel.get_exchange(f"{broker.prefix}llm.tasks")
        task = broker_pb2.Task(request_id="poison-1", request=chat(model=model))
        await tasks.publish(
            aio_pika.Message(
                task.SerializeToString(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                reply_to=replies.name,
                headers={"x-attempt": 3},  # Two workers died on it already.
            ),
            routing_key=model,
        )
        await stuck.wait_metric("llm_mesh_worker_tasks_received_total", lambda v: v == 1)
        survivor = await mesh.start_worker(model, scheduler=scheduler)
        stuck.kill()
        await survivor.wait_metric("llm_mesh_worker_tasks_dead_lettered_total", lambda v: v == 1)
        await tasks.publish(aio_pika.Message(b"\xff not a task"), routing_key=model)
        await survivor.wait_metric("llm_mesh_worker_tasks_dead_lettered_total", lambda v: v == 2)
    source = f"{broker.prefix}llm.tasks.{model}"
    await wait_until(lambda: _count_is(_dead_letters_from(dead, source), 2))
    assert await survivor.metric(STARTED) == 0


async def _count_is(bodies: Awaitable[list[bytes]], expected: int) -> bool:
    return len(await bodies) == expected


async def test_sigterm_lets_short_streams_finish_and_ends_long_ones_retryably(
    mesh: Mesh, scheduler: SchedulerServer
) -> None:
    """The harness gives workers a 2 s grace period."""
    model = "draining"
    worker = await mesh.start_worker(model, scheduler=scheduler, **SLOW)
    client = mesh.client(scheduler)
    short = client.generate(chat("short", model=model, max_tokens=40, ignore_eos=True))
    long = client.generate(chat("long", model=model, **LONG))
    await _until_tokens(short, 1)
    await _until_tokens(long, 1)
    os.killpg(worker.process.pid, signal.SIGTERM)
    async with asyncio.timeout(10):
        short_rest, long_rest = await asyncio.gather(_collect(short), _collect(long))
        assert await worker.process.wait() == 0
    assert kinds(short_rest)[-1] == "generation_finish" and "error" not in kinds(short_rest)
    assert short_rest[-1].generation_finish.usage.completion_tokens == 40
    assert kinds(long_rest)[-2:] == ["error", "generation_finish"]
    assert long_rest[-2].error.code == events_pb2.ERROR_CODE_WORKER_LOST
    assert long_rest[-2].error.retryable
