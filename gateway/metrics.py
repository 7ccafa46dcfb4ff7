"""The gateway's Prometheus metrics, served on `/metrics` of the API port."""

from __future__ import annotations

from llmmesh.v1 import events_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.providers.errors import (
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

__all__ = ["GatewayMetrics"]

#: The kind of a provider failure reported in-band (a `StreamError` after `GenerationStart`):
#: the adapter error class the same failure raises before the stream started. Any other code
#: is a `ProviderUnavailable` (the stream broke, the provider failed or sent nonsense).
_KIND_BY_STREAM_CODE: dict[events_pb2.ErrorCode, type[ProviderError]] = {
    events_pb2.ERROR_CODE_INVALID_REQUEST: ProviderRejected,
    events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: ProviderRejected,
    events_pb2.ERROR_CODE_RATE_LIMITED: RateLimited,
    events_pb2.ERROR_CODE_FIRST_TOKEN_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_IDLE_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_TOTAL_TIMEOUT: ProviderTimeout,
}


class GatewayMetrics:
    """One registry per app, so that several apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llm_mesh_gateway_requests",
            "Requests by API, model and outcome (ok, error, cancelled, or the HTTP status of a "
            "request refused before it started).",
            ["api", "model", "outcome"],
            registry=self.registry,
        )
        self.streaming = Gauge(
            "llm_mesh_gateway_generations_in_flight",
            "Generations started and not yet ended.",
            registry=self.registry,
        )
        self.time_to_start = Histogram(
            "llm_mesh_gateway_time_to_start_seconds",
            "From a request's arrival to its GenerationStart (the response headers).",
            ["api"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "llm_mesh_gateway_tokens",
            "Tokens by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=self.registry,
        )

        self.http_requests = Counter(
            "llm_mesh_gateway_http_requests",
            "HTTP requests by route, method, status and model (routed names only; 'none' "
            "for requests that name none).",
            ["route", "method", "status", "model"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "llm_mesh_gateway_http_request_duration_seconds",
            "From a request's arrival to the end of its response (a stream's last event).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.quota_rejections = Counter(
            "llm_mesh_gateway_quota_rejections",
            "Requests refused with 429 because a quota of their key was used up.",
            ["model"],
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "llm_mesh_gateway_provider_errors",
            "Failures of external providers by provider and kind (the adapter's error class), "
            "before or during their streams.",
            ["provider", "kind"],
            registry=self.registry,
        )

    def count_provider_stream_error(self, provider: str, error: events_pb2.StreamError) -> None:
        """Counts a failure that `provider`'s adapter reported in-band, under the kind its code
        names."""
        kind = _KIND_BY_STREAM_CODE.get(error.code, ProviderUnavailable)
        self.provider_errors.labels(provider, kind.__name__).inc()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
