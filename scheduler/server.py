"""One scheduler replica's lifecycle: broker, demux, registry, gRPC server and probes.

`SchedulerServer.start` connects to the broker, feeds heartbeats into the registry, starts the
background loops (reply dispatch, registry expiry, the sweep of leftover stored payloads when
object storage is configured), then serves gRPC (`SchedulerService`, the
standard health service and reflection; over TLS when `tls_certfile` is set, mutual TLS when
`tls_client_ca` is too) and the HTTP probes. `stop` reverses it: health turns
NOT_SERVING, in-flight calls get a grace period, then the broker connection closes (the
replica's queues vanish with it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llmmesh.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc

from plumbing import event_loop
from plumbing.grpc_tls import server_credentials
from plumbing.keystore import Keystore
from plumbing.object_store import PayloadStore
from plumbing.probes import ProbeServer, parse_bind
from plumbing.s3_client import connect_s3
from plumbing.telemetry import configure_tracing, server_interceptors
from scheduler.auth import AuthInterceptor
from scheduler.broker import TaskBroker
from scheduler.decoding import DecodingInterceptor
from scheduler.demux import Demux, Verdict
from scheduler.errors import WorkerFailed, WorkerUnavailable
from scheduler.management_api import ManagementApi
from scheduler.metrics import SchedulerMetrics
from scheduler.offload import PayloadOffload
from scheduler.queue_monitor import QueueMonitor
from scheduler.registry import WorkerRegistry
from scheduler.service import SchedulerService
from scheduler.settings import Settings

__all__ = ["SchedulerServer", "main", "serve"]

logger = logging.getLogger(__name__)

_SERVICE_NAME = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


class SchedulerServer:
    """One replica. `start`, then `stop`; or `async with`.

    `keystore` turns on API keys on the gRPC API (`AuthInterceptor`, which counts its refusals
    in the replica's metrics). After `start`, `port` and `http_port` are the bound ports.
    """

    def __init__(self, settings: Settings, *, keystore: Keystore | None = None) -> None:
        self.settings = settings
        self.replica_id = uuid.uuid4().hex[:12]
        self.broker = TaskBroker(settings.mesh, self.replica_id)
        self.demux = Demux(settings.demux_queue_size)
        self.broker.on_connection_lost(self._fail_open_streams)
        self.registry = WorkerRegistry(
            missed_heartbeats=settings.missed_heartbeats,
            discovery_period=settings.discovery_period,
        )
        self.metrics = SchedulerMetrics(self.registry)
        self._management = (
            None
            if settings.broker_management_url is None
            else ManagementApi(
                str(settings.broker_management_url),
                amqp_url=settings.mesh.amqp_url,
                topology=self.broker.topology,
                timeout=settings.broker_management_timeout,
            )
        )
        self.queues = QueueMonitor(
            self._management or self.broker,
            lambda: self.registry.models_seen() | self.broker.models_published,
            messages=self.metrics.queue_messages,
            unacknowledged=self.metrics.queue_unacknowledged,
            consumers=self.metrics.queue_consumers,
            interval=settings.queue_poll_interval,
        )
        mesh = settings.mesh
        self.offload = PayloadOffload(
            PayloadStore(connect_s3(mesh), settings.payload_bucket) if mesh.s3_endpoint else None,
            threshold=settings.payload_threshold_bytes,
            metrics=self.metrics,
        )
        self._interceptors = (
            [AuthInterceptor(keystore, self.metrics.refusals)] if keystore is not None else []
        )
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._background: asyncio.Task[None] | None = None
        self._probes = ProbeServer(
            settings.http_bind, registry=self.metrics.registry, ready=lambda: self.ready
        )
        self.port = 0

    @property
    def http_port(self) -> int:
        """The port of /healthz, /readyz and /metrics."""
        return self._probes.port

    @property
    def ready(self) -> bool:
        """Serving, with a broker connection and its reply loops running."""
        return (
            self._server is not None
            and self.broker.connected
            and self._background is not None
            and not self._background.done()
        )

    async def start(self) -> None:
        """Connects to the broker and starts serving."""
        credentials = _server_credentials(self.settings)  # A bad file fails before anything.
        await self.broker.connect()
        await self.broker.listen_to_heartbeats(self.registry.observe)
        self._background = asyncio.create_task(self._run_background())
        server = grpc.aio.server(
            # Tracing first: the span covers the other interceptors (e.g. refused keys).
            # Undecodable requests are refused before anything reads them.
            interceptors=[*server_interceptors(), DecodingInterceptor(), *self._interceptors],
            options=[("grpc.max_receive_message_length", self.settings.max_request_bytes)],
        )
        service = SchedulerService(
            self.settings, self.broker, self.demux, self.registry, self.metrics, self.offload
        )
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            service, server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = (
            server.add_insecure_port(self.settings.grpc_bind)
            if credentials is None
            else server.add_secure_port(self.settings.grpc_bind, credentials)
        )
        await server.start()
        self._server = server
        await self._health.set(_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self._probes.start()
        logger.info(
            "scheduler %s serving gRPC on port %d, probes on port %d",
            self.replica_id,
            self.port,
            self.http_port,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stops: in-flight calls get `grace` seconds (default: the setting), then cancelled."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.grace_period if grace is None else grace)
        if self._background is not None:
            self._background.cancel()
            await asyncio.wait([self._background])
        await self.broker.close()
        if self._management is not None:
            await self._management.aclose()
        await self._probes.stop()

    async def __aenter__(self) -> SchedulerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run_background(self) -> None:
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._dispatch_replies())
            loops.create_task(self._expire_workers())
            loops.create_task(self.queues.run())
            loops.create_task(
                self.offload.sweep_forever(
                    ttl=self.settings.payload_ttl, interval=self.settings.payload_sweep_interval
                )
            )

    def _fail_open_streams(self) -> None:
        """The broker connection dropped: chunks in flight are lost, and a redelivered copy
        of a task must not continue a stream, so every open stream ends now (retryable)."""
        failed = self.demux.fail_all(WorkerUnavailable("the broker connection was lost"))
        if failed:
            logger.warning("broker connection lost: %d streams failed", failed)

    async def _dispatch_replies(self) -> None:
        chunks = self.metrics.chunks
        async for chunk, worker_span in self.broker.replies():
            verdict = self.demux.dispatch(chunk, worker_span)
            chunks.labels(verdict.value).inc()
            if verdict is Verdict.UNKNOWN:
                self.metrics.unknown_chunks.inc()
                await self.broker.publish_cancel(chunk.request_id, "unknown request")

    async def _expire_workers(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_sweep_interval)
            for worker_id in self.registry.expire():
                failed = self.demux.fail_owned_by(
                    worker_id, WorkerFailed(f"worker {worker_id} stopped sending heartbeats")
                )
                logger.warning("worker %s lost; %d streams failed", worker_id, failed)
            self.metrics.live_workers.set(len(self.registry.workers()))


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials from the settings' PEM files; None = plaintext."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    return server_credentials(
        settings.tls_certfile, settings.tls_keyfile, client_ca=settings.tls_client_ca
    )


async def serve(settings: Settings) -> None:
    """Runs one replica until SIGINT or SIGTERM, then stops gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    keystore = Keystore.from_settings(settings.mesh) if settings.require_api_keys else None
    try:
        async with SchedulerServer(settings, keystore=keystore) as server:
            grpc_host, _ = parse_bind(settings.grpc_bind)
            http_host, _ = parse_bind(settings.http_bind)
            print(
                f"llm-mesh scheduler ready: grpc={grpc_host}:{server.port} "
                f"http={http_host}:{server.http_port}",
                flush=True,
            )
            await stopping.wait()
            logger.info("stopping (grace period %g s)", settings.grace_period)
    finally:
        if keystore is not None:
            keystore.close()


def main(settings: Settings) -> int:
    """The `llm-mesh scheduler` command (traced when the `OTEL_*` variables ask for it)."""
    configure_tracing("llm-mesh-scheduler")
    event_loop.run(serve(settings))
    return 0
