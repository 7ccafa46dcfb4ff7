"""The RabbitMQ broker under `llm-mesh up`: checked, started when installed, and cleaned up.

`ensure_broker` makes sure the broker at `LLM_MESH_AMQP_URL` answers. A local broker that is
installed but stopped is started the way MACHINE-NOTES.md describes (`rabbitmq-server
-detached`, then `rabbitmqctl await_startup`) and left running afterwards, like any system
service; a missing one is reported with the command that installs it.

`delete_stack` removes the durable queues and exchanges one stack (one broker prefix) declared.
The exclusive queues (scheduler replies, control subscriptions) vanish with their connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

import aio_pika

from plumbing.topology import Topology

__all__ = ["BrokerUnavailable", "broker_address", "delete_stack", "ensure_broker", "scripts_path"]

logger = logging.getLogger(__name__)

_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
#: Where RabbitMQ's scripts live when they are not on a normal user's PATH (Debian, Homebrew).
_SBIN_DIRS: Final = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
_INSTALL_HINT: Final = """\
RabbitMQ is not running at {address} and `rabbitmq-server` is not installed.
Install it, then run `llm-mesh up` again (it starts the broker when it is stopped):
  Debian/Ubuntu:  sudo apt-get install -y rabbitmq-server
  Fedora/RHEL:    sudo dnf install -y rabbitmq-server
  macOS:          brew install rabbitmq
or point LLM_MESH_AMQP_URL at a running broker (amqp://user:password@host:5672/)."""


class BrokerUnavailable(Exception):
    """No broker answers at the URL and none could be started; the message says what to do."""


def broker_address(amqp_url: str) -> tuple[str, int]:
    """(host, port) of an AMQP URL; the port defaults to 5672 (`amqp`) or 5671 (`amqps`)."""
    parts = urlsplit(amqp_url)
    if parts.scheme not in ("amqp", "amqps"):
        raise BrokerUnavailable(f"LLM_MESH_AMQP_URL must be an amqp:// or amqps:// URL: {amqp_url}")
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default_port


async def _listening(host: str, port: int, connect_timeout: float) -> bool:
    try:
        async with asyncio.timeout(connect_timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


def scripts_path(environment: Mapping[str, str]) -> str:
    """Where RabbitMQ's scripts are looked for: PATH, then the usual sbin directories."""
    return os.pathsep.join([environment.get("PATH", os.defpath), *_SBIN_DIRS])


async def _run(command: list[str], environment: Mapping[str, str], run_timeout: float) -> None:
    """Runs a RabbitMQ script to completion; `BrokerUnavailable` with its output if it fails."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(environment),
    )
    try:
        async with asyncio.timeout(run_timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BrokerUnavailable(
            f"`{' '.join(command)}` did not finish in {run_timeout:g} s"
        ) from None
    if process.returncode != 0:
        raise BrokerUnavailable(
            f"`{' '.join(command)}` failed (exit status {process.returncode}):\n"
            f"{output.decode(errors='replace').strip()}"
        )


async def ensure_broker(
    amqp_url: str,
    *,
    start_timeout: float = 60.0,
    connect_timeout: float = 5.0,
    environment: Mapping[str, str] | None = None,
    search_path: str | None = None,
) -> bool:
    """Makes sure a broker answers at `amqp_url`; returns whether this call started it.

    A broker that is not listening is started only when it is local and installed; then
    `rabbitmqctl await_startup` bounds the wait by `start_timeout`. Finally an AMQP login
    proves the URL's credentials. Raises `BrokerUnavailable` with a message for the user.
    `environment` is what the RabbitMQ scripts see (default: this process's); they are looked
    for in `search_path` (default: `scripts_path(environment)`).
    """
    env = dict(os.environ if environment is None else environment)
    host, port = broker_address(amqp_url)
    address = f"{host}:{port}"
    started = False
    if not await _listening(host, port, connect_timeout):
        if host not in _LOOPBACK:
            raise BrokerUnavailable(
                f"RabbitMQ does not answer at {address} (LLM_MESH_AMQP_URL); start it there, "
                "or unset LLM_MESH_AMQP_URL to use a local broker."
            )
        path = scripts_path(env) if search_path is None else search_path
        server = shutil.which("rabbitmq-server", path=path)
        control = shutil.which("rabbitmqctl", path=path)
        if server is None or control is None:
            raise BrokerUnavailable(_INSTALL_HINT.format(address=address))
        logger.info("RabbitMQ is not running at %s; starting it (%s -detached)", address, server)
        await _run([server, "-detached"], env, start_timeout)
        await _run(
            [control, "await_startup", "--timeout", str(int(start_timeout))], env, start_timeout + 5
        )
        if not await _listening(host, port, connect_timeout):
            raise BrokerUnavailable(
                f"RabbitMQ started but does not listen at {address}: check the listeners "
                "in its rabbitmq.conf, or set LLM_MESH_AMQP_URL to the address it uses."
            )
        logger.info("RabbitMQ started; it keeps running after llm-mesh up stops (%s stop)", control)
        started = True
    try:
        connection = await aio_pika.connect(amqp_url, timeout=connect_timeout)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(
            f"RabbitMQ at {address} refused the connection ({exc!r}): check the user and "
            "password in LLM_MESH_AMQP_URL."
        ) from exc
    await connection.close()
    return started


async def delete_stack(
    amqp_url: str, topology: Topology, models: Iterable[str], *, delete_timeout: float = 10.0
) -> None:
    """Deletes the durable queues (with their messages) and exchanges of one broker prefix."""
    async with asyncio.timeout(delete_timeout):
        connection = await aio_pika.connect(amqp_url, timeout=delete_timeout)
        async with connection:
            channel = await connection.channel()
            queues = [*(topology.task_queue(model) for model in models), topology.dead_letter_queue]
            for queue in queues:
                # The defaults (if_unused=True) refuse queues in use and close the connection
                # on quorum queues (MACHINE-NOTES.md): delete unconditionally.
                await channel.queue_delete(queue, if_unused=False, if_empty=False)
            for exchange in (
                topology.tasks_exchange,
                topology.dead_letter_exchange,
                topology.control_exchange,
            ):
                await channel.exchange_delete(exchange, if_unused=False)
