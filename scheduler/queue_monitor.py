"""Queue depth and consumers of each model's task queue, as the broker itself counts them.

Every `interval` the replica passively declares the task queue of each model it knows (every
model a worker ever announced to it, and every model it published a task for): the broker
answers with the queue's ready messages and active consumers, exported as gauges per model.
A passive declare needs no broker plugin; it does not count messages delivered to a worker
and not yet acknowledged (the workers' `llm_mesh_worker_running_tasks` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from prometheus_client import Gauge

from scheduler.broker import TaskBroker
from scheduler.errors import WorkerUnavailable

__all__ = ["QueueMonitor"]

logger = logging.getLogger(__name__)


class QueueMonitor:
    """Polls the broker for the task queues of `models()` into the `messages` and
    `consumers` gauges (labelled by model). `run` polls until cancelled."""

    def __init__(
        self,
        broker: TaskBroker,
        models: Callable[[], Iterable[str]],
        *,
        messages: Gauge,
        consumers: Gauge,
        interval: float,
    ) -> None:
        self._broker = broker
        self._models = models
        self._messages = messages
        self._consumers = consumers
        self._interval = interval
        self._exported: set[str] = set()

    async def run(self) -> None:
        """Polls every `interval` seconds; a broker outage is logged and polled again."""
        while True:
            try:
                await self.poll()
            except WorkerUnavailable as exc:
                logger.warning("queue depth not polled: %s", exc.message)
            await asyncio.sleep(self._interval)

    async def poll(self) -> None:
        """Polls once. A queue that no longer exists loses its series."""
        states = await self._broker.queue_states(sorted(set(self._models())))
        for model, state in states.items():
            if state is None:
                if model in self._exported:
                    self._messages.remove(model)
                    self._consumers.remove(model)
                    self._exported.discard(model)
                continue
            self._messages.labels(model).set(state.messages)
            self._consumers.labels(model).set(state.consumers)
            self._exported.add(model)
