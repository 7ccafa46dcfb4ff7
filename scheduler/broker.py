"""The replica's RabbitMQ side (DESIGN.md, "Broker topology").

One robust connection with three channels:

- tasks: publisher confirms and `on_return_raises`, so a `mandatory` task for a model whose
  queue no worker ever declared comes back as `PublishError` (the caller's NOT_FOUND);
- control: cancels out on `llm.control`, and this replica's own exclusive queue bound to it,
  through which every worker's heartbeats come in (handed to a callback: heartbeats need no
  buffer of their own);
- replies: this replica's exclusive, auto-deleted reply queue (every task's `reply_to`). It
  vanishes with the connection, so workers streaming to a dead replica get their chunks back
  unroutable and stop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from google.protobuf.message import DecodeError
from llmmesh.v1 import broker_pb2
from opentelemetry import trace

from plumbing.settings import MeshSettings
from plumbing.telemetry import extract_headers, inject_headers, tracer, tracing_enabled
from plumbing.topology import Topology
from scheduler.errors import ModelNotFound, WorkerUnavailable

__all__ = ["PROTOBUF_CONTENT_TYPE", "QueueState", "TaskBroker"]

logger = logging.getLogger(__name__)

PROTOBUF_CONTENT_TYPE: Final = "application/x-protobuf"
#: Heartbeats older than this are useless; don't let a stalled replica's queue grow.
_CONTROL_MESSAGE_TTL_MS: Final = 30_000
_BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError)


@dataclass(frozen=True)
class QueueState:
    """What the broker says of a model's task queue: ready messages, active consumers and,
    when known (the management API; a passive declare does not tell), the messages delivered
    and not yet acknowledged."""

    messages: int
    consumers: int
    unacknowledged: int | None = None


class TaskBroker:
    """Publishes tasks and cancels; yields this replica's replies and control messages.

    Call `connect` first and `close` last.
    """

    def __init__(self, mesh: MeshSettings, replica_id: str) -> None:
        self._url = mesh.amqp_url
        self._replica_id = replica_id
        self.topology = Topology(mesh.broker_prefix)
        #: This replica's reply queue: every task's `reply_to`.
        self.reply_queue_name = f"{mesh.broker_prefix}llm.replies.{replica_id}"
        #: This replica's queue on `llm.control`.
        self.control_queue_name = f"{mesh.broker_prefix}llm.control.scheduler.{replica_id}"
        self._connection: AbstractRobustConnection | None = None
        self._task_channel: AbstractChannel | None = None
        self._tasks: AbstractExchange | None = None
        self._control: AbstractExchange | None = None
        self._reply_queue: AbstractQueue | None = None
        self._control_queue: AbstractQueue | None = None
        self._lost_callbacks: list[Callable[[], None]] = []
        self._lost = False
        #: The models whose tasks this replica published (their queues exist).
        self.models_published: set[str] = set()

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (a robust connection that is reconnecting is not)."""
        return self._connection is not None and self._connection.connected.is_set()

    def on_connection_lost(self, callback: Callable[[], None]) -> None:
        """Calls `callback` whenever the connection drops (`connect_robust` then reconnects
        and re-declares everything by itself; the chunks in flight are lost)."""
        self._lost_callbacks.append(callback)

    async def connect(self) -> None:
        """Connects, declares the exchanges and this replica's own queues."""
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": f"llm-mesh scheduler {self._replica_id}"},
        )
        self._connection = connection
        connection.close_callbacks.add(self._connection_lost)
        connection.reconnect_callbacks.add(self._reconnected)
        self._task_channel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._tasks = await self.topology.declare_tasks_exchange(self._task_channel)
        control_channel = await connection.channel(publisher_confirms=False)
        self._control = await self.topology.declare_control_exchange(control_channel)
        self._control_queue = await control_channel.declare_queue(
            self.control_queue_name,
            exclusive=True,
            auto_delete=True,
            arguments={"x-message-ttl": _CONTROL_MESSAGE_TTL_MS},
        )
        await self._control_queue.bind(self._control)
        reply_channel = await connection.channel(publisher_confirms=False)
        self._reply_queue = await reply_channel.declare_queue(
            self.reply_queue_name, exclusive=True, auto_delete=True
        )

    async def close(self) -> None:
        """Closes the connection (the broker deletes this replica's queues)."""
        if self._connection is not None:
            self._connection.close_callbacks.discard(self._connection_lost)
            await self._connection.close()

    def _connection_lost(self, _connection: object, reason: BaseException | None) -> None:
        # Called again on every failed reconnection attempt: report the first.
        if self._lost:
            return
        self._lost = True
        logger.warning("broker connection lost (%r); reconnecting", reason)
        for callback in self._lost_callbacks:
            callback()

    def _reconnected(self, _connection: object) -> None:
        self._lost = False
        logger.info("broker connection restored")

    async def publish_task(
        self, task: broker_pb2.Task, *, model: str, priority: int, expiration: float
    ) -> None:
        """Publishes a task persistently and returns when the broker confirmed it.

        With tracing on, a producer span covers the publish and its context travels in the
        message's headers (W3C `traceparent`), where the worker picks it up.

        Raises `ModelNotFound` when no queue is bound for `model`, `WorkerUnavailable` when
        the broker refuses the task or cannot be reached.
        """
        assert self._tasks is not None, "connect() first"
        if not self.connected:
            raise WorkerUnavailable("the broker is unreachable")
        with self._publish_span(model, task.request_id):
            message = aio_pika.Message(
                task.SerializeToString(),
                headers=inject_headers({}),
                content_type=PROTOBUF_CONTENT_TYPE,
                type=broker_pb2.Task.DESCRIPTOR.full_name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=priority,
                expiration=expiration,
                correlation_id=task.request_id,
                reply_to=self.reply_queue_name,
            )
            try:
                await self._tasks.publish(message, routing_key=model, mandatory=True)
            except PublishError as exc:
                raise ModelNotFound(model) from exc
            except DeliveryError as exc:
                raise WorkerUnavailable("the broker refused the task") from exc
            except _BROKER_ERRORS as exc:
                raise WorkerUnavailable("the broker is unreachable") from exc
        self.models_published.add(model)

    def _publish_span(self, model: str, request_id: str) -> AbstractContextManager[object]:
        """The producer span of a task (nothing while tracing is off)."""
        if not tracing_enabled():
            return contextlib.nullcontext()
        assert self._tasks is not None
        return tracer().start_as_current_span(
            f"{self._tasks.name} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": self._tasks.name,
                "messaging.rabbitmq.destination.routing_key": model,
                "messaging.message.id": request_id,
            },
        )

    async def publish_cancel(self, request_id: str, reason: str) -> None:
        """Tells every worker to stop `request_id`. Never raises: a lost cancel is logged."""
        assert self._control is not None, "connect() first"
        if not self.connected:
            logger.warning("cancel of request %s (%s) not sent: no broker", request_id, reason)
            return
        cancel = broker_pb2.ControlMessage(
            cancel=broker_pb2.Cancel(request_id=request_id, reason=reason)
        )
        message = aio_pika.Message(
            cancel.SerializeToString(),
            content_type=PROTOBUF_CONTENT_TYPE,
            type=broker_pb2.ControlMessage.DESCRIPTOR.full_name,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        try:
            # Not mandatory: no worker listening is fine.
            await self._control.publish(message, routing_key="", mandatory=False)
        except _BROKER_ERRORS:
            logger.warning("cancel of request %s (%s) not sent", request_id, reason, exc_info=True)

    async def queue_states(self, models: Iterable[str]) -> dict[str, QueueState | None]:
        """Each model's task queue as the broker sees it now (passive declares); None for a
        queue that does not exist.

        Raises `WorkerUnavailable` when the broker cannot be reached.
        """
        assert self._connection is not None, "connect() first"
        if not self.connected:
            raise WorkerUnavailable("the broker is unreachable")
        states: dict[str, QueueState | None] = {}
        channel: AbstractChannel | None = None
        try:
            for model in models:
                if channel is None or channel.is_closed:
                    # A failed passive declare closes its channel: the next one needs another.
                    channel = await self._connection.channel(publisher_confirms=False)
                try:
                    declared = await channel.declare_queue(
                        self.topology.task_queue(model), passive=True
                    )
                except ChannelNotFoundEntity:
                    states[model] = None
                    continue
                result = declared.declaration_result
                states[model] = QueueState(
                    messages=result.message_count or 0, consumers=result.consumer_count or 0
                )
        except (*_BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: see `queue_exists`
            raise WorkerUnavailable("the broker is unreachable") from exc
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        return states

    async def queue_exists(self, model: str) -> bool:
        """Whether some worker declared `model`'s task queue (a passive declare).

        Raises `WorkerUnavailable` when the broker cannot be reached.
        """
        assert self._connection is not None, "connect() first"
        if not self.connected:
            raise WorkerUnavailable("the broker is unreachable")
        try:
            # A failed passive declare closes its channel: use a throw-away one.
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(self.topology.task_queue(model), passive=True)
            except ChannelNotFoundEntity:
                return False
            except ValueError:
                # pamqp refuses to send a name that is no valid queue name (characters, length):
                # no worker can have declared it.
                return False
            finally:
                if not channel.is_closed:
                    await channel.close()
        except (*_BROKER_ERRORS, RuntimeError) as exc:
            # aio-pika's RuntimeError("Connection was not opened"): the connection dropped
            # after the check above.
            raise WorkerUnavailable("the broker is unreachable") from exc
        return True

    async def replies(
        self,
    ) -> AsyncIterator[tuple[broker_pb2.TaskChunk, trace.SpanContext | None]]:
        """The chunks arriving on this replica's reply queue (undecodable ones are logged),
        each with the context of the worker's engine span that a chunk 0's headers carry
        (None for later chunks, and while tracing is off)."""
        assert self._reply_queue is not None, "connect() first"
        async with self._reply_queue.iterator(no_ack=True) as messages:
            async for message in messages:
                try:
                    chunk = broker_pb2.TaskChunk.FromString(message.body)
                except DecodeError:
                    logger.warning("undecodable reply chunk dropped (%d bytes)", len(message.body))
                    continue
                worker_span = None
                if chunk.sequence_number == 0 and tracing_enabled():
                    context = extract_headers(message.headers)
                    worker_span = trace.get_current_span(context).get_span_context()
                yield chunk, worker_span

    async def listen_to_heartbeats(
        self, on_heartbeat: Callable[[broker_pb2.Heartbeat], None]
    ) -> None:
        """Calls `on_heartbeat` for every heartbeat on `llm.control` from now on."""
        assert self._control_queue is not None, "connect() first"

        async def deliver(message: AbstractIncomingMessage) -> None:
            try:
                control = broker_pb2.ControlMessage.FromString(message.body)
            except DecodeError:
                logger.warning("undecodable control message dropped")
                return
            if control.HasField("heartbeat"):
                on_heartbeat(control.heartbeat)

        await self._control_queue.consume(deliver, no_ack=True)
