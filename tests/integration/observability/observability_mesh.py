"""The mesh of the observability tests, all in this process: scheduler, workers, gateway.

Everything runs on the test's event loop so that one in-memory span exporter sees the spans
of all three services, while the trace context still has to cross the real boundaries: HTTP
into the gateway, gRPC metadata to the scheduler, AMQP headers through RabbitMQ to the
worker (whose consumer runs in aio-pika's tasks, which never inherit the scheduler's
context). Workers are the real `WorkerService` with the synthetic engine.

Tests import the helpers from here (a unique module name: test directories are not
packages); `conftest.py` registers the fixtures. Polling and scraping come from
`bench.process_mesh`, the broker clean-up from `tests/integration/broker_inspector.py`, as for
the other harnesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
import uvicorn
from broker_inspector import BrokerInspector
from llmmesh.v1 import chat_pb2, events_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp

from bench.process_mesh import scrape_metrics
from bench.process_mesh import wait_until as wait_until  # re-exported: the tests poll with it
from gateway.app import create_app
from gateway.routing import ModelRoute, RoutingTable
from gateway.settings import GatewaySettings
from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from plumbing.settings import MeshSettings
from plumbing.telemetry import use_tracer_provider
from plumbing.topology import Topology
from scheduler.server import SchedulerServer
from scheduler.settings import Settings as SchedulerSettings
from worker.engine_protocol import ModelCard
from worker.service import WorkerService
from worker.settings import Settings as WorkerSettings
from worker.synthetic import SyntheticEngine

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Bound of every wait in these tests (`wait_until`'s too).
WAIT_TIMEOUT = 15.0


def chat(
    model: str, prompt: str = "hello observability", **parameters: Any
) -> chat_pb2.ChatRequest:
    """A one-message request."""
    return chat_pb2.ChatRequest(
        model=model,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=prompt)])
        ],
        generation_parameters=chat_pb2.GenerationParameters(**parameters),
    )


async def collect(events: AsyncIterator[events_pb2.StreamEvent]) -> list[events_pb2.StreamEvent]:
    """Every event of a stream."""
    return [event async for event in events]


async def scrape(port: int) -> dict[str, float]:
    """Every sample of a service's /metrics: `name{label="value",...}` → value."""
    return await scrape_metrics(f"http://127.0.0.1:{port}/metrics")


@dataclass
class RunningWorker:
    """A `WorkerService` running as a task of the test's loop."""

    service: WorkerService
    task: asyncio.Task[None]
    stopping: asyncio.Event

    async def stop(self) -> None:
        self.stopping.set()
        async with asyncio.timeout(WAIT_TIMEOUT):
            await asyncio.wait([self.task])
        self.task.result()


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the test runner keeps them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RunningGateway:
    """The gateway app on uvicorn (a real socket), and an API key for it."""

    url: str
    api_key: str
    key_id: str
    keystore: Keystore
    server: _QuietServer
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        async with asyncio.timeout(WAIT_TIMEOUT):
            await self.task


@dataclass
class Mesh:
    """What one test started, under the module's broker prefix, on the broker at `amqp_url`
    (the machine's by default); `aclose` stops it all."""

    prefix: str
    data_dir: Path
    amqp_url: str = AMQP_URL
    schedulers: list[SchedulerServer] = field(default_factory=list)
    workers: list[RunningWorker] = field(default_factory=list)
    clients: list[SchedulerClient] = field(default_factory=list)
    gateways: list[RunningGateway] = field(default_factory=list)
    keystores: list[Keystore] = field(default_factory=list)
    upstreams: list[tuple[_QuietServer, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def mesh_settings(self) -> MeshSettings:
        return MeshSettings(
            amqp_url=self.amqp_url, broker_prefix=self.prefix, data_dir=self.data_dir
        )

    async def start_scheduler(self, **settings: Any) -> SchedulerServer:
        """An in-process replica on free ports, polling queues every 0.1 s."""
        options: dict[str, Any] = {
            "grpc_bind": "127.0.0.1:0",
            "http_bind": "127.0.0.1:0",
            "discovery_period": 0,
            # Heartbeats every 0.25 s: a busy machine must not expire a live worker.
            "missed_heartbeats": 8,
            "grace_period": 1,
            "require_api_keys": False,
            "queue_poll_interval": 0.1,
        }
        options.update(settings)
        scheduler = SchedulerServer(SchedulerSettings(mesh=self.mesh_settings, **options))
        await scheduler.start()
        self.schedulers.append(scheduler)
        return scheduler

    def client(self, scheduler: SchedulerServer) -> SchedulerClient:
        client = SchedulerClient(f"127.0.0.1:{scheduler.port}")
        self.clients.append(client)
        return client

    async def start_worker(
        self, model: str, scheduler: SchedulerServer, **settings: Any
    ) -> RunningWorker:
        """An in-process synthetic worker; returns once `scheduler` saw it ready."""
        options: dict[str, Any] = {
            "engine": "synthetic",
            "model": model,
            "http_bind": "127.0.0.1:0",
            "heartbeat_interval": 0.25,
            "grace_period": 1,
            "capacity": 4,
            "synthetic_tokens": 8,
            "synthetic_token_interval": 0.005,
        }
        options.update(settings)
        worker_settings = WorkerSettings(mesh=self.mesh_settings, **options)
        engine = SyntheticEngine(
            ModelCard(name=model, max_context=2048, supports_tools=False),
            tokens=worker_settings.synthetic_tokens,
            token_interval=worker_settings.synthetic_token_interval,
            hang_after=worker_settings.synthetic_hang_after,
        )
        service = WorkerService(worker_settings, engine)
        stopping = asyncio.Event()
        worker = RunningWorker(service, asyncio.create_task(service.run(stopping)), stopping)
        self.workers.append(worker)
        async with asyncio.timeout(WAIT_TIMEOUT):
            await scheduler.registry.wait_for(
                lambda registry: any(
                    beat.worker_id == service.worker_id and beat.ready
                    for beat in registry.workers()
                )
            )
        return worker

    async def start_gateway(
        self,
        scheduler: SchedulerServer,
        models: list[str],
        external: Mapping[str, ModelRoute] | None = None,
    ) -> RunningGateway:
        """The gateway in front of `scheduler`, routing `models` to it (and the `external`
        routes to their providers), with a fresh key."""
        keystore = Keystore.from_settings(self.mesh_settings)
        self.keystores.append(keystore)
        api_key, record = keystore.create_key("observability")
        settings = GatewaySettings(
            mesh=self.mesh_settings, scheduler_targets=[f"127.0.0.1:{scheduler.port}"]
        )
        routes = {model: ModelRoute(backend="self_hosted") for model in models}
        app = create_app(
            settings, routing=RoutingTable({**routes, **(external or {})}), keystore=keystore
        )
        url, server, task = await _serve(app)
        gateway = RunningGateway(url, api_key, record.key_id, keystore, server, task)
        self.gateways.append(gateway)
        return gateway

    async def start_upstream(self, app: ASGIApp) -> str:
        """A stand-in provider: `app` served until the mesh closes; returns its URL."""
        url, server, task = await _serve(app)
        self.upstreams.append((server, task))
        return url

    async def declare_model_queue(self, model: str) -> None:
        """Declares a model's task queue, as a worker that has since gone would have."""
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            await Topology(self.prefix).declare_task_queue(await connection.channel(), model)

    async def aclose(self) -> None:
        """Stops everything, each part even when stopping another failed (a worker whose task
        raised must not leave its scheduler's connection open); then raises what failed."""
        stops: list[Callable[[], Awaitable[object]]] = [
            *(gateway.stop for gateway in self.gateways),
            *(functools.partial(_stop_upstream, *upstream) for upstream in self.upstreams),
            *(client.aclose for client in self.clients),
            *(worker.stop for worker in self.workers if not worker.task.done()),
            *(functools.partial(scheduler.stop, grace=0) for scheduler in self.schedulers),
        ]
        failures: list[Exception] = []
        for stop in stops:
            try:
                await stop()
            except Exception as exc:
                failures.append(exc)
        for keystore in self.keystores:
            keystore.close()
        if failures:
            raise ExceptionGroup("stopping the mesh failed", failures)


async def _stop_upstream(server: _QuietServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    async with asyncio.timeout(WAIT_TIMEOUT):
        await task


async def _serve(app: ASGIApp) -> tuple[str, _QuietServer, asyncio.Task[None]]:
    """`app` on uvicorn on a free loopback port: its URL, server and serving task."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server = _QuietServer(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    await wait_until(lambda: server.started or task.done())
    return f"http://127.0.0.1:{port}", server, task


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for the servers and clients the module builds."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture(scope="module")
def prefix(broker: BrokerInspector) -> str:
    """The module's broker prefix (the `broker` fixture deletes everything under it)."""
    return broker.prefix


@pytest_asyncio.fixture(loop_scope="session")
async def mesh(prefix: str, spans: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[Mesh]:
    """A test's own mesh (with tracing on); stopped at the end of the test."""
    spans.clear()
    mesh = Mesh(prefix, tmp_path)
    try:
        yield mesh
    finally:
        await mesh.aclose()
