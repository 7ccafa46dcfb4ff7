"""The broker under `llm-mesh up`, against the machine's RabbitMQ: checked, explained, cleaned.

Starting a stopped broker is not tested here: it would be the machine's own node (tests never
stop it). The path is the one `.ci/run` takes (`rabbitmq-server -detached`, `await_startup`).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

import aio_pika
import pytest

from meshctl._local_broker import BrokerUnavailable, delete_stack, ensure_broker
from plumbing.topology import Topology

pytestmark = pytest.mark.asyncio(loop_scope="session")

AMQP_URL = os.environ.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound without listening, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_running_broker_is_used_as_it_is() -> None:
    assert await ensure_broker(AMQP_URL) is False


async def test_wrong_credentials_are_explained() -> None:
    url = AMQP_URL.replace("guest:guest@", "guest:wrong-password@", 1)
    assert url != AMQP_URL
    with pytest.raises(BrokerUnavailable, match="check the user and password"):
        await ensure_broker(url, connect_timeout=5)


async def test_a_missing_local_broker_is_explained_with_the_install_command(
    tmp_path: Path,
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    with pytest.raises(BrokerUnavailable) as refused:
        # No RabbitMQ scripts on this search path: as on a machine without RabbitMQ.
        await ensure_broker(url, search_path=str(tmp_path))
    message = str(refused.value)
    assert "rabbitmq-server` is not installed" in message
    assert "apt-get install -y rabbitmq-server" in message
    assert "LLM_MESH_AMQP_URL" in message


async def test_a_remote_broker_is_never_started(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation (RFC 5737): nothing answers there.
    with pytest.raises(BrokerUnavailable, match=re.escape("does not answer at 192.0.2.1:5672")):
        await ensure_broker(
            "amqp://guest:guest@192.0.2.1:5672/", connect_timeout=0.5, search_path=str(tmp_path)
        )


async def test_delete_stack_removes_the_prefix_queues_and_exchanges() -> None:
    topology = Topology(f"test-{uuid.uuid4().hex[:8]}.")
    other = Topology(f"test-{uuid.uuid4().hex[:8]}.")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for stack in (topology, other):
            queue = await stack.declare_task_queue(channel, "smollm2-135m")
            await stack.declare_control_exchange(channel)
            await channel.default_exchange.publish(
                aio_pika.Message(b"a task left behind"), routing_key=queue.name
            )
        await delete_stack(AMQP_URL, topology, ["smollm2-135m"])
        for name in (topology.task_queue("smollm2-135m"), topology.dead_letter_queue):
            probe = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await probe.declare_queue(name, passive=True)
        for name in (
            topology.tasks_exchange,
            topology.dead_letter_exchange,
            topology.control_exchange,
        ):
            probe = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await probe.declare_exchange(name, passive=True)
        # Another prefix's objects are untouched.
        probe = await connection.channel()
        kept = await probe.declare_queue(other.task_queue("smollm2-135m"), passive=True)
        assert kept.declaration_result.message_count == 1
    await delete_stack(AMQP_URL, other, ["smollm2-135m"])
