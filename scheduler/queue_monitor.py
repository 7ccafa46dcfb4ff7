"""Queue depth and consumers of each model's task queue, as the broker itself counts them.

Every `interval` the replica asks the broker about the task queue of each model it knows
(every model a worker ever announced to it, and every model it published a task for) and
exports the answer as gauges per model. Two sources answer (`QueueSource`):

- the management HTTP API (`ManagementApi`, when `broker_management_url` is set; it needs the
  `rabbitmq_management` plugin): ready messages, messages delivered to a worker and not yet
  acknowledged (the tasks being run), and consumers. Its figures are the broker's statistics,
  up to ten seconds old with RabbitMQ's defaults (see `scheduler.management_api`);
- else a passive declare (`TaskBroker.queue_states`), which needs no plugin and is current,
  but tells ready messages and consumers only: the unacknowledged gauge then has no series
  (the workers' `llm_mesh_worker_running_tasks` counts the tasks they hold).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import Gauge

from scheduler.broker import QueueState
from scheduler.errors import WorkerUnavailable

__all__ = ["QueueMonitor", "QueueSource"]

logger = logging.getLogger(__name__)


class QueueSource(Protocol):
    """Where the task queues' figures come from."""

    async def queue_states(self, models: Iterable[str]) -> dict[str, QueueState | None]:
        """The models' task queues now (None: no such queue; a model left out: no figures
        yet). Raises `WorkerUnavailable` when the broker cannot tell."""
        ...


class QueueMonitor:
    """Polls `source` for the task queues of `models()` into the `messages` (ready),
    `unacknowledged` and `consumers` gauges (labelled by model). `run` polls until cancelled.
    """

    def __init__(
        self,
        source: QueueSource,
        models: Callable[[], Iterable[str]],
        *,
        messages: Gauge,
        unacknowledged: Gauge,
        consumers: Gauge,
        interval: float,
    ) -> None:
        self._source = source
        self._models = models
        self._gauges = (messages, unacknowledged, consumers)
        self._messages = messages
        self._unacknowledged = unacknowledged
        self._consumers = consumers
        self._interval = interval
        self._exported: dict[Gauge, set[str]] = {gauge: set() for gauge in self._gauges}

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
        states = await self._source.queue_states(sorted(set(self._models())))
        for model, state in states.items():
            if state is None:
                for gauge in self._gauges:
                    self._forget(gauge, model)
                continue
            self._set(self._messages, model, state.messages)
            self._set(self._consumers, model, state.consumers)
            if state.unacknowledged is None:
                self._forget(self._unacknowledged, model)
            else:
                self._set(self._unacknowledged, model, state.unacknowledged)

    def _set(self, gauge: Gauge, model: str, value: int) -> None:
        gauge.labels(model).set(value)
        self._exported[gauge].add(model)

    def _forget(self, gauge: Gauge, model: str) -> None:
        if model in self._exported[gauge]:
            gauge.remove(model)
            self._exported[gauge].discard(model)
