"""What the request-path tests run: in-process schedulers, worker subprocesses, broker checks.

Workers are real `llm-mesh worker --engine synthetic` processes in their own process group
(`bench.process_mesh`: stopped by group, and checked to leave no process behind). A worker is
ready once it printed its ready line and the scheduler's registry saw its ready heartbeat — no
fixed sleeps. Everything a test declares lives under one random broker prefix;
`BrokerInspector` (`tests/integration/broker_inspector.py`) lists and deletes it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from broker_inspector import AMQP_URL
from google.rpc import status_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process
from plumbing.client import SchedulerClient
from plumbing.settings import MeshSettings
from plumbing.topology import Topology
from scheduler.server import SchedulerServer
from scheduler.settings import Settings as SchedulerSettings

#: Bound of a worker's start.
START_TIMEOUT = 30.0


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


@dataclass
class Mesh:
    """The schedulers, workers and clients of one test module, under one broker prefix."""

    prefix: str
    log_dir: Path
    schedulers: list[SchedulerServer] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)
    clients: list[SchedulerClient] = field(default_factory=list)

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
    ) -> ServiceProcess:
        """Starts a worker (synthetic by default); returns once it is ready (and `scheduler`
        knows it), within `start_timeout` seconds.

        `synthetic` sets `LLM_MESH_WORKER_SYNTHETIC_<NAME>` (e.g. `token_interval=0.01`);
        `env` adds (or overrides) environment variables.
        """
        environment = {
            **os.environ,
            **(env or {}),
            "LLM_MESH_AMQP_URL": AMQP_URL,
            "LLM_MESH_BROKER_PREFIX": self.prefix,
            "LLM_MESH_WORKER_HTTP_BIND": "127.0.0.1:0",
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.25",
            "LLM_MESH_WORKER_GRACE_PERIOD": "2",
        }
        for name, value in synthetic.items():
            environment[f"LLM_MESH_WORKER_SYNTHETIC_{name.upper()}"] = str(value)
        name = f"worker-{model}-{len(self.workers)}"
        worker = await start_process(
            name,
            [
                LLM_MESH,
                "worker",
                f"--engine={engine}",
                f"--model={model}",
                f"--priority={priority}",
                f"--capacity={capacity}",
            ],
            environment=environment,
            ready="llm-mesh worker ready:",
            log=self.log_dir / f"{name}.log",
            start_timeout=start_timeout,
        )
        self.workers.append(worker)
        assert await worker.probe("/readyz") == 200
        if scheduler is not None:
            worker_id = worker.fields["worker_id"]
            async with asyncio.timeout(start_timeout):
                await scheduler.registry.wait_for(
                    lambda registry: any(
                        beat.worker_id == worker_id and beat.ready for beat in registry.workers()
                    )
                )
        return worker

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for scheduler in self.schedulers:
            await scheduler.stop(grace=0)
