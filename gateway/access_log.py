"""The gateway's record of each HTTP request: its span, its access-log line, its metrics.

`AccessLog` is the outermost ASGI middleware. Around every HTTP request it

- opens the request's server span when tracing is on (the root of the request's trace, or a
  child of the caller's `traceparent`); the gRPC call to the scheduler is made inside it;
- binds a `RequestContext` (`plumbing.structured_logs`), so every record logged while the
  request is handled carries its request id, model and key id;
- when the response has ended (for a stream: after its last event and the usage record),
  writes one access-log line (`llm_mesh.access`: method, route, status, outcome, tokens,
  time to start, duration) and counts the request by route, method, status and model.

The route handlers fill in what only they know through `access_record(scope)`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import trace
from opentelemetry.propagate import extract
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics
from plumbing.structured_logs import RequestContext, bind_request
from plumbing.telemetry import tracer, tracing_enabled
from plumbing.usage_meter import UsageMeter

__all__ = ["AccessLog", "AccessRecord", "access_record"]

access_logger = logging.getLogger("llm_mesh.access")

_SCOPE_KEY: Final = "llm_mesh.access"
#: Routes polled by machines: logged at DEBUG only, never traced.
_QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
#: Headers that carry a caller's trace context (W3C trace context and baggage).
_TRACE_HEADERS: Final = frozenset({b"traceparent", b"tracestate", b"baggage"})


@dataclass
class AccessRecord:
    """What a route handler knows of its request, for the access-log line."""

    request: RequestContext
    api: str = ""
    #: The usage meter of a started generation (read when the response has ended).
    meter: UsageMeter | None = None
    time_to_start: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


def access_record(scope: Scope) -> AccessRecord | None:
    """The record of the request `scope` belongs to (None outside `AccessLog`)."""
    record = scope.get(_SCOPE_KEY)
    return record if isinstance(record, AccessRecord) else None


class AccessLog:
    """The ASGI middleware (see the module docstring); `routes` are the paths that become
    label values (any other path counts as `other`)."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, routes: frozenset[str]) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = routes
        # Decided once: with tracing off, no span object is ever built.
        self._tracing = tracing_enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        route = path if path in self._routes else "other"
        method: str = scope["method"]
        started = time.monotonic()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with bind_request() as request:
            record = AccessRecord(request)
            scope[_SCOPE_KEY] = record
            traced = self._tracing and route not in _QUIET_ROUTES
            span = self._start_span(scope, method, route) if traced else None
            try:
                if span is None:
                    await self._app(scope, receive, send_status)
                else:
                    with trace.use_span(span, end_on_exit=False):
                        await self._app(scope, receive, send_status)
            except BaseException:
                status = status or 500
                raise
            finally:
                duration = time.monotonic() - started
                if span is not None:
                    _end_span(span, status, record)
                self._record(record, method, route, status, duration)

    def _start_span(self, scope: Scope, method: str, route: str) -> trace.Span:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        return tracer().start_span(
            f"{method} {route}",
            context=extract(carrier) if carrier else None,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": scope["path"],
            },
        )

    def _record(
        self, record: AccessRecord, method: str, route: str, status: int, duration: float
    ) -> None:
        model = record.request.model or "none"
        self._metrics.http_requests.labels(route, method, str(status), model).inc()
        self._metrics.http_duration.labels(route).observe(duration)
        meter = record.meter
        fields: dict[str, object] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 1),
        }
        if record.api:
            fields["api"] = record.api
        if meter is not None:
            fields["outcome"] = meter.status()
            fields["prompt_tokens"] = meter.prompt_tokens
            fields["completion_tokens"] = meter.completion_tokens
        if record.time_to_start is not None:
            fields["time_to_start_ms"] = round(record.time_to_start * 1000, 1)
        fields.update(record.extra)
        level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
        if access_logger.isEnabledFor(level):
            summary = " ".join(f"{name}={value}" for name, value in fields.items())
            access_logger.log(level, "%s %s %d %s", method, route, status, summary, extra=fields)


def _end_span(span: trace.Span, status: int, record: AccessRecord) -> None:
    span.set_attribute("http.response.status_code", status)
    request = record.request
    if request.request_id:
        span.set_attribute("llm_mesh.request_id", request.request_id)
    if request.model:
        span.set_attribute("llm_mesh.model", request.model)
    if record.meter is not None:
        span.set_attribute("llm_mesh.completion_tokens", record.meter.completion_tokens)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
    span.end()
