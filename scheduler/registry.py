"""The workers this replica has heard from: heartbeats with a time to live (DESIGN.md).

A worker is live until `missed_heartbeats` of its announced intervals pass without a new
heartbeat (a worker that stops announces an interval of 0 and vanishes at once). `ListModels`
lists the models of live, ready workers; a model with no live worker at all fails fast with
UNAVAILABLE instead of waiting for the `queue` timeout — once the replica has listened for a
`discovery_period` after starting, so a fresh replica does not refuse work for a pool it has
not heard from yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmmesh.v1 import broker_pb2, scheduler_service_pb2

__all__ = ["WorkerRegistry"]


@dataclass
class _Entry:
    heartbeat: broker_pb2.Heartbeat
    expires: float


class WorkerRegistry:
    """Live workers by id, fed by `observe` and aged by `expire`."""

    def __init__(
        self,
        *,
        missed_heartbeats: float,
        discovery_period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._missed_heartbeats = missed_heartbeats
        self._clock = clock
        self._discovered_at = clock() + discovery_period
        self._workers: dict[str, _Entry] = {}
        self._models_seen: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def discovering(self) -> bool:
        """Whether the replica started too recently to trust an empty registry."""
        return self._clock() < self._discovered_at

    def observe(self, heartbeat: broker_pb2.Heartbeat) -> None:
        """Records a heartbeat; an interval of 0 removes the worker (it said goodbye)."""
        if heartbeat.interval_seconds <= 0:
            self._workers.pop(heartbeat.worker_id, None)
        else:
            expires = self._clock() + heartbeat.interval_seconds * self._missed_heartbeats
            self._workers[heartbeat.worker_id] = _Entry(heartbeat, expires)
            self._models_seen.update(served.name for served in heartbeat.models)
        self._notify()

    def expire(self) -> list[str]:
        """Removes the workers whose heartbeats stopped; returns their ids."""
        now = self._clock()
        gone = [worker_id for worker_id, entry in self._workers.items() if entry.expires <= now]
        for worker_id in gone:
            del self._workers[worker_id]
        if gone:
            self._notify()
        return gone

    def is_live(self, worker_id: str) -> bool:
        """Whether `worker_id` sent a heartbeat recently enough."""
        entry = self._workers.get(worker_id)
        return entry is not None and entry.expires > self._clock()

    def has_live_worker(self, model: str) -> bool:
        """Whether any live worker (ready or still loading) serves `model`."""
        now = self._clock()
        return any(
            entry.expires > now and any(served.name == model for served in entry.heartbeat.models)
            for entry in self._workers.values()
        )

    def models_seen(self) -> set[str]:
        """Every model some worker announced since this replica started (live or not)."""
        return set(self._models_seen)

    def has_seen(self, model: str) -> bool:
        """Whether some worker announced `model` since this replica started."""
        return model in self._models_seen

    def workers(self) -> list[broker_pb2.Heartbeat]:
        """The latest heartbeat of every live worker."""
        now = self._clock()
        return [entry.heartbeat for entry in self._workers.values() if entry.expires > now]

    def models(self) -> list[scheduler_service_pb2.ModelInfo]:
        """The models with a live, ready worker, by name, with their pooled capacity."""
        models: dict[str, scheduler_service_pb2.ModelInfo] = {}
        for heartbeat in self.workers():
            if not heartbeat.ready:
                continue
            for served in heartbeat.models:
                info = models.setdefault(
                    served.name, scheduler_service_pb2.ModelInfo(name=served.name)
                )
                info.ready_workers += 1
                info.capacity += heartbeat.capacity
                info.max_context = max(info.max_context, served.max_context)
        return [models[name] for name in sorted(models)]

    async def wait_for(self, predicate: Callable[[WorkerRegistry], bool]) -> None:
        """Returns once `predicate(self)` holds (checked after every change); never times out.

        Wrap it in `asyncio.timeout`.
        """
        while True:
            changed = self._changed
            if predicate(self):
                return
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
