"""The worker registry: heartbeats with a time to live, readiness and pooled capacity."""

from __future__ import annotations

import asyncio

from llmmesh.v1 import broker_pb2

from scheduler.registry import WorkerRegistry


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _heartbeat(
    worker_id: str, model: str, *, ready: bool = True, capacity: int = 2, interval: float = 1.0
) -> broker_pb2.Heartbeat:
    return broker_pb2.Heartbeat(
        worker_id=worker_id,
        models=[broker_pb2.ServedModel(name=model, max_context=512)],
        capacity=capacity,
        ready=ready,
        interval_seconds=interval,
    )


def test_workers_expire_after_missed_heartbeats() -> None:
    clock = _Clock()
    registry = WorkerRegistry(missed_heartbeats=3, discovery_period=5, clock=clock)
    assert registry.discovering
    registry.observe(_heartbeat("w1", "m"))
    clock.now += 2.9
    assert registry.has_live_worker("m") and registry.is_live("w1")
    assert registry.expire() == []
    clock.now += 0.2
    assert not registry.has_live_worker("m")
    assert registry.expire() == ["w1"]
    assert registry.discovering
    clock.now += 2
    assert not registry.discovering


def test_models_lists_ready_workers_with_their_pooled_capacity() -> None:
    registry = WorkerRegistry(missed_heartbeats=3, discovery_period=0, clock=_Clock())
    registry.observe(_heartbeat("w1", "m", capacity=2))
    registry.observe(_heartbeat("w2", "m", capacity=3))
    registry.observe(_heartbeat("w3", "loading", ready=False))
    models = registry.models()
    assert [(m.name, m.ready_workers, m.capacity, m.max_context) for m in models] == [
        ("m", 2, 5, 512)
    ]
    # A worker still loading counts as live: its model's requests queue instead of failing.
    assert registry.has_live_worker("loading")
    assert not registry.has_live_worker("other")


def test_a_goodbye_removes_the_worker_at_once() -> None:
    registry = WorkerRegistry(missed_heartbeats=3, discovery_period=0, clock=_Clock())
    registry.observe(_heartbeat("w1", "m"))
    registry.observe(_heartbeat("w1", "m", ready=False, interval=0))
    assert not registry.has_live_worker("m")
    assert registry.workers() == []


async def test_wait_for_returns_once_a_heartbeat_satisfies_it() -> None:
    registry = WorkerRegistry(missed_heartbeats=3, discovery_period=0)
    waiter = asyncio.create_task(registry.wait_for(lambda r: r.is_live("w1")))
    await asyncio.sleep(0)
    assert not waiter.done()
    registry.observe(_heartbeat("w1", "m"))
    async with asyncio.timeout(1):
        await waiter
