"""One trace per request: gateway HTTP span → gRPC → RabbitMQ → the worker's engine span, whose
context the reply chunks carry back to the scheduler."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from typing import Any

import aio_pika
import httpx
from llmmesh.v1 import broker_pb2
from observability_mesh import WAIT_TIMEOUT, Mesh, chat, wait_until
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from plumbing.topology import Topology


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

    # And back: chunk 0's headers carried the engine span's context to the scheduler, which
    # linked the call's span to it when the worker accepted the task.
    worker_id = mesh.workers[0].service.worker_id
    [link] = server_span.links
    assert link.context.trace_id == engine_span.context.trace_id
    assert link.context.span_id == engine_span.context.span_id
    assert link.attributes == {"llm_mesh.worker_id": worker_id}
    accepted = [event for event in server_span.events if event.name == "worker_accepted"]
    assert [event.attributes for event in accepted] == [{"llm_mesh.worker_id": worker_id}]


async def test_every_chunk_carries_the_engine_span_context(
    mesh: Mesh, spans: InMemorySpanExporter
) -> None:
    """Playing the scheduler: a task with a `traceparent` in, chunks whose headers carry the
    context of the worker's engine span (same trace) out."""
    model = "obs-trace-chunks"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    trace_id, parent_id = secrets.randbits(128), secrets.randbits(64)
    task = broker_pb2.Task(request_id=uuid.uuid4().hex, request=chat(model, "trace the chunks"))
    connection = await aio_pika.connect(mesh.amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        tasks = await channel.get_exchange(Topology(mesh.prefix).tasks_exchange)
        await tasks.publish(
            aio_pika.Message(
                task.SerializeToString(),
                headers={"traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01"},
                correlation_id=task.request_id,
                reply_to=replies.name,
            ),
            routing_key=model,
        )
        headers: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_TIMEOUT), replies.iterator(no_ack=True) as messages:
            async for message in messages:
                headers.append(dict(message.headers))
                chunk = broker_pb2.TaskChunk.FromString(message.body)
                if chunk.events[-1].HasField("generation_finish"):
                    break
    await wait_until(
        lambda: any(span.name == "engine.generate" for span in spans.get_finished_spans())
    )
    engine_span = _one(list(spans.get_finished_spans()), "engine.generate")
    assert engine_span.context.trace_id == trace_id
    expected = f"00-{trace_id:032x}-{engine_span.context.span_id:016x}-01"
    assert len(headers) >= 2
    assert all(header.get("traceparent") == expected for header in headers), headers
