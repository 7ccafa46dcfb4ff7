"""What the request-path tests run: in-process schedulers, worker subprocesses, broker checks.

Workers are real `llm-mesh worker --engine synthetic` processes in their own process group
(stopped with `killpg`, and checked to leave no process behind). A worker is ready once it
printed its ready line and the scheduler's registry saw its ready heartbeat — no fixed sleeps.
Everything a test declares lives under one random broker prefix; `BrokerInspector` lists and
deletes it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aio_pika
import grpc
import httpx
import psutil
from google.rpc import status_pb2
from llmmesh.v1 import chat_pb2, events_pb2
from prometheus_client.parser import text_string_to_metric_families

from plumbing.client import SchedulerClient
from plumbing.settings import MeshSettings
from plumbing.topology import Topology
from scheduler.server import SchedulerServer
from scheduler.settings import Settings as SchedulerSettings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LLM_MESH = Path(sys.executable).with_name("llm-mesh")
#: Bounds of the waits in these tests.
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


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


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed call (its `grpc-status-details-bin` trailer)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no status details in {error!r}")


def kinds(events: list[events_pb2.StreamEvent]) -> list[str]:
    """The event kinds, in order."""
    return [str(event.WhichOneof("event")) for event in events]


async def wait_until(predicate: Callable[[], Any]) -> None:
    """Polls an outside state (a process's metrics, a queue's depth) until it holds.

    Another process's state has no event to await: this polls, within `WAIT_TIMEOUT`.
    """
    async with asyncio.timeout(WAIT_TIMEOUT):
        while not await _resolve(predicate()):  # noqa: ASYNC110 - see the docstring
            await asyncio.sleep(POLL_INTERVAL)


async def _resolve(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


@dataclass
class WorkerProcess:
    """A worker subprocess, leader of its own process group."""

    process: asyncio.subprocess.Process
    worker_id: str
    http_url: str
    log: Path
    control_queue: str

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
        """One sample (0 when absent), e.g. `llm_mesh_worker_tasks_started_total`."""
        return (await self.metrics()).get(name, 0.0)

    async def wait_metric(self, name: str, predicate: Callable[[float], bool]) -> float:
        """Polls one sample until `predicate` holds; returns its value."""
        value = 0.0

        async def holds() -> bool:
            nonlocal value
            value = await self.metric(name)
            return predicate(value)

        await wait_until(holds)
        return value

    async def readyz(self) -> int:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.http_url}/readyz", timeout=5)).status_code

    def kill(self) -> None:
        """SIGKILL to the whole process group (no goodbye, no acks: a crash)."""
        os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if needed; asserts no process of the group is left."""
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        # An engine's children (vLLM's engine core) exit a moment after the leader; zombies
        # waiting for init to reap them are gone already.
        try:
            await wait_until(lambda: not _live_members(self.process.pid))
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"worker {self.worker_id} left processes behind") from None


def _live_members(group: int) -> list[int]:
    """The pids of the non-zombie processes in a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


@dataclass
class Mesh:
    """The schedulers, workers and clients of one test module, under one broker prefix."""

    prefix: str
    log_dir: Path
    schedulers: list[SchedulerServer] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    clients: list[SchedulerClient] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def topology(self) -> Topology:
        return Topology(self.prefix)

    async def start_scheduler(
        self, *, mesh: MeshSettings | None = None, **settings: Any
    ) -> SchedulerServer:
        """An in-process replica on free ports; the registry trusts heartbeats at once.

        `mesh` supplies shared settings (e.g. S3); its broker URL and prefix are replaced.
        """
        options: dict[str, Any] = {
            "grpc_bind": "127.0.0.1:0",
            "http_bind": "127.0.0.1:0",
            "discovery_period": 0,
            "missed_heartbeats": 4,
            "grace_period": 1,
        }
        options.update(settings)
        shared = (mesh or MeshSettings()).model_copy(
            update={"amqp_url": AMQP_URL, "broker_prefix": self.prefix}
        )
        scheduler = SchedulerServer(SchedulerSettings(mesh=shared, **options))
        await scheduler.start()
        self.schedulers.append(scheduler)
        return scheduler

    def client(self, scheduler: SchedulerServer) -> SchedulerClient:
        client = SchedulerClient(f"127.0.0.1:{scheduler.port}")
        self.clients.append(client)
        return client

    async def start_worker(
        self,
        model: str,
        *,
        scheduler: SchedulerServer | None,
        priority: int = 1,
        capacity: int = 4,
        env: Mapping[str, str] | None = None,
        engine: str = "synthetic",
        start_timeout: float = START_TIMEOUT,
        **synthetic: float | int | bool,
    ) -> WorkerProcess:
        """Starts a worker (synthetic by default); returns once it is ready (and `scheduler`
        knows it), within `start_timeout` seconds.

        `synthetic` sets `LLM_MESH_WORKER_SYNTHETIC_<NAME>` (e.g. `token_interval=0.01`);
        `env` adds (or overrides) environment variables.
        """
        env = {
            **os.environ,
            **(env or {}),
            "LLM_MESH_AMQP_URL": AMQP_URL,
            "LLM_MESH_BROKER_PREFIX": self.prefix,
            "LLM_MESH_WORKER_HTTP_BIND": "127.0.0.1:0",
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.25",
            "LLM_MESH_WORKER_GRACE_PERIOD": "2",
        }
        for name, value in synthetic.items():
            env[f"LLM_MESH_WORKER_SYNTHETIC_{name.upper()}"] = str(value)
        log = self.log_dir / f"worker-{model}-{len(self.workers)}.log"
        log_file = log.open("wb")
        self._logs.append(log_file)
        process = await asyncio.create_subprocess_exec(
            str(LLM_MESH),
            "worker",
            f"--engine={engine}",
            f"--model={model}",
            f"--priority={priority}",
            f"--capacity={capacity}",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(start_timeout):
                # Other lines may come first (vLLM logs to stdout unless told otherwise).
                while not (line := (await process.stdout.readline()).decode()).startswith(
                    "llm-mesh worker ready:"
                ):
                    if not line:
                        await process.wait()
                        raise AssertionError(f"worker did not start; see {log}")
        except BaseException:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            raise
        fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split())
        worker = WorkerProcess(
            process,
            fields["worker_id"],
            fields["http"],
            log,
            f"{self.prefix}llm.control.worker.{fields['worker_id']}",
        )
        self.workers.append(worker)
        assert await worker.readyz() == 200
        if scheduler is not None:
            async with asyncio.timeout(start_timeout):
                await scheduler.registry.wait_for(
                    lambda registry: any(
                        beat.worker_id == worker.worker_id and beat.ready
                        for beat in registry.workers()
                    )
                )
        return worker

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for scheduler in self.schedulers:
            await scheduler.stop(grace=0)
        for log_file in self._logs:
            log_file.close()


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

    async def delete_everything(self) -> None:
        """Deletes every queue and exchange under the prefix."""
        queues, exchanges = await self.names()
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name, if_unused=False, if_empty=False)
            for name in exchanges:
                await channel.exchange_delete(name)

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
