"""What a test's broker prefix holds on the machine's RabbitMQ, and deleting all of it.

Tests under `tests/integration` import it (this directory is on `sys.path`: it holds a
`conftest.py`). `rabbitmqctl` lists the names, so whatever a test declared under its prefix —
exclusive queues of live connections included — is seen and deleted.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq

from plumbing.topology import Topology

__all__ = ["AMQP_URL", "BrokerInspector"]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Listings `delete_everything` makes at most (each one a `rabbitmqctl` run of about 1 s).
_DELETE_ROUNDS = 5


class BrokerInspector:
    """Lists and deletes what lives under a prefix on the machine's RabbitMQ."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def queue_names(self) -> set[str]:
        return await self._list("list_queues")

    async def exchange_names(self) -> set[str]:
        return await self._list("list_exchanges")

    async def depth(self, queue: str) -> int:
        """Ready messages in `queue` (a passive declare)."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            assert declared.declaration_result.message_count is not None
            return declared.declaration_result.message_count

    async def declare_model_queue(self, model: str) -> None:
        """Declares a model's task queue, as a worker that has since gone would have."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await Topology(self.prefix).declare_task_queue(await connection.channel(), model)

    async def names(self) -> tuple[set[str], set[str]]:
        """The queues and the exchanges under the prefix."""
        queues, exchanges = await asyncio.gather(self.queue_names(), self.exchange_names())
        return queues, exchanges

    async def delete_everything(self, *, within: float = 30.0) -> None:
        """Deletes every queue and exchange under the prefix, within `within` seconds.

        An exclusive queue whose owner's connection is still closing cannot be deleted from
        another connection (RESOURCE_LOCKED); it vanishes with that connection. So each name
        is deleted on a channel of its own (a refusal closes only that channel) and the names
        are listed again (each listing is a `rabbitmqctl` run) until none is left.
        """
        async with asyncio.timeout(within):
            # Bounded in listings too: a queue whose owner stays connected (a leaked service)
            # is then reported by the caller's check instead of being retried until cancelled.
            for _ in range(_DELETE_ROUNDS):
                queues, exchanges = await self.names()
                if not queues and not exchanges:
                    return
                connection = await aio_pika.connect(AMQP_URL)
                async with connection:
                    for name in queues:
                        await _delete(connection, name, queue=True)
                    for name in exchanges:
                        await _delete(connection, name, queue=False)

    async def _list(self, command: str) -> set[str]:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            command,
            "name",
            "--quiet",
            "--no-table-headers",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        names = {line.strip() for line in stdout.decode().splitlines()}
        return {name for name in names if name.startswith(self.prefix)}


async def _delete(connection: aio_pika.abc.AbstractConnection, name: str, *, queue: bool) -> None:
    """Deletes one queue or exchange on its own channel; a locked or vanished one is left to
    the next listing."""
    channel = await connection.channel()
    try:
        if queue:
            await channel.queue_delete(name, if_unused=False, if_empty=False)
        else:
            await channel.exchange_delete(name)
    except (aiormq.exceptions.ChannelLockedResource, aio_pika.exceptions.ChannelNotFoundEntity):
        return  # the broker closed the channel with the refusal
    await channel.close()
