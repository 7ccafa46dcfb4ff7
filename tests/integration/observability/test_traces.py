"""One trace per request: gateway HTTP span → gRPC → RabbitMQ → the worker's engine span."""

from __future__ import annotations

import itertools

import httpx
from observability_mesh import Mesh, wait_until
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, [span.name for span in spans]
    return matching[0]


async def test_one_trace_id_spans_gateway_scheduler_and_worker(
    mesh: Mesh, spans: InMemorySpanExporter
) -> None:
    model = "obs-trace"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    gateway = await mesh.start_gateway(scheduler, [model])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {gateway.api_key}"},
            json={"model": model, "messages": [{"role": "user", "content": "trace me"}]},
        )
    assert response.status_code == 200, response.text
    # The worker ends its spans after its last chunk is confirmed: maybe after the response.
    await wait_until(
        lambda: any(span.name == "engine.generate" for span in spans.get_finished_spans())
    )
    finished = list(spans.get_finished_spans())
    http_span = _one(finished, "POST /v1/chat/completions")
    client_span = next(
        span
        for span in finished
        if span.name == "/llmmesh.v1.SchedulerService/Generate" and span.kind is SpanKind.CLIENT
    )
    server_span = next(
        span
        for span in finished
        if span.name == "/llmmesh.v1.SchedulerService/Generate" and span.kind is SpanKind.SERVER
    )
    publish_span = next(span for span in finished if span.kind is SpanKind.PRODUCER)
    task_span = next(span for span in finished if span.kind is SpanKind.CONSUMER)
    engine_span = _one(finished, "engine.generate")

    chain = [http_span, client_span, server_span, publish_span, task_span, engine_span]
    trace_ids = {span.context.trace_id for span in chain}
    assert len(trace_ids) == 1
    # Each span is the child of the one before; the worker's came through the AMQP headers.
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (
            child.name
        )
    assert server_span.parent is not None and server_span.parent.is_remote
    assert task_span.parent is not None and task_span.parent.is_remote
    assert not engine_span.parent.is_remote  # type: ignore[union-attr]

    request_id = response.json()["id"]
    assert http_span.attributes is not None and task_span.attributes is not None
    assert str(request_id).endswith(str(http_span.attributes["llm_mesh.request_id"]))
    assert (
        task_span.attributes["llm_mesh.request_id"] == http_span.attributes["llm_mesh.request_id"]
    )
    assert http_span.attributes["http.response.status_code"] == 200
    events = [event.name for event in engine_span.events]
    assert events == ["first_token", "finish"]
    finish = engine_span.events[-1]
    assert finish.attributes is not None and finish.attributes["completion_tokens"] == 8
