"""Traces: OpenTelemetry set-up, and the W3C trace context on gRPC calls and broker messages.

Off by default, at no cost: unless the standard `OTEL_*` variables ask for an exporter, no
tracer provider is installed (`use_tracer_provider`), `tracing_enabled()` is false, the
services add no gRPC interceptor and no HTTP span, and the broker headers carry no
`traceparent`.
`configure_tracing` turns it on when the environment says so:

- `OTEL_SDK_DISABLED=true` wins: off;
- `OTEL_TRACES_EXPORTER`: a comma list of `otlp`, `console` or `none` (the spec's names);
  unset, `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
  is set, else off;
- `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or
  `http/protobuf`; the exporters read their endpoint, headers and timeouts themselves;
- `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service (else the caller's
  name); `OTEL_PROPAGATORS` picks the propagators (W3C trace context and baggage by default).

One trace per request (DESIGN.md): the gateway's HTTP span → the gRPC client span
(`client_interceptors`) → the scheduler's server span (`server_interceptors`) → the task's
publish span, whose context rides in the task's AMQP headers (`inject_headers`) → the
worker's task span (`extract_headers`) and its engine span.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters
from opentelemetry.instrumentation.grpc._aio_server import (
    OpenTelemetryAioServerInterceptor,
    _OpenTelemetryAioServicerContext,
)
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = [
    "TRACER_NAME",
    "client_interceptors",
    "configure_tracing",
    "extract_headers",
    "inject_headers",
    "server_interceptors",
    "tracer",
    "tracing_enabled",
    "use_tracer_provider",
]

logger = logging.getLogger(__name__)

#: The instrumentation scope of every span the mesh opens itself.
TRACER_NAME: Final = "llm_mesh"
#: Probes that run every few seconds would drown the traces of real calls.
_UNTRACED_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def configure_tracing(
    service: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Installs an SDK tracer provider if the `OTEL_*` variables ask for export (see above).

    Returns it (None: tracing stays off). Call once per process, before building servers
    and clients (they decide at construction whether to trace); the provider flushes its
    spans at exit. Raises ValueError for an unknown exporter or protocol.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporters(env)
    if not exporters:
        return None
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use_tracer_provider(provider)
    logger.info("tracing on: %s", ", ".join(type(exporter).__name__ for exporter in exporters))
    return provider


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ["otlp"] if endpoint else []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter(env))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    return exporters


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    # Imported here: each exporter pulls in its own transport.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r}")


_provider: trace.TracerProvider | None = None


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Makes the mesh trace with `provider` (None: tracing off).

    `configure_tracing` calls it; tests call it with an in-memory exporter's provider.
    Servers and clients built afterwards follow it.
    """
    global _provider
    _provider = provider


def tracing_enabled() -> bool:
    """Whether the mesh traces (a provider was installed with `use_tracer_provider`)."""
    return _provider is not None


def tracer() -> trace.Tracer:
    """The mesh's tracer (a no-op one while tracing is off)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=_provider or _NO_OP)


_NO_OP: Final = trace.NoOpTracerProvider()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server interceptors that open a span per call (none while tracing is off)."""
    if not tracing_enabled():
        return []
    interceptor: grpc.aio.ServerInterceptor = _ServerInterceptor(
        trace.get_tracer("opentelemetry.instrumentation.grpc", tracer_provider=_provider),
        filter_=_traced_calls(),
    )
    return [interceptor]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The gRPC client interceptors that open a span per call and send its context."""
    if not tracing_enabled():
        return []
    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=_traced_calls()
    )
    return interceptors


def _traced_calls() -> Callable[[Any], bool]:
    """Every call but those of the probe services."""
    untraced = filters.any_of(*(filters.service_name(name) for name in _UNTRACED_SERVICES))
    condition: Callable[[Any], bool] = filters.negate(untraced)
    return condition


class _ServerInterceptor(OpenTelemetryAioServerInterceptor):
    """The instrumentation's aio interceptor, also for streaming handlers that `write()`.

    grpc.aio servers stream either from an async generator or from a coroutine calling
    `context.write()` (https://github.com/grpc/grpc/issues/28728); the instrumentation only
    handles the first (open-telemetry/opentelemetry-python-contrib#3066). `SchedulerService`
    uses the second: its span must cover the awaited coroutine.
    """

    def __init__(self, tracer: trace.Tracer, *, filter_: Callable[[Any], bool]) -> None:
        super().__init__(tracer, filter_=filter_)  # type: ignore[no-untyped-call]

    def _intercept_aio_server_stream(
        self, behavior: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        base: Any = super()
        if inspect.isasyncgenfunction(behavior):
            stream: Callable[..., AsyncIterator[Any]] = base._intercept_aio_server_stream(
                behavior, handler_call_details
            )
            return stream
        instrumentation: Any = self

        async def _writing_interceptor(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            with instrumentation._set_remote_context(context):
                with instrumentation._start_span(
                    handler_call_details, context, set_status_on_exception=True
                ) as span:
                    traced = _TRACED_CONTEXT(context, span)
                    handler: Awaitable[None] = behavior(request, traced)
                    await handler

        return _writing_interceptor


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads AMQP header tables, whose strings may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER: Final = _HeaderGetter()
#: The instrumentation's servicer context wrapper (it records aborts on the span).
_TRACED_CONTEXT: Final[Callable[..., Any]] = _OpenTelemetryAioServicerContext


_Headers = TypeVar("_Headers", bound=MutableMapping[str, Any])


def inject_headers(headers: _Headers) -> _Headers:
    """Adds the current trace context (`traceparent`, ...) to AMQP headers; returns them.

    Adds nothing while tracing is off or outside any span.
    """
    if tracing_enabled():
        propagate.inject(headers)
    return headers


def extract_headers(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The trace context that AMQP headers carry (an empty context when they carry none)."""
    if not headers or not tracing_enabled():
        return otel_context.Context()
    return propagate.extract(headers, getter=_GETTER, context=otel_context.Context())
