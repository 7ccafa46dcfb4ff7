"""The `SchedulerService` servicer: `Generate` relays a task's chunks, `ListModels` reads the
registry.

One `Generate` call, as DESIGN.md tells it: generate the request id, store a body too large
for the broker in object storage (`PayloadOffload`; deleted when the call ends), register the
request's stream in the demux, publish the `Task` (the confirm is awaited concurrently with
chunk 0), then wait for chunk 0 within the `queue` limit. A rejection or anything else that
fails before `GenerationStart` becomes the call's gRPC status. After it, every chunk is
forwarded as one `GenerateResponse`; a stalled, lost or refused stream ends in-band with a
`StreamError` and a `GenerationFinish`, and the worker is told to `Cancel`. A caller that goes
away cancels the servicer: the worker is told to `Cancel`, and the demux entry goes in
`finally`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc
from llmmesh.v1 import (
    broker_pb2,
    chat_pb2,
    events_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from opentelemetry import trace

from plumbing.structured_logs import bind_request
from plumbing.telemetry import tracing_enabled
from plumbing.topology import MAX_PRIORITY
from scheduler.admission import Admission, Waiting
from scheduler.broker import TaskBroker
from scheduler.demux import Demux, RequestStream
from scheduler.errors import (
    InvalidRequest,
    MeshError,
    ModelNotFound,
    Overloaded,
    TimeLimitExceeded,
    WorkerFailed,
    WorkerUnavailable,
    from_rejection,
    to_status,
    to_stream_error,
)
from scheduler.metrics import OTHER_MODEL, SchedulerMetrics
from scheduler.offload import PayloadOffload
from scheduler.registry import WorkerRegistry
from scheduler.settings import Settings
from scheduler.validation import validate

__all__ = ["SchedulerService", "message_priority"]

logger = logging.getLogger(__name__)

#: AMQP message priority of batch work; interactive work gets `MAX_PRIORITY`.
_BATCH_MESSAGE_PRIORITY = 1


def message_priority(priority: int) -> int:
    """The AMQP message priority of a request priority (unspecified counts as interactive)."""
    return _BATCH_MESSAGE_PRIORITY if priority == chat_pb2.PRIORITY_BATCH else MAX_PRIORITY


class SchedulerService(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    """Serves `Generate` and `ListModels` for one replica."""

    def __init__(
        self,
        settings: Settings,
        broker: TaskBroker,
        demux: Demux,
        registry: WorkerRegistry,
        metrics: SchedulerMetrics,
        offload: PayloadOffload,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._demux = demux
        self._registry = registry
        self._metrics = metrics
        self._offload = offload
        self._admission = Admission(settings.max_queued_per_model)

    async def ListModels(
        self,
        request: scheduler_service_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.ListModelsRequest, scheduler_service_pb2.ListModelsResponse
        ],
    ) -> scheduler_service_pb2.ListModelsResponse:
        """The models with a live, ready worker."""
        return scheduler_service_pb2.ListModelsResponse(models=self._registry.models())

    async def Generate(
        self,
        request: scheduler_service_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.GenerateRequest, scheduler_service_pb2.GenerateResponse
        ],
    ) -> None:
        """Streams the request's events; failures before `GenerationStart` are statuses."""
        self._metrics.in_flight.inc()
        request_id = uuid.uuid4().hex
        if tracing_enabled():
            span = trace.get_current_span()
            span.set_attribute("llm_mesh.request_id", request_id)
            span.set_attribute("llm_mesh.model", request.request.model)
        with bind_request(request_id, model=request.request.model):
            try:
                await self._generate(request_id, request.request, context)
            except MeshError as error:
                await context.abort_with_status(to_status(error))
            except Exception:
                logger.exception("Generate failed unexpectedly")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self._metrics.in_flight.dec()

    async def _generate(
        self,
        request_id: str,
        chat: chat_pb2.ChatRequest,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.GenerateRequest, scheduler_service_pb2.GenerateResponse
        ],
    ) -> None:
        validate(chat, max_n=self._settings.max_n)
        clock = asyncio.get_running_loop().time
        generation = _Generation(
            request_id=request_id,
            model=self._model_label(chat.model),
            received=clock(),
            received_wall=time.time(),
        )
        budget = self._budget(chat, context)
        generation.total_deadline = generation.received + budget
        queue_limit = min(self._settings.queue_timeout, budget)
        await self._check_pool(chat.model)
        task = broker_pb2.Task(
            request_id=generation.request_id,
            priority=chat.priority or chat_pb2.PRIORITY_INTERACTIVE,
        )
        task.received.FromNanoseconds(int(generation.received_wall * 1e9))
        task.queue_deadline.FromNanoseconds(int((generation.received_wall + queue_limit) * 1e9))
        task.total_deadline.FromNanoseconds(int((generation.received_wall + budget) * 1e9))
        stored = await self._offload.attach(task, chat, deadline=generation.received + queue_limit)
        try:
            generation.waiting = self._admit(chat)
            with self._demux.open(generation.request_id) as stream:
                publishing = asyncio.create_task(
                    self._publish(
                        task, stream, chat.model, message_priority(chat.priority), queue_limit
                    )
                )
                try:
                    await self._relay(generation, stream, context, queue_limit)
                except asyncio.CancelledError:
                    self._metrics.tasks_ended.labels(generation.model, "cancelled").inc()
                    await self._broker.publish_cancel(generation.request_id, "the caller cancelled")
                    raise
                finally:
                    publishing.cancel()  # A no-op once confirmed, which it is by now.
                    generation.waiting.release()
        finally:
            if stored is not None:
                await self._offload.release(stored)

    async def _relay(
        self,
        generation: _Generation,
        stream: RequestStream,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.GenerateRequest, scheduler_service_pb2.GenerateResponse
        ],
        queue_limit: float,
    ) -> None:
        request_id = generation.request_id
        try:
            first = await self._await_start(generation, stream, queue_limit)
            generation.waiting.release()
        except (TimeLimitExceeded, WorkerFailed) as error:
            self._metrics.tasks_ended.labels(
                generation.model, "expired" if isinstance(error, TimeLimitExceeded) else "failed"
            ).inc()
            await self._broker.publish_cancel(request_id, error.message)
            raise
        except MeshError as error:
            outcome = "rejected" if isinstance(error, InvalidRequest) else "failed"
            self._metrics.tasks_ended.labels(generation.model, outcome).inc()
            raise
        generation.started = asyncio.get_running_loop().time()
        if tracing_enabled():
            _trace_acceptance(stream)
        self._metrics.tasks_started.labels(generation.model).inc()
        self._metrics.queue_time.labels(generation.model).observe(
            generation.started - generation.received
        )
        chunk = first
        try:
            while not await self._forward(generation, chunk, context):
                chunk = await self._next_chunk(generation, stream)
        except MeshError as error:
            logger.info("request %s failed in-band: %s", request_id, error.message)
            self._metrics.tasks_ended.labels(generation.model, "failed").inc()
            await self._broker.publish_cancel(request_id, error.message)
            await context.write(generation.failure(error))
            return
        self._metrics.tasks_ended.labels(generation.model, "completed").inc()
        self._observe_completion(generation)

    async def _await_start(
        self, generation: _Generation, stream: RequestStream, queue_limit: float
    ) -> broker_pb2.TaskChunk:
        """Chunk 0, if it accepts the task; raises the failure or the rejection otherwise."""
        try:
            async with asyncio.timeout_at(generation.received + queue_limit):
                chunk = await stream.get()
        except TimeoutError:
            code = (
                events_pb2.ERROR_CODE_QUEUE_TIMEOUT
                if queue_limit >= self._settings.queue_timeout
                else events_pb2.ERROR_CODE_TOTAL_TIMEOUT
            )
            raise TimeLimitExceeded(code, queue_limit) from None
        if chunk.HasField("rejection"):
            raise from_rejection(chunk.rejection)
        if not chunk.events or not chunk.events[0].HasField("generation_start"):
            raise WorkerFailed(
                "the worker's first chunk has no GenerationStart",
                error_code=events_pb2.ERROR_CODE_INTERNAL,
            )
        return chunk

    async def _next_chunk(
        self, generation: _Generation, stream: RequestStream
    ) -> broker_pb2.TaskChunk:
        """The next chunk within the `first_token`, `idle` and `total` limits."""
        if generation.first_token is None:
            code, limit = (
                events_pb2.ERROR_CODE_FIRST_TOKEN_TIMEOUT,
                self._settings.first_token_timeout,
            )
            deadline = generation.started + limit
        else:
            code, limit = events_pb2.ERROR_CODE_IDLE_TIMEOUT, self._settings.idle_timeout
            deadline = generation.last_chunk + limit
        if generation.total_deadline <= deadline:
            code = events_pb2.ERROR_CODE_TOTAL_TIMEOUT
            limit = generation.total_deadline - generation.received
            deadline = generation.total_deadline
        try:
            async with asyncio.timeout_at(deadline):
                return await stream.get()
        except TimeoutError:
            raise TimeLimitExceeded(code, limit) from None

    async def _forward(
        self,
        generation: _Generation,
        chunk: broker_pb2.TaskChunk,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.GenerateRequest, scheduler_service_pb2.GenerateResponse
        ],
    ) -> bool:
        """Writes one chunk as one response; returns whether it ended the stream."""
        now = asyncio.get_running_loop().time()
        generation.last_chunk = now
        finished = False
        deltas = tokens = 0
        for event in chunk.events:
            kind = event.WhichOneof("event")
            if kind == "sequence_delta":
                deltas += 1
                tokens += len(event.sequence_delta.token_ids)
            elif kind == "generation_start":
                generation.prompt_tokens = event.generation_start.prompt_tokens
            elif kind == "generation_finish":
                finished = True
        model = generation.model
        self._metrics.relayed_chunks.labels(model).inc()
        if deltas:
            generation.completion_tokens += tokens
            generation.last_token = now
            self._metrics.tokens.labels(model).inc(tokens)
            if generation.first_token is None:
                generation.first_token = now
                self._metrics.time_to_first_token.labels(model).observe(now - generation.received)
        await context.write(scheduler_service_pb2.GenerateResponse(events=chunk.events))
        return finished

    async def _publish(
        self,
        task: broker_pb2.Task,
        stream: RequestStream,
        model: str,
        priority: int,
        expiration: float,
    ) -> None:
        """Publishes the task; a failure ends the stream before it started."""
        try:
            await self._broker.publish_task(
                task, model=model, priority=priority, expiration=expiration
            )
        except MeshError as error:
            stream.fail(error)
        else:
            self._metrics.tasks_published.labels(model).inc()

    def _model_label(self, model: str) -> str:
        """`model` as a metric label: known models only (clients choose the names)."""
        if self._registry.has_seen(model) or model in self._broker.models_published:
            return model
        return OTHER_MODEL

    def _observe_completion(self, generation: _Generation) -> None:
        """The latencies of a request that completed."""
        model = generation.model
        now = asyncio.get_running_loop().time()
        self._metrics.request_duration.labels(model).observe(now - generation.received)
        if generation.first_token is not None and generation.completion_tokens > 1:
            self._metrics.inter_token_latency.labels(model).observe(
                (generation.last_token - generation.first_token)
                / (generation.completion_tokens - 1)
            )

    def _admit(self, chat: chat_pb2.ChatRequest) -> Waiting:
        """Counts the request among those waiting for a worker, or sheds it (`Overloaded`)."""
        try:
            return self._admission.admit(chat.model, chat.priority)
        except Overloaded:
            self._metrics.tasks_ended.labels(self._model_label(chat.model), "shed").inc()
            raise

    async def _check_pool(self, model: str) -> None:
        """Fails fast when no live worker serves `model` (NOT_FOUND if none ever did)."""
        if self._registry.discovering or self._registry.has_live_worker(model):
            return
        if await self._broker.queue_exists(model):
            raise WorkerUnavailable(f"no live worker serves model {model!r}")
        raise ModelNotFound(model)

    def _budget(
        self,
        chat: chat_pb2.ChatRequest,
        context: grpc.aio.ServicerContext[
            scheduler_service_pb2.GenerateRequest, scheduler_service_pb2.GenerateResponse
        ],
    ) -> float:
        """The request's `total` budget: the setting, capped by the request and the deadline."""
        budget = self._settings.total_timeout
        if chat.HasField("timeout"):
            requested = chat.timeout.ToNanoseconds() / 1e9
            if requested > 0:
                budget = min(budget, requested)
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        return budget


def _trace_acceptance(stream: RequestStream) -> None:
    """Marks chunk 0's arrival on the request's span (the gRPC call's), linked to the worker's
    engine span whose context the chunk carried back in its headers."""
    span = trace.get_current_span()
    attributes = {"llm_mesh.worker_id": stream.owner or ""}
    if stream.worker_span is not None and stream.worker_span.is_valid:
        span.add_link(stream.worker_span, attributes)
    span.add_event("worker_accepted", attributes)


@dataclass
class _Generation:
    """What the scheduler tracks of one request: its times (event loop clock) and usage."""

    request_id: str
    #: The model's metric label.
    model: str
    received: float
    received_wall: float
    total_deadline: float = float("inf")
    started: float = 0.0
    first_token: float | None = None
    last_token: float = 0.0
    last_chunk: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Its place among the requests waiting for a worker, until chunk 0 (load shedding).
    waiting: Waiting = field(default_factory=Waiting.none)

    def failure(self, error: MeshError) -> scheduler_service_pb2.GenerateResponse:
        """The in-band end of a failed stream: the error, then the finish with usage so far."""
        now = asyncio.get_running_loop().time()
        finish = events_pb2.GenerationFinish(
            usage=events_pb2.Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                total_tokens=self.prompt_tokens + self.completion_tokens,
            )
        )
        finish.timings.queued.FromNanoseconds(int((self.started - self.received) * 1e9))
        if self.first_token is not None:
            finish.timings.time_to_first_token.FromNanoseconds(
                int((self.first_token - self.received) * 1e9)
            )
        finish.timings.total.FromNanoseconds(int((now - self.received) * 1e9))
        return scheduler_service_pb2.GenerateResponse(
            events=[
                events_pb2.StreamEvent(error=to_stream_error(error)),
                events_pb2.StreamEvent(generation_finish=finish),
            ]
        )
