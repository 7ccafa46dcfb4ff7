"""A RabbitMQ node of the test's own, to stop and start during traffic (DESIGN.md, "Tests on a
2-core machine": tests that restart the broker never touch the machine's).

The node gets its own AMQP and distribution ports, node name (`llmmesh-test-<hex>@localhost`),
data and log directories, config file (`rabbitmq.conf`: loopback listener only), an empty
enabled-plugins file (no management or Prometheus listener) and an Erlang cookie in its own
`HOME`. It runs `/usr/lib/rabbitmq/bin/rabbitmq-server` directly (Debian's `/usr/sbin` wrapper
switches to the `rabbitmq` user and the system node's directories) as the leader of its own
process group. It registers with the machine's `epmd`, as every Erlang node on the host does.

`stop` is a graceful shutdown (SIGTERM: clients get CONNECTION_FORCED, durable queues and
persistent messages stay on disk); `start` again brings the same node back on the same port
with its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
from pathlib import Path
from typing import Final

import aio_pika
import psutil

__all__ = ["PrivateBroker", "free_port"]

_SERVER: Final = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_CTL: Final = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
#: Bounds of a start (a fresh node boots in ~4 s here, a restart in ~8 s) and a stop.
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 20.0
_PROBE_INTERVAL: Final = 0.1


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateBroker:
    """One private RabbitMQ node under `root`; `start`, `stop`, `start` again, `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"llmmesh-test-{secrets.token_hex(4)}@localhost"
        self.log = root / "server.log"
        self._process: asyncio.subprocess.Process | None = None
        home = root / "home"
        for directory in (home, root / "mnesia", root / "logs"):
            directory.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        self._environment = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "logs"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            # Keep the distribution listener on loopback, like the machine's node.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @staticmethod
    def available() -> bool:
        """Whether RabbitMQ's scripts are installed where this module runs them."""
        return _SERVER.exists() and _CTL.exists() and shutil.which("erl") is not None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Boots the node; returns once an AMQP login succeeds (within `START_TIMEOUT`)."""
        assert not self.running, "already running"
        with self.log.open("ab") as output:
            self._process = await asyncio.create_subprocess_exec(
                str(_SERVER),
                env=self._environment,
                cwd=self.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        process = self._process
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not await self._accepts_logins():
                    if process.returncode is not None:
                        raise RuntimeError(f"the private broker exited; see {self.log}")
                    await asyncio.sleep(_PROBE_INTERVAL)
        except BaseException:
            await self._terminate(signal.SIGKILL)
            raise

    async def stop(self) -> None:
        """Shuts the node down gracefully (SIGKILL after `STOP_TIMEOUT`)."""
        await self._terminate(signal.SIGTERM)

    async def close(self) -> None:
        """Stops the node if it runs; asserts nothing of it is left."""
        await self._terminate(signal.SIGTERM)

    async def ctl(self, *args: str) -> str:
        """`rabbitmqctl -n NODE ARGS`; returns its output (raises when it fails)."""
        process = await asyncio.create_subprocess_exec(
            str(_CTL),
            "-n",
            self.node,
            *args,
            env=self._environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {stderr.decode()}")
        return stdout.decode()

    async def queue_names(self) -> set[str]:
        output = await self.ctl("list_queues", "name", "--quiet", "--no-table-headers")
        return {line.strip() for line in output.splitlines() if line.strip()}

    async def _accepts_logins(self) -> bool:
        try:  # A TCP probe first: a failed AMQP connect logs an error each time.
            _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        try:
            connection = await aio_pika.connect(self.amqp_url, timeout=2)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
            return False
        await connection.close()
        return True

    async def _terminate(self, signum: int) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        # beam.smp is the script's child: make sure the whole group is gone.
        async with asyncio.timeout(STOP_TIMEOUT):
            while _group_alive(process.pid):  # noqa: ASYNC110 - other processes
                await asyncio.sleep(_PROBE_INTERVAL)
        self._process = None


def _group_alive(group: int) -> bool:
    """Whether a non-zombie member of the process group is left (zombies are gone already)."""
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False
