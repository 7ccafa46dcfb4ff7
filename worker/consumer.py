"""The worker's task consumer: one model's queue in, an engine run and a reply stream per task.

Consumes `llm.tasks.<model>` with the `x-priority` consumer argument (faster hardware first)
and a prefetch equal to the engine's capacity. Each delivery is acked or rejected in one place
(`message.process`), after the task's last chunk is confirmed:

- undecodable, or redelivered too often (it keeps killing workers) → rejected → `llm.dead`;
- past its queue deadline → rejected → `llm.dead` (the requester already gave up);
- cancelled while queued (its id is in the cancelled set) → dropped;
- redelivered (a worker died holding it) → republished with `x-attempt` + 1, since classic
  queues keep no delivery count (DESIGN.md, poison tasks);
- otherwise the request (inline, or fetched from object storage: `PayloadFetcher`) → the
  worker's own limits (`max_n`: a task may bypass the scheduler) → `engine.prepare` → chunk 0
  (`GenerationStart`, or a rejection), the engine's events through a coalescing
  `ReplyStream`, and the end: `GenerationFinish` with the usage, preceded by the reason when
  the request was aborted (cancel, shutdown, engine failure). A requester whose reply queue is
  gone gets nothing more: the engine request is aborted and the task acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Final

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from google.protobuf.message import DecodeError
from llmmesh.v1 import broker_pb2, chat_pb2, events_pb2
from opentelemetry import trace

from plumbing.object_store import PayloadStore
from plumbing.s3_client import connect_s3
from plumbing.structured_logs import bind_request
from plumbing.telemetry import extract_headers, inject_headers, tracer, tracing_enabled
from plumbing.topology import Topology
from worker.cancellations import CancelledRequests
from worker.engine_protocol import Engine, EngineOutput, PreparedRequest, RequestRejected
from worker.metrics import WorkerMetrics
from worker.payloads import PayloadFetcher
from worker.replies import AmqpChunkSink, ReplyStream, ReplyUndeliverable
from worker.settings import Settings
from worker.watchdog import EngineWatchdog

__all__ = ["AbortReason", "TaskConsumer"]

logger = logging.getLogger(__name__)

#: The header counting how many times a task was handed to a worker.
ATTEMPT_HEADER: Final = "x-attempt"
#: How long a redelivered task waits for the publishing channel to be restored.
_CHANNEL_RESTORE_TIMEOUT: Final = 10.0


class AbortReason(enum.Enum):
    """Why a running request stopped before its end."""

    CANCELLED = "cancelled"
    REQUESTER_GONE = "requester_gone"
    #: The broker connection dropped: aio-pika cancels the handlers of the closed channel.
    BROKER_LOST = "broker_lost"
    SHUTDOWN = "shutdown"
    ENGINE_ERROR = "engine_error"
    ENGINE_STALLED = "engine_stalled"


class _Unprocessable(Exception):
    """The task is rejected without requeue: it goes to the dead-letter queue."""


@dataclass
class _RunningTask:
    """A task being handled; `abort` stops its generation from outside."""

    request_id: str
    abort_reason: AbortReason | None = None
    generation: asyncio.Task[None] | None = None

    def abort(self, reason: AbortReason) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        if self.generation is not None:
            self.generation.cancel()


@dataclass
class _Progress:
    """What the engine produced so far (for the usage, the timings and the cancel path)."""

    completion_tokens: int = 0
    first_token_wall: float | None = None
    open_sequences: set[int] = field(default_factory=set)

    def observe(self, output: EngineOutput) -> bool:
        """Records one output; returns whether it carries the request's first token."""
        self.completion_tokens = output.completion_tokens
        first = False
        for event in output.events:
            kind = event.WhichOneof("event")
            if kind == "sequence_start":
                self.open_sequences.add(event.sequence_start.index)
            elif kind == "sequence_finish":
                self.open_sequences.discard(event.sequence_finish.index)
            elif kind == "sequence_delta" and self.first_token_wall is None:
                self.first_token_wall = time.time()
                first = True
        return first


class TaskConsumer:
    """Consumes one model's task queue into an engine. `start`, `stop_consuming`, `drain`."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        connection: AbstractRobustConnection,
        *,
        worker_id: str,
        metrics: WorkerMetrics,
        cancelled: CancelledRequests,
        watchdog: EngineWatchdog | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._connection = connection
        self._worker_id = worker_id
        self._metrics = metrics
        self._cancelled = cancelled
        self._watchdog = watchdog
        self._topology = Topology(settings.mesh.broker_prefix)
        self._payloads = PayloadFetcher(
            PayloadStore(connect_s3(settings.mesh)) if settings.mesh.s3_endpoint else None
        )
        self._running: dict[str, _RunningTask] = {}
        self._handlers: set[asyncio.Task[object]] = set()
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._replies: AbstractExchange | None = None
        self._tasks: AbstractExchange | None = None
        self._publish_channel: AbstractRobustChannel | None = None

    @property
    def consuming(self) -> bool:
        """Whether the consumer is registered on the queue."""
        return self._consumer_tag is not None

    @property
    def running(self) -> int:
        """Tasks being handled now."""
        return len(self._handlers)

    async def declare(self) -> None:
        """Declares the model's queue (and the exchanges) without consuming yet."""
        publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._publish_channel = publish_channel
        self._replies = publish_channel.default_exchange
        self._tasks = await self._topology.declare_tasks_exchange(publish_channel)
        consume_channel: AbstractChannel = await self._connection.channel()
        await consume_channel.set_qos(prefetch_count=self._settings.capacity)
        self._queue = await self._topology.declare_task_queue(consume_channel, self._settings.model)

    async def start(self) -> None:
        """Starts consuming with the worker's consumer priority."""
        assert self._queue is not None, "declare() first"
        self._consumer_tag = await self._queue.consume(
            self._on_message, arguments={"x-priority": self._settings.priority}
        )

    async def stop_consuming(self) -> None:
        """Takes no more tasks; those already taken go on."""
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            await self._queue.cancel(tag)

    async def drain(self, grace: float) -> None:
        """Waits up to `grace` seconds for the tasks taken, then aborts the rest and waits."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        if self._handlers:
            logger.warning("grace period over: aborting %d requests", len(self._handlers))
            for running in self._running.values():
                running.abort(AbortReason.SHUTDOWN)
            await asyncio.wait(set(self._handlers))

    def abort_all(self, reason: AbortReason) -> None:
        """Aborts every running request (each ends with the reason's events)."""
        for running in self._running.values():
            running.abort(reason)

    def cancel(self, request_id: str) -> None:
        """Handles a `Cancel`: remembers the id and aborts the request if it runs here."""
        self._cancelled.add(request_id)
        running = self._running.get(request_id)
        if running is not None:
            running.abort(AbortReason.CANCELLED)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._metrics.running.inc()
        try:
            async with message.process(requeue=False):
                await self._process(message)
        except _Unprocessable as reason:
            logger.warning("task %s dead-lettered: %s", message.correlation_id, reason)
        except Exception:
            # The outermost boundary of a delivery: anything else is a bug (or the broker
            # connection died under the ack); the task was rejected or will be redelivered.
            logger.exception("task %s failed", message.correlation_id)
        finally:
            self._handlers.discard(handler)
            self._metrics.running.dec()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        self._metrics.tasks_received.inc()
        try:
            task = broker_pb2.Task.FromString(message.body)
        except DecodeError:
            self._metrics.tasks_dead_lettered.inc()
            raise _Unprocessable("undecodable task") from None
        if not task.request_id or not message.reply_to:
            self._metrics.tasks_dead_lettered.inc()
            raise _Unprocessable("a task needs a request id and a reply_to")
        if task.request_id in self._cancelled:
            logger.info("task %s dropped: cancelled while queued", task.request_id)
            self._metrics.tasks_dropped.labels("cancelled").inc()
            return
        if task.HasField("queue_deadline") and task.queue_deadline.ToNanoseconds() < time.time_ns():
            self._metrics.tasks_dropped.labels("expired").inc()
            raise _Unprocessable("its queue deadline passed")
        if message.redelivered:
            await self._republish(message, task)
            return
        with bind_request(task.request_id, model=self._settings.model), self._task_span(message):
            await self._run(task, message.reply_to)

    def _task_span(self, message: AbstractIncomingMessage) -> AbstractContextManager[object]:
        """The task's consumer span, a child of the publisher's (W3C context in the headers);
        nothing while tracing is off."""
        if not tracing_enabled():
            return contextlib.nullcontext()
        return tracer().start_as_current_span(
            f"{message.routing_key} process",
            context=extract_headers(message.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
                "llm_mesh.request_id": message.correlation_id or "",
                "llm_mesh.worker_id": self._worker_id,
            },
        )

    async def _republish(self, message: AbstractIncomingMessage, task: broker_pb2.Task) -> None:
        """Puts a redelivered task back with its attempt count raised (or dead-letters it)."""
        attempt = _attempt(message)
        if attempt >= self._settings.max_attempts:
            self._metrics.tasks_dead_lettered.inc()
            raise _Unprocessable(f"delivered {attempt} times; it may be killing workers")
        assert self._tasks is not None and self._publish_channel is not None
        # After a reconnection the broker redelivers on the restored consume channel while
        # this one may still be reopening: wait for it rather than fail the task.
        async with asyncio.timeout(_CHANNEL_RESTORE_TIMEOUT):
            await self._publish_channel.ready()
        expiration = None
        if task.HasField("queue_deadline"):
            expiration = max(task.queue_deadline.ToNanoseconds() - time.time_ns(), 1) / 1e9
        copy = aio_pika.Message(
            message.body,
            headers={**message.headers, ATTEMPT_HEADER: attempt + 1},
            content_type=message.content_type,
            type=message.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            expiration=expiration,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
        )
        await self._tasks.publish(copy, routing_key=message.routing_key or "", mandatory=True)
        self._metrics.tasks_republished.inc()
        logger.info("task %s redelivered: republished as attempt %d", task.request_id, attempt + 1)

    async def _run(self, task: broker_pb2.Task, reply_to: str) -> None:
        """Runs an accepted task from chunk 0 to its last chunk."""
        request_id = task.request_id
        if request_id in self._running:
            # A duplicate delivery of a task this worker runs now: its requester would refuse
            # a second stream anyway.
            logger.warning("task %s is already running here: duplicate dropped", request_id)
            return
        running = _RunningTask(request_id)
        self._running[request_id] = running
        sink = AmqpChunkSink(self._reply_exchange, reply_to)
        reply = ReplyStream(
            sink,
            request_id=request_id,
            worker_id=self._worker_id,
            flush_interval=self._settings.reply_flush_interval,
            max_chunk_bytes=self._settings.payload_threshold_bytes,
            on_undeliverable=lambda: running.abort(self._undeliverable_reason()),
        )
        try:
            async with reply:
                await self._generate(task, running, reply, sink)
        finally:
            del self._running[request_id]
            self._metrics.chunks_published.inc(reply.chunks_sent)

    async def _generate(
        self,
        task: broker_pb2.Task,
        running: _RunningTask,
        reply: ReplyStream,
        sink: AmqpChunkSink,
    ) -> None:
        request_id = task.request_id
        try:
            request = await self._payloads.request(task)
            _check_limits(request, max_n=self._settings.max_n)
            prepared = await self._engine.prepare(request_id, request)
        except RequestRejected as rejected:
            self._metrics.tasks_rejected.inc()
            with contextlib.suppress(ReplyUndeliverable):
                await reply.reject(
                    broker_pb2.TaskRejection(
                        code=rejected.code,  # type: ignore[arg-type]
                        message=rejected.message,
                        field=rejected.field,
                    )
                )
            return
        if running.abort_reason is not None:
            self._metrics.tasks_dropped.labels("cancelled").inc()
            return
        accepted_wall = time.time()
        start = events_pb2.GenerationStart(
            request_id=request_id,
            model=self._engine.card.name,
            role=chat_pb2.ROLE_ASSISTANT,
            prompt_tokens=prepared.prompt_tokens,
        )
        start.created.FromNanoseconds(int(accepted_wall * 1e9))
        engine_span = _engine_span(prepared)
        if tracing_enabled():
            # Every chunk from chunk 0 on carries the engine span's context back to the
            # requester (DESIGN.md: trace context in the task's headers and in the chunks').
            with trace.use_span(engine_span, end_on_exit=False):
                sink.headers = inject_headers({})
        reply.send([events_pb2.StreamEvent(generation_start=start)], urgent=True)
        self._metrics.tasks_started.inc()
        progress = _Progress()
        with trace.use_span(engine_span, end_on_exit=False):
            # Started in the span: the generation's task adds the first token event to it.
            # Beam search streams nothing until it ends: the watchdog cannot judge it.
            watched = not request.generation_parameters.HasField("beam_search")
            running.generation = asyncio.create_task(
                self._stream(prepared, reply, progress, watched=watched)
            )
        outcome: AbortReason | None = None
        try:
            await running.generation
        except asyncio.CancelledError:
            handler = asyncio.current_task()
            if handler is not None and handler.cancelling():
                # aiormq cancels a channel's consumer tasks when the channel closes: the
                # broker connection was lost (the worker closes its own only once drained).
                self._metrics.tasks_aborted.labels(AbortReason.BROKER_LOST.value).inc()
                engine_span.end()
                raise
            outcome = running.abort_reason
        except Exception:
            # The engine is a boundary of its own: whatever it raises ends the request
            # in-band, and the worker goes on serving.
            logger.exception("engine failed on request %s", request_id)
            outcome = AbortReason.ENGINE_ERROR
        engine_span.add_event(
            "finish",
            {
                "completion_tokens": progress.completion_tokens,
                "outcome": "completed" if outcome is None else outcome.value,
            },
        )
        engine_span.end()
        if outcome is None:
            self._metrics.tasks_completed.inc()
        else:
            logger.info("request %s aborted: %s", request_id, outcome.value)
            self._metrics.tasks_aborted.labels(outcome.value).inc()
        if outcome in (AbortReason.REQUESTER_GONE, AbortReason.BROKER_LOST):
            return
        final = _final_events(outcome, task, prepared, progress, accepted_wall)
        try:
            await reply.finish(final)
        except ReplyUndeliverable as gone:
            logger.info("request %s: last chunk undeliverable (%s)", request_id, gone)

    async def _stream(
        self, prepared: PreparedRequest, reply: ReplyStream, progress: _Progress, *, watched: bool
    ) -> None:
        outputs = self._engine.generate(prepared)
        watchdog = self._watchdog if watched else None
        if watchdog is not None:
            watchdog.started()
        try:
            async for output in outputs:
                if watchdog is not None:
                    watchdog.progressed()
                before = progress.completion_tokens
                first_token = progress.observe(output)
                self._metrics.tokens_generated.inc(max(progress.completion_tokens - before, 0))
                if first_token:
                    trace.get_current_span().add_event("first_token")
                reply.send(output.events, urgent=first_token)
        finally:
            if watchdog is not None:
                watchdog.finished()
            # Closing the iterator aborts the engine's request (the Engine contract).
            if isinstance(outputs, AsyncGenerator):
                await outputs.aclose()

    def _undeliverable_reason(self) -> AbortReason:
        """Why a reply could not be delivered: its requester's queue is gone, or the broker
        connection is (then the publishing channel closed with it)."""
        channel = self._publish_channel
        if channel is not None and channel.is_closed:
            return AbortReason.BROKER_LOST
        return AbortReason.REQUESTER_GONE

    @property
    def _reply_exchange(self) -> AbstractExchange:
        assert self._replies is not None, "declare() first"
        return self._replies


def _check_limits(request: chat_pb2.ChatRequest, *, max_n: int) -> None:
    """Raises `RequestRejected` for an `n` the worker will not run. The scheduler checks it
    first, but a task can come from anyone with access to the broker; the engines check the
    rest (`max_tokens` against the model's context)."""
    parameters = request.generation_parameters
    if parameters.HasField("n") and not 1 <= parameters.n <= max_n:
        raise RequestRejected(
            events_pb2.ERROR_CODE_INVALID_REQUEST,
            f"n must be 1 to {max_n} on this worker",
            "generation_parameters.n",
        )


def _engine_span(prepared: PreparedRequest) -> trace.Span:
    """The span of the engine's generation (a non-recording one while tracing is off)."""
    if not tracing_enabled():
        return trace.INVALID_SPAN
    return tracer().start_span(
        "engine.generate",
        attributes={
            "llm_mesh.request_id": prepared.request_id,
            "llm_mesh.prompt_tokens": prepared.prompt_tokens,
            "llm_mesh.sequences": prepared.sequences,
        },
    )


def _attempt(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) else 1


def _final_events(
    outcome: AbortReason | None,
    task: broker_pb2.Task,
    prepared: PreparedRequest,
    progress: _Progress,
    accepted_wall: float,
) -> list[events_pb2.StreamEvent]:
    """The end of the stream: the reason of an abort (if any), then `GenerationFinish`."""
    events: list[events_pb2.StreamEvent] = []
    if outcome is AbortReason.CANCELLED:
        events += [
            events_pb2.StreamEvent(
                sequence_finish=events_pb2.SequenceFinish(
                    index=index, reason=events_pb2.FINISH_REASON_CANCELLED
                )
            )
            for index in sorted(progress.open_sequences)
        ]
    elif outcome is AbortReason.SHUTDOWN:
        events.append(
            events_pb2.StreamEvent(
                error=events_pb2.StreamError(
                    code=events_pb2.ERROR_CODE_WORKER_LOST,
                    message="the worker shut down before the request ended",
                    retryable=True,
                )
            )
        )
    elif outcome is AbortReason.ENGINE_STALLED:
        events.append(
            events_pb2.StreamEvent(
                error=events_pb2.StreamError(
                    code=events_pb2.ERROR_CODE_WORKER_LOST,
                    message="the worker's engine stopped producing tokens",
                    retryable=True,
                )
            )
        )
    elif outcome is AbortReason.ENGINE_ERROR:
        events.append(
            events_pb2.StreamEvent(
                error=events_pb2.StreamError(
                    code=events_pb2.ERROR_CODE_INTERNAL,
                    message="the inference engine failed",
                    retryable=True,
                )
            )
        )
    finish = events_pb2.GenerationFinish(
        usage=events_pb2.Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=progress.completion_tokens,
            total_tokens=prepared.prompt_tokens + progress.completion_tokens,
        )
    )
    received_ns = task.received.ToNanoseconds() if task.HasField("received") else 0
    if received_ns:
        now_ns = time.time_ns()
        finish.timings.queued.FromNanoseconds(max(int(accepted_wall * 1e9) - received_ns, 0))
        if progress.first_token_wall is not None:
            finish.timings.time_to_first_token.FromNanoseconds(
                max(int(progress.first_token_wall * 1e9) - received_ns, 0)
            )
        finish.timings.total.FromNanoseconds(max(now_ns - received_ns, 0))
    events.append(events_pb2.StreamEvent(generation_finish=finish))
    return events
