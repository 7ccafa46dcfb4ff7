"""The meshes the fault tests break: `llm-mesh` scheduler, worker and gateway subprocesses.

Every service is a real `llm-mesh` process, leader of its own process group (so a test can
SIGTERM, SIGKILL or measure it like an operator would), with its stdout and stderr captured
in one log file per process (the security tests grep them). Workers run the synthetic engine.
A mesh owns a data directory (the SQLite keys database, with the gateway's service key), a
routing file naming the models its tests use, and one broker prefix; `aclose` stops every
process (asserting none is left behind) and deletes what the prefix declared on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aio_pika
import httpx
import psutil
from llmmesh.v1 import chat_pb2, events_pb2
from prometheus_client.parser import text_string_to_metric_families

from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from plumbing.topology import Topology

__all__ = [
    "MACHINE_AMQP_URL",
    "FaultMesh",
    "Service",
    "chat",
    "kinds",
    "sample_sum",
    "wait_until",
]

MACHINE_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
LLM_MESH: Final = Path(sys.executable).with_name("llm-mesh")
#: Bound of a process start (imports, broker connection, first heartbeat seen).
START_TIMEOUT: Final = 30.0
#: Bound of waits on another process's state (metrics, readiness).
WAIT_TIMEOUT: Final = 15.0
_POLL_INTERVAL: Final = 0.05


def chat(
    prompt: str = "hello mesh",
    *,
    model: str,
    priority: int = chat_pb2.PRIORITY_INTERACTIVE,
    **parameters: Any,
) -> chat_pb2.ChatRequest:
    """A one-message request."""
    return chat_pb2.ChatRequest(
        model=model,
        priority=priority,  # type: ignore[arg-type]
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=prompt)])
        ],
        generation_parameters=chat_pb2.GenerationParameters(**parameters),
    )


def kinds(events: Sequence[events_pb2.StreamEvent]) -> list[str]:
    """The event kinds, in order."""
    return [str(event.WhichOneof("event")) for event in events]


async def wait_until(predicate: Callable[[], Any], *, within: float = WAIT_TIMEOUT) -> None:
    """Polls another process's state until `predicate` (sync or async) holds, `within` seconds.

    Another process's metrics or readiness offer no event to await: this polls.
    """
    async with asyncio.timeout(within):
        while True:
            value = predicate()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return
            await asyncio.sleep(_POLL_INTERVAL)


@dataclass
class Service:
    """One `llm-mesh` subprocess, leader of its process group."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    ready_line: str = ""
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def fields(self) -> dict[str, str]:
        """The `key=value` pairs of the ready line."""
        return dict(re.findall(r"(\w+)=(\S+)", self.ready_line))

    @property
    def http_url(self) -> str:
        """The base URL of the process's HTTP listener (probes, or the gateway itself)."""
        if "http" in self.fields:
            value = self.fields["http"]
            return value if value.startswith("http") else f"http://{value}"
        return self.ready_line.split("ready:", 1)[1].strip()

    @property
    def grpc_target(self) -> str:
        return self.fields["grpc"]

    async def metrics(self) -> dict[str, float]:
        """Every sample of `/metrics`: `name{label="value",...}` → value."""
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.http_url}/metrics", timeout=5)
        response.raise_for_status()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(
                    f'{key}="{value}"' for key, value in sorted(sample.labels.items())
                )
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def metric(self, name: str) -> float:
        """The sum of the samples `name` selects (see `sample_sum`)."""
        return sample_sum(await self.metrics(), name)

    async def wait_metric(
        self, name: str, predicate: Callable[[float], bool], *, within: float = WAIT_TIMEOUT
    ) -> float:
        """Polls one sample until `predicate` holds; returns its value."""
        value = 0.0

        async def holds() -> bool:
            nonlocal value
            value = await self.metric(name)
            return predicate(value)

        await wait_until(holds, within=within)
        return value

    def rss(self) -> int:
        """Resident memory of the process group's live members, in bytes."""
        total = 0
        for member in _members(self.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        return total

    def listening(self) -> list[tuple[str, int]]:
        """The (address, port) of every socket the process group listens on."""
        bound = []
        for member in _members(self.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                for connection in member.net_connections(kind="inet"):
                    if connection.status == psutil.CONN_LISTEN:
                        bound.append((connection.laddr.ip, connection.laddr.port))
        return bound

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crash, no goodbye, no acks."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    async def wait(self, within: float) -> int:
        """Waits up to `within` seconds for the process to exit; returns its exit status."""
        async with asyncio.timeout(within):
            return await self.process.wait()

    async def stop(self, *, grace: float = 15.0) -> int:
        """SIGTERM (SIGKILL after `grace` seconds); asserts no process of the group is left."""
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await self.wait(grace)
            except TimeoutError:
                self.kill()
                await self.process.wait()
        await self._finish()
        assert self.process.returncode is not None
        return self.process.returncode

    async def _finish(self) -> None:
        async with asyncio.timeout(10):
            while _members(self.pid):  # noqa: ASYNC110 - other processes
                await asyncio.sleep(_POLL_INTERVAL)
        if self._drain is not None:
            await asyncio.wait([self._drain])


def sample_sum(samples: Mapping[str, float], selector: str) -> float:
    """The sum of the samples a selector names (0 when none): `name` alone sums every label
    set, `name{label="value",...}` those that have these labels (and maybe others)."""
    base, _, wanted_labels = selector.partition("{")
    wanted = set(_LABEL.findall(wanted_labels))
    total = 0.0
    for sample, value in samples.items():
        name, _, labels = sample.partition("{")
        if name == base and wanted <= set(_LABEL.findall(labels)):
            total += value
    return total


_LABEL: Final = re.compile(r'\w+="[^"]*"')


def _members(group: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


async def start_service(
    name: str, args: Sequence[str], *, env: Mapping[str, str], ready: str, log: Path
) -> Service:
    """Starts `llm-mesh ARGS`; returns once it printed a line starting with `ready`.

    stdout and stderr both go to `log` (stdout through a pipe read to its end, so a chatty
    process never blocks on it).
    """
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(LLM_MESH),
            *args,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    service = Service(name, process, log)
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def drain() -> None:
        assert process.stdout is not None
        with log.open("ab") as output:
            while line := await process.stdout.readline():
                output.write(line)
                output.flush()
                text = line.decode(errors="replace")
                if text.startswith(ready) and not started.done():
                    started.set_result(text.strip())
        if not started.done():
            started.set_exception(RuntimeError(f"{name} exited before it was ready; see {log}"))

    service._drain = asyncio.create_task(drain())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            service.ready_line = await started
    except BaseException:
        service.kill()
        await process.wait()
        await asyncio.wait([service._drain])
        raise
    return service


@dataclass
class FaultMesh:
    """The processes of one test module: one data directory, routing file and broker prefix."""

    root: Path
    prefix: str
    models: Sequence[str]
    amqp_url: str = MACHINE_AMQP_URL
    #: Added to every process's environment (e.g. `OTEL_*`).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    clients: list[SchedulerClient] = field(default_factory=list)
    service_key: str = ""

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.routing_file = self.root / "models.yaml"
        self.routing_file.write_text(
            "models:\n" + "".join(f"  {model}: {{backend: self_hosted}}\n" for model in self.models)
        )
        keystore = Keystore.open(self.keystore_url)
        try:
            self.service_key, _ = keystore.create_key("gateway", service=True)
        finally:
            keystore.close()

    def create_key(self, owner: str = "tester") -> str:
        """A fresh API key without limits, for the gateway."""
        keystore = Keystore.open(self.keystore_url)
        try:
            key, _ = keystore.create_key(owner)
        finally:
            keystore.close()
        return key

    @property
    def keystore_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'llm-mesh.sqlite3'}"

    @property
    def topology(self) -> Topology:
        return Topology(self.prefix)

    def environment(self, **overrides: str) -> dict[str, str]:
        """What every process of the mesh gets (plus `overrides`)."""
        return {
            "LLM_MESH_AMQP_URL": self.amqp_url,
            "LLM_MESH_BROKER_PREFIX": self.prefix,
            "LLM_MESH_DATA_DIR": str(self.data_dir),
            "LLM_MESH_DATABASE_URL": "",
            "LLM_MESH_MODELS": str(self.routing_file),
            "LLM_MESH_SCHEDULER_DISCOVERY_PERIOD": "0",
            "LLM_MESH_SCHEDULER_MISSED_HEARTBEATS": "4",
            "LLM_MESH_SCHEDULER_GRACE_PERIOD": "1",
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.25",
            "LLM_MESH_WORKER_GRACE_PERIOD": "2",
            "LLM_MESH_GATEWAY_SHUTDOWN_GRACE": "1",
            **self.extra_env,
            **overrides,
        }

    async def start_scheduler(self, *, args: Sequence[str] = (), **env: str) -> Service:
        """`llm-mesh scheduler` on free loopback ports; `env` adds `LLM_MESH_*` variables."""
        index = len(self.services)
        return await self._start(
            f"scheduler-{index}",
            [*args, "scheduler", "--grpc-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"],
            env,
            "llm-mesh scheduler ready:",
        )

    async def start_worker(
        self,
        model: str,
        *,
        capacity: int = 4,
        priority: int = 1,
        args: Sequence[str] = (),
        **env: str,
    ) -> Service:
        """`llm-mesh worker --engine synthetic` for `model`; returns once it consumes."""
        index = len(self.services)
        return await self._start(
            f"worker-{model}-{index}",
            [
                *args,
                "worker",
                "--engine",
                "synthetic",
                "--model",
                model,
                "--capacity",
                str(capacity),
                "--priority",
                str(priority),
                "--http-bind",
                "127.0.0.1:0",
            ],
            env,
            "llm-mesh worker ready:",
        )

    async def start_gateway(
        self,
        schedulers: Sequence[Service],
        *,
        args: Sequence[str] = (),
        default_host: bool = False,
        **env: str,
    ) -> Service:
        """`llm-mesh gateway` on a free port in front of `schedulers`: on loopback, or on
        whatever host its settings default to (`default_host`)."""
        index = len(self.services)
        host = [] if default_host else ["--host", "127.0.0.1"]
        return await self._start(
            f"gateway-{index}",
            [*args, "gateway", *host, "--port", "0"],
            {
                "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": ",".join(s.grpc_target for s in schedulers),
                "LLM_MESH_GATEWAY_SERVICE_CREDENTIAL": self.service_key,
                **env,
            },
            "llm-mesh gateway ready:",
        )

    def client(self, *schedulers: Service) -> SchedulerClient:
        """A `SchedulerClient` with the service key, closed with the mesh."""
        client = SchedulerClient([s.grpc_target for s in schedulers], api_key=self.service_key)
        self.clients.append(client)
        return client

    async def wait_for_workers(self, scheduler: Service, model: str, count: int = 1) -> None:
        """Waits until `scheduler` lists `count` ready workers for `model`."""
        async with SchedulerClient(scheduler.grpc_target, api_key=self.service_key) as client:

            async def listed() -> bool:
                models = await client.list_models(timeout=5)
                return any(m.name == model and m.ready_workers == count for m in models)

            await wait_until(listed, within=START_TIMEOUT)

    async def queue_depth(self, model: str) -> int:
        """Ready messages in `model`'s task queue (a passive declare)."""
        connection = await aio_pika.connect(self.amqp_url.split("?")[0], timeout=5)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(self.topology.task_queue(model), passive=True)
            count = declared.declaration_result.message_count
            assert count is not None
            return count

    async def wait_queue_depth(self, model: str, depth: int, *, at_least: bool = False) -> None:
        """Waits until `model`'s task queue holds `depth` ready messages (or more)."""

        async def reached() -> bool:
            current = await self.queue_depth(model)
            return current >= depth if at_least else current == depth

        await wait_until(reached)

    async def aclose(self) -> None:
        """Closes the clients, stops every process (none may be left), deletes the prefix."""
        for client in self.clients:
            await client.aclose()
        results = await asyncio.gather(
            *(service.stop() for service in self.services), return_exceptions=True
        )
        await self.delete_broker_objects()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def delete_broker_objects(self) -> None:
        """Deletes the durable queues and exchanges under the prefix (exclusive ones died with
        their connections)."""
        topology = self.topology
        with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError):
            connection = await aio_pika.connect(self.amqp_url.split("?")[0], timeout=5)
            async with connection:
                channel = await connection.channel()
                for model in self.models:
                    await channel.queue_delete(
                        topology.task_queue(model), if_unused=False, if_empty=False
                    )
                await channel.queue_delete(
                    topology.dead_letter_queue, if_unused=False, if_empty=False
                )
                for exchange in (
                    topology.tasks_exchange,
                    topology.dead_letter_exchange,
                    topology.control_exchange,
                ):
                    await channel.exchange_delete(exchange)

    def log_text(self) -> str:
        """Everything every process of the mesh wrote so far."""
        return "".join(service.log.read_text(errors="replace") for service in self.services)

    async def _start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], ready: str
    ) -> Service:
        service = await start_service(
            name,
            args,
            env=self.environment(**env),
            ready=ready,
            log=self.root / f"{name}.log",
        )
        self.services.append(service)
        return service
