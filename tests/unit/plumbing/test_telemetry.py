"""Tracing set-up: off unless `OTEL_*` asks, and the trace context in AMQP headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing import telemetry


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    telemetry.use_tracer_provider(provider)
    try:
        yield provider
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


def test_off_by_default_costs_nothing() -> None:
    assert telemetry.configure_tracing("svc", environ={}) is None
    assert (
        telemetry.configure_tracing(
            "svc",
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"},
        )
        is None
    )
    assert telemetry.configure_tracing("svc", environ={"OTEL_TRACES_EXPORTER": "none"}) is None
    assert not telemetry.tracing_enabled()
    assert telemetry.server_interceptors() == []
    assert telemetry.client_interceptors() == []
    with telemetry.tracer().start_as_current_span("nothing"):
        assert telemetry.inject_headers({}) == {}
    assert not telemetry.extract_headers({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})


def test_unknown_exporters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown exporter"):
        telemetry.configure_tracing("svc", environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="unsupported protocol"):
        telemetry.configure_tracing(
            "svc",
            environ={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        )
    assert not telemetry.tracing_enabled()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_an_otlp_endpoint_turns_tracing_on(protocol: str) -> None:
    provider = telemetry.configure_tracing(
        "llm-mesh-test",
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        },
    )
    try:
        assert provider is not None and telemetry.tracing_enabled()
        assert provider.resource.attributes["service.name"] == "llm-mesh-test"
    finally:
        telemetry.use_tracer_provider(None)
        if provider is not None:
            provider.shutdown()


def test_headers_carry_the_context_across(provider: TracerProvider) -> None:
    assert telemetry.tracing_enabled()
    assert len(telemetry.server_interceptors()) == 1
    with telemetry.tracer().start_as_current_span("publish") as span:
        headers = telemetry.inject_headers({"x-attempt": 2})
    assert headers["x-attempt"] == 2
    traceparent = headers["traceparent"]
    assert isinstance(traceparent, str)
    # AMQP header tables may hand strings back as bytes.
    extracted = telemetry.extract_headers({"traceparent": traceparent.encode()})
    with telemetry.tracer().start_as_current_span("consume", context=extracted) as child:
        pass
    assert child.get_span_context().trace_id == span.get_span_context().trace_id
    assert child.parent is not None and child.parent.span_id == span.get_span_context().span_id
    assert child.parent.is_remote
