"""The meshes the fault tests break: `llm-mesh` scheduler, worker and gateway subprocesses.

Every service is a real `llm-mesh` process, leader of its own process group (so a test can
SIGTERM, SIGKILL or measure it like an operator would), with its stdout and stderr captured
in one log file per process (the security tests grep them): `bench.process_mesh`, shared with
the other harnesses and the benchmarks. Workers run the synthetic engine. A mesh owns a data
directory (the SQLite keys database, with the gateway's service key), a routing file naming
the models its tests use, and one broker prefix; `aclose` stops every process (asserting none
is left behind) and deletes what the prefix declared on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aio_pika
from llmmesh.v1 import chat_pb2, events_pb2

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process, wait_until
from meshctl._local_broker import delete_stack
from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from plumbing.topology import Topology

__all__ = ["MACHINE_AMQP_URL", "FaultMesh", "chat", "kinds"]

MACHINE_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
#: Bound of a process start (imports, broker connection, first heartbeat seen).
START_TIMEOUT: Final = 30.0


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


@dataclass
class FaultMesh:
    """The processes of one test module: one data directory, routing file and broker prefix."""

    root: Path
    prefix: str
    models: Sequence[str]
    amqp_url: str = MACHINE_AMQP_URL
    #: Added to every process's environment (e.g. `OTEL_*`).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)
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

    async def start_scheduler(self, *, args: Sequence[str] = (), **env: str) -> ServiceProcess:
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
    ) -> ServiceProcess:
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
        schedulers: Sequence[ServiceProcess],
        *,
        args: Sequence[str] = (),
        default_host: bool = False,
        **env: str,
    ) -> ServiceProcess:
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

    def client(self, *schedulers: ServiceProcess) -> SchedulerClient:
        """A `SchedulerClient` with the service key, closed with the mesh."""
        client = SchedulerClient([s.grpc_target for s in schedulers], api_key=self.service_key)
        self.clients.append(client)
        return client

    async def wait_for_workers(self, scheduler: ServiceProcess, model: str, count: int = 1) -> None:
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
        their connections); a broker that is gone already is not an error."""
        with contextlib.suppress(OSError, TimeoutError, aio_pika.exceptions.AMQPError):
            await delete_stack(self.amqp_url.split("?")[0], self.topology, self.models)

    def log_text(self) -> str:
        """Everything every process of the mesh wrote so far."""
        return "".join(service.log.read_text(errors="replace") for service in self.services)

    async def _start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], ready: str
    ) -> ServiceProcess:
        service = await start_process(
            name,
            [LLM_MESH, *args],
            environment={**os.environ, **self.environment(**env)},
            ready=ready,
            log=self.root / f"{name}.log",
            start_timeout=START_TIMEOUT,
        )
        self.services.append(service)
        return service
