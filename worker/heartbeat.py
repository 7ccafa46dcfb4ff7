"""The worker's side of `llm.control`: heartbeats out, cancels in (DESIGN.md).

Every `interval` the worker announces itself (id, model, priority, capacity, readiness, load);
schedulers keep a registry with a time to live. A worker that stops says goodbye with an
interval of 0, so schedulers forget it at once. The worker's own exclusive queue on the
fanout exchange brings in every `Cancel` (and every other worker's heartbeat, ignored).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from google.protobuf.message import DecodeError
from llmmesh.v1 import broker_pb2

from plumbing.topology import Topology

__all__ = ["ControlLink"]

logger = logging.getLogger(__name__)

_CONTENT_TYPE: Final = "application/x-protobuf"
_CONTROL_TYPE: Final = broker_pb2.ControlMessage.DESCRIPTOR.full_name
#: Control messages older than this are useless; don't let a stalled worker's queue grow.
_CONTROL_MESSAGE_TTL_MS: Final = 30_000


class ControlLink:
    """Publishes heartbeats and hands on the cancels addressed to anyone.

    `describe` builds the current heartbeat (without `sent` and `interval_seconds`).
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: Topology,
        *,
        worker_id: str,
        interval: float,
        describe: Callable[[], broker_pb2.Heartbeat],
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._interval = interval
        self._describe = describe
        #: This worker's queue on `llm.control`.
        self.queue_name = f"{topology.prefix}llm.control.worker.{worker_id}"
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None

    async def open(self) -> None:
        """Declares the control exchange and this worker's queue on it."""
        channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await self._topology.declare_control_exchange(channel)
        self._queue = await channel.declare_queue(
            self.queue_name,
            exclusive=True,
            auto_delete=True,
            arguments={"x-message-ttl": _CONTROL_MESSAGE_TTL_MS},
        )
        await self._queue.bind(self._exchange)

    async def announce(self, *, goodbye: bool = False) -> None:
        """Publishes one heartbeat now; `goodbye` tells schedulers to forget this worker."""
        assert self._exchange is not None, "open() first"
        heartbeat = self._describe()
        heartbeat.interval_seconds = 0.0 if goodbye else self._interval
        if goodbye:
            heartbeat.ready = False
        heartbeat.sent.GetCurrentTime()
        message = aio_pika.Message(
            broker_pb2.ControlMessage(heartbeat=heartbeat).SerializeToString(),
            content_type=_CONTENT_TYPE,
            type=_CONTROL_TYPE,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        try:
            # Not mandatory: nobody listening (no scheduler yet) is fine.
            await self._exchange.publish(message, routing_key="", mandatory=False)
        except (AMQPError, ChannelInvalidStateError, ConnectionError):
            logger.warning("heartbeat not sent", exc_info=True)

    async def run_heartbeats(self) -> None:
        """Announces every `interval` seconds until cancelled."""
        while True:
            await self.announce()
            await asyncio.sleep(self._interval)

    async def listen(self, on_cancel: Callable[[str], None]) -> None:
        """Calls `on_cancel(request_id)` for every cancel published on `llm.control`."""
        assert self._queue is not None, "open() first"

        async def deliver(message: AbstractIncomingMessage) -> None:
            try:
                control = broker_pb2.ControlMessage.FromString(message.body)
            except DecodeError:
                logger.warning("undecodable control message dropped")
                return
            if control.HasField("cancel"):
                on_cancel(control.cancel.request_id)

        await self._queue.consume(deliver, no_ack=True)
