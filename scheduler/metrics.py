"""The scheduler's Prometheus metrics, on a registry of its own (several replicas may share a
process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["SchedulerMetrics"]


class SchedulerMetrics:
    """Counters and gauges served on `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.in_flight = Gauge(
            "llm_mesh_scheduler_requests_in_flight",
            "Generate calls being served now.",
            registry=self.registry,
        )
        self.tasks_published = Counter(
            "llm_mesh_scheduler_tasks_published",
            "Tasks confirmed by the broker.",
            registry=self.registry,
        )
        self.tasks_ended = Counter(
            "llm_mesh_scheduler_tasks_ended",
            "Requests by how they ended: completed, rejected, failed (in-band error or "
            "status), cancelled (by the caller), expired (queue timeout).",
            ["outcome"],
            registry=self.registry,
        )
        self.chunks = Counter(
            "llm_mesh_scheduler_chunks",
            "Reply chunks by what the demux did with them (accepted, duplicate, late, "
            "unknown, refused, gap, overflow).",
            ["verdict"],
            registry=self.registry,
        )
        self.unknown_chunks = Counter(
            "llm_mesh_scheduler_unknown_chunks_dropped",
            "Requests ids this replica never had that chunks arrived for (each answered "
            "with a Cancel).",
            registry=self.registry,
        )
        self.live_workers = Gauge(
            "llm_mesh_scheduler_live_workers",
            "Workers whose heartbeats are current.",
            registry=self.registry,
        )
        self.payloads_stored = Counter(
            "llm_mesh_scheduler_payloads_stored",
            "Request bodies too large for the broker, stored in object storage by reference.",
            registry=self.registry,
        )
        self.payloads_swept = Counter(
            "llm_mesh_scheduler_payloads_swept",
            "Leftover stored request bodies deleted by the periodic sweep.",
            registry=self.registry,
        )
