"""The worker's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.engine_protocol import Engine

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    """Counters and gauges served on `/metrics` (tests read them to see what a worker did)."""

    def __init__(self, engine: Engine, *, held: Callable[[], int] = lambda: 0) -> None:
        """`held` counts the tasks taken from the queue and not yet ended."""
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
            "Tasks stopped before their end, by reason: cancelled, requester_gone, "
            "broker_lost, shutdown, engine_error, engine_stalled.",
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
        self.tokens_generated = Counter(
            "llm_mesh_worker_tokens_generated",
            "Completion tokens the engine generated (all sequences).",
            registry=self.registry,
        )
        self.engine_stalls = Counter(
            "llm_mesh_worker_engine_stalls",
            "Times the engine watchdog found the engine silent while requests ran (the "
            "worker then stops serving).",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine, held))


class _EngineCollector(Collector):
    """The engine's own counts, read at scrape time."""

    def __init__(self, engine: Engine, held: Callable[[], int]) -> None:
        self._engine = engine
        self._held = held

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "llm_mesh_worker_engine_aborted",
            "Requests the engine aborted before they finished.",
            value=self._engine.aborted_total,
        )
        running = self._engine.running
        sequences = GaugeMetricFamily(
            "llm_mesh_worker_engine_requests",
            "Requests (running sequences, n per request) in the engine, and taken from the queue "
            "but not yet in it (waiting: rendering, fetching, held by the prefetch).",
            labels=["state"],
        )
        sequences.add_metric(["running"], running)
        sequences.add_metric(["waiting"], max(self._held() - running, 0))
        yield sequences
