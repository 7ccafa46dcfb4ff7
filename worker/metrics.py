"""The worker's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from worker.engine_protocol import Engine

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    """Counters and gauges served on `/metrics` (tests read them to see what a worker did)."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks_received = Counter(
            "llm_mesh_worker_tasks_received",
            "Task deliveries taken from the queue.",
            registry=self.registry,
        )
        self.tasks_started = Counter(
            "llm_mesh_worker_tasks_started",
            "Tasks accepted: chunk 0 was a GenerationStart.",
            registry=self.registry,
        )
        self.tasks_rejected = Counter(
            "llm_mesh_worker_tasks_rejected",
            "Tasks refused as invalid for the model (chunk 0 was a rejection).",
            registry=self.registry,
        )
        self.tasks_completed = Counter(
            "llm_mesh_worker_tasks_completed",
            "Tasks whose generation ran to its end.",
            registry=self.registry,
        )
        self.tasks_aborted = Counter(
            "llm_mesh_worker_tasks_aborted",
            "Tasks stopped before their end, by reason: cancelled, requester_gone, shutdown, "
            "engine_error.",
            ["reason"],
            registry=self.registry,
        )
        self.tasks_dropped = Counter(
            "llm_mesh_worker_tasks_dropped",
            "Tasks not run, by reason: cancelled (while queued), expired (queue deadline).",
            ["reason"],
            registry=self.registry,
        )
        self.tasks_dead_lettered = Counter(
            "llm_mesh_worker_tasks_dead_lettered",
            "Tasks rejected to the dead-letter queue (undecodable, or too many attempts).",
            registry=self.registry,
        )
        self.tasks_republished = Counter(
            "llm_mesh_worker_tasks_republished",
            "Redelivered tasks republished with an incremented attempt count.",
            registry=self.registry,
        )
        self.chunks_published = Counter(
            "llm_mesh_worker_chunks_published",
            "Reply chunks published and confirmed.",
            registry=self.registry,
        )
        self.running = Gauge(
            "llm_mesh_worker_running_tasks",
            "Tasks being handled now.",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))


class _EngineCollector(Collector):
    """The engine's own count of aborted requests, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "llm_mesh_worker_engine_aborted",
            "Requests the engine aborted before they finished.",
            value=self._engine.aborted_total,
        )
