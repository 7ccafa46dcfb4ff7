"""RabbitMQ names and declarations shared by schedulers and workers (DESIGN.md, "Broker topology").

Every name carries the `LLM_MESH_BROKER_PREFIX` so that test runs, `llm-mesh up` and other
stacks on one broker never share queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

__all__ = [
    "DEAD_LETTER_MAX_LENGTH",
    "DEAD_LETTER_TTL_MS",
    "MAX_PRIORITY",
    "Topology",
]

#: `x-max-priority` of every task queue; interactive and batch map into 0..MAX_PRIORITY.
MAX_PRIORITY: Final = 9
#: How long a dead-lettered task stays visible in `llm.dead`, and how many are kept.
DEAD_LETTER_TTL_MS: Final = 24 * 3600 * 1000
DEAD_LETTER_MAX_LENGTH: Final = 10_000


@dataclass(frozen=True)
class Topology:
    """The broker names of one stack, derived from its prefix."""

    prefix: str = ""

    @property
    def tasks_exchange(self) -> str:
        """Direct exchange; routing key = model name."""
        return f"{self.prefix}llm.tasks"

    def task_queue(self, model: str) -> str:
        """The durable classic priority queue of one model."""
        return f"{self.prefix}llm.tasks.{model}"

    @property
    def dead_letter_exchange(self) -> str:
        """Where rejected and expired tasks go."""
        return f"{self.prefix}llm.dlx"

    @property
    def dead_letter_queue(self) -> str:
        """The bounded queue that keeps dead tasks visible for a while."""
        return f"{self.prefix}llm.dead"

    @property
    def control_exchange(self) -> str:
        """Fanout exchange for cancels and heartbeats."""
        return f"{self.prefix}llm.control"

    async def declare_tasks_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        """Declares (idempotently) the tasks exchange."""
        return await channel.declare_exchange(
            self.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )

    async def declare_control_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        """Declares (idempotently) the control fanout exchange."""
        return await channel.declare_exchange(
            self.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )

    async def declare_dead_letters(self, channel: AbstractChannel) -> AbstractExchange:
        """Declares the dead-letter exchange and its bounded queue."""
        exchange = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(
            self.dead_letter_queue,
            durable=True,
            arguments={"x-message-ttl": DEAD_LETTER_TTL_MS, "x-max-length": DEAD_LETTER_MAX_LENGTH},
        )
        await queue.bind(exchange)
        return exchange

    async def declare_task_queue(self, channel: AbstractChannel, model: str) -> AbstractQueue:
        """Declares a model's task queue, bound to the tasks exchange by the model name.

        Workers call this for the models they serve; a model whose queue was never declared
        makes mandatory publishes come back unroutable (the scheduler's NOT_FOUND).
        """
        exchange = await self.declare_tasks_exchange(channel)
        await self.declare_dead_letters(channel)
        queue = await channel.declare_queue(
            self.task_queue(model),
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-max-priority": MAX_PRIORITY,
                "x-dead-letter-exchange": self.dead_letter_exchange,
            },
        )
        await queue.bind(exchange, routing_key=model)
        return queue
