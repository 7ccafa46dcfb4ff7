"""The scheduler's Prometheus metrics, on a registry of its own (several replicas may share a
process in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.registry import WorkerRegistry

__all__ = ["OTHER_MODEL", "SchedulerMetrics"]

#: The `model` label of requests for models no worker ever announced (clients choose names:
#: only known ones become label values).
OTHER_MODEL: Final = "other"
#: The `reason` label values of `SchedulerMetrics.refusals` (each exported from the start).
_REFUSAL_REASONS: Final = ("unauthenticated", "permission_denied", "quota_exhausted")
#: Latency buckets (seconds) from a fast first token to a long generation.
_LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Inter-token latency buckets (seconds per token).
_TOKEN_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class SchedulerMetrics:
    """Counters, gauges and histograms served on `/metrics`; per model where it matters.

    `workers` adds the registry's live workers per model and state (ready, loading).
    """

    def __init__(self, workers: WorkerRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.in_flight = Gauge(
            "llm_mesh_scheduler_requests_in_flight",
            "Generate calls being served now.",
            registry=self.registry,
        )
        self.tasks_published = Counter(
            "llm_mesh_scheduler_tasks_published",
            "Tasks confirmed by the broker, by model.",
            ["model"],
            registry=self.registry,
        )
        self.tasks_started = Counter(
            "llm_mesh_scheduler_tasks_started",
            "Tasks a worker accepted (chunk 0 was a GenerationStart), by model.",
            ["model"],
            registry=self.registry,
        )
        self.tasks_ended = Counter(
            "llm_mesh_scheduler_tasks_ended",
            "Requests by model and how they ended: completed, rejected, failed (in-band error "
            "or status), cancelled (by the caller), expired (a time limit passed), shed "
            "(refused: too many interactive requests waiting).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "llm_mesh_scheduler_tokens",
            "Completion tokens relayed to callers, by model (rate: tokens per second).",
            ["model"],
            registry=self.registry,
        )
        self.relayed_chunks = Counter(
            "llm_mesh_scheduler_relayed_chunks",
            "Worker chunks relayed to callers, by model (rate: chunks per second).",
            ["model"],
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "llm_mesh_scheduler_queue_time_seconds",
            "From a request's arrival to its GenerationStart (queueing, and the worker's "
            "template rendering), by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "llm_mesh_scheduler_time_to_first_token_seconds",
            "From a request's arrival to its first token, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "llm_mesh_scheduler_inter_token_latency_seconds",
            "A completed request's mean time per output token after the first (all its "
            "sequences' tokens), by model.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "llm_mesh_scheduler_request_duration_seconds",
            "A completed request's end-to-end latency, from arrival to GenerationFinish, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "llm_mesh_scheduler_queue_messages",
            "Ready messages (tasks waiting for a worker) in each model's task queue, as the "
            "broker counts them (polled).",
            ["model"],
            registry=self.registry,
        )
        self.queue_unacknowledged = Gauge(
            "llm_mesh_scheduler_queue_messages_unacknowledged",
            "Messages of each model's task queue delivered to a worker and not yet "
            "acknowledged (tasks being run), as the broker counts them (polled; only with "
            "the management API: scheduler setting broker_management_url).",
            ["model"],
            registry=self.registry,
        )
        self.queue_consumers = Gauge(
            "llm_mesh_scheduler_queue_consumers",
            "Active consumers of each model's task queue, as the broker counts them (polled).",
            ["model"],
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
        self.refusals = Counter(
            "llm_mesh_scheduler_refusals",
            "Calls the API-key check refused before they reached the service, by reason: "
            "unauthenticated (no or an invalid key), permission_denied (a model the key may "
            "not use), quota_exhausted (a quota of the key used up). Load shedding counts as "
            'tasks_ended{outcome="shed"}.',
            ["reason"],
            registry=self.registry,
        )
        for reason in _REFUSAL_REASONS:
            self.refusals.labels(reason)
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
        if workers is not None:
            self.registry.register(_WorkerCollector(workers))


class _WorkerCollector(Collector):
    """Live workers per model and state, from the heartbeat registry at scrape time."""

    def __init__(self, workers: WorkerRegistry) -> None:
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llm_mesh_scheduler_workers",
            "Live workers (current heartbeats) per model: ready, or loading / not ready.",
            labels=["model", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for model in self._workers.models_seen():
            counts[(model, "ready")] = counts[(model, "loading")] = 0
        for heartbeat in self._workers.workers():
            state = "ready" if heartbeat.ready else "loading"
            for served in heartbeat.models:
                counts[(served.name, state)] = counts.get((served.name, state), 0) + 1
        for (model, state), count in sorted(counts.items()):
            family.add_metric([model, state], count)
        yield family
