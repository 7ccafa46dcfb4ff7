"""One worker's lifecycle: probes, broker, engine, consumer, heartbeats; graceful stop.

Start: connect → serve the probes (`/healthz` at once, `/readyz` 503 until ready) → declare
the model's queue → announce (not ready) → load the engine → consume → ready; then it prints
`llm-mesh worker ready: ...` on stdout. SIGTERM (or SIGINT): not ready, stop consuming, let
in-flight requests finish within the grace period, abort the rest (they end with a retryable
error), say goodbye to the schedulers, close the broker connection, and shut the engine down
last, when no request runs in it any more. Signal the worker process itself, not its process
group: the worker stops vLLM's engine-core child in that order, and a signal to the whole
group would stop the engine core under requests still draining. An engine that stops
producing tokens while requests run (`worker.watchdog`) takes the worker out of service: not
ready (probe and heartbeat), no more tasks, in-flight requests end with a retryable error.

vLLM spawns its engine-core process, which re-imports the main module: keep the
`if __name__ == "__main__"` guard on every entry point.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import uuid
from typing import cast

import aio_pika
from llmmesh.v1 import broker_pb2

from plumbing import event_loop
from plumbing.probes import ProbeServer, parse_bind
from plumbing.storage_errors import StorageError
from plumbing.telemetry import configure_tracing
from plumbing.topology import Topology
from worker.cancellations import CancelledRequests
from worker.consumer import AbortReason, TaskConsumer
from worker.engine_protocol import Engine, ModelCard
from worker.heartbeat import ControlLink
from worker.metrics import WorkerMetrics
from worker.settings import Settings
from worker.stored_model import pull_stored_model
from worker.synthetic import SyntheticEngine
from worker.watchdog import EngineWatchdog

__all__ = ["WorkerService", "build_engine", "main", "serve"]

logger = logging.getLogger(__name__)


async def build_engine(settings: Settings) -> Engine:
    """The engine `settings.engine` names; vLLM is imported only when it is the one.

    The vLLM engine serves `settings.model_dir`, or else the packaged default model, which
    is converted into the model cache on its first start (blocking work, run in a thread).
    With `model_source=s3`, the model's files are first pulled from S3 into the node's cache
    (`worker.stored_model`), and both engines serve that directory.
    """
    model_dir = settings.model_dir
    if settings.model_source == "s3":  # Issue 6: the only storage step of the build.
        model_dir = await pull_stored_model(settings)
    if settings.engine == "synthetic":
        return SyntheticEngine(
            ModelCard(
                name=settings.model,
                max_context=settings.synthetic_max_context,
                supports_tools=settings.synthetic_supports_tools,
            ),
            tokens=settings.synthetic_tokens,
            token_interval=settings.synthetic_token_interval,
            first_token_delay=settings.synthetic_first_token_delay,
            prepare_delay=settings.synthetic_prepare_delay,
            hang_after=settings.synthetic_hang_after,
            model_dir=model_dir,
        )
    if model_dir is None:
        from worker.model_source import DEFAULT_MODEL_NAME, prepare_packaged_model

        if settings.model != DEFAULT_MODEL_NAME:
            raise ValueError(
                f"model {settings.model!r} needs LLM_MESH_WORKER_MODEL_DIR (only "
                f"{DEFAULT_MODEL_NAME!r} is packaged)"
            )
        model_dir = await asyncio.to_thread(
            prepare_packaged_model, settings.mesh.data_dir, settings.model
        )
    # Imported here: only `worker.engine` (and the `worker.vllm_*` modules it uses) import vLLM.
    engine_module = importlib.import_module("worker.engine")
    return cast(
        Engine, engine_module.VllmEngine(model_dir, settings.model, max_num_seqs=settings.capacity)
    )


class WorkerService:
    """One worker; `run` serves until `stopping` is set, then stops gracefully."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.worker_id = settings.worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._consumer: TaskConsumer | None = None
        self.metrics = WorkerMetrics(
            engine, held=lambda: self._consumer.running if self._consumer is not None else 0
        )
        self.watchdog = EngineWatchdog(settings.engine_watchdog_window)
        #: The port of /healthz, /readyz and /metrics, once `run` serves them.
        self.http_port = 0
        self._ready = False
        self._engine_started = False

    @property
    def ready(self) -> bool:
        """Consuming, with a loaded engine."""
        return self._ready

    async def run(self, stopping: asyncio.Event) -> None:
        """Serves until `stopping` is set."""
        settings = self.settings
        probes = ProbeServer(
            settings.http_bind,
            registry=self.metrics.registry,
            ready=lambda: self._ready,
            healthy=self.engine.healthy,
        )
        await probes.start()
        self.http_port = probes.port
        connection = await aio_pika.connect_robust(
            settings.mesh.amqp_url,
            client_properties={"connection_name": f"llm-mesh worker {self.worker_id}"},
        )
        try:
            consumer = TaskConsumer(
                settings,
                self.engine,
                connection,
                worker_id=self.worker_id,
                metrics=self.metrics,
                cancelled=CancelledRequests(settings.cancelled_ttl),
                watchdog=self.watchdog,
            )
            self._consumer = consumer
            await consumer.declare()
            control = ControlLink(
                connection,
                Topology(settings.mesh.broker_prefix),
                worker_id=self.worker_id,
                interval=settings.heartbeat_interval,
                describe=self._describe,
            )
            await control.open()
            await control.listen(consumer.cancel)
            async with asyncio.TaskGroup() as loops:
                heartbeats = loops.create_task(control.run_heartbeats())
                watching = loops.create_task(
                    self.watchdog.watch(lambda: self._take_out_of_service(consumer, control))
                )
                await self.engine.start()
                self._engine_started = True
                await consumer.start()
                self._ready = True
                await control.announce()
                host, _ = parse_bind(settings.http_bind)
                print(
                    f"llm-mesh worker ready: worker_id={self.worker_id} "
                    f"model={settings.model} http=http://{host}:{probes.port}",
                    flush=True,
                )
                await stopping.wait()
                logger.info("stopping (grace period %g s)", settings.grace_period)
                self._ready = False
                await consumer.stop_consuming()
                await control.announce()
                await consumer.drain(settings.grace_period)
                heartbeats.cancel()
                watching.cancel()
            await control.announce(goodbye=True)
        finally:
            self._ready = False
            await connection.close()
            await self.engine.aclose()
            await probes.stop()

    async def _take_out_of_service(self, consumer: TaskConsumer, control: ControlLink) -> None:
        """The engine stalled: stop serving and end the requests it holds (retryable)."""
        logger.error(
            "the engine produced nothing for %.1f s while requests ran: not ready, no more "
            "tasks, in-flight requests end with a retryable error",
            self.watchdog.silence,
        )
        self.metrics.engine_stalls.inc()
        self._ready = False
        await consumer.stop_consuming()
        await control.announce()
        consumer.abort_all(AbortReason.ENGINE_STALLED)

    def _describe(self) -> broker_pb2.Heartbeat:
        # The card may need the loaded model: until then, announce only the model's name.
        if self._engine_started:
            card = self.engine.card
            served = broker_pb2.ServedModel(
                name=card.name, max_context=card.max_context, supports_tools=card.supports_tools
            )
        else:
            served = broker_pb2.ServedModel(name=self.settings.model)
        return broker_pb2.Heartbeat(
            worker_id=self.worker_id,
            models=[served],
            priority=self.settings.priority,
            capacity=self.settings.capacity,
            ready=self._ready,
            running=self._consumer.running if self._consumer is not None else 0,
            hardware_class=self.settings.hardware_class,
        )


async def serve(settings: Settings) -> None:
    """Builds the engine and runs one worker until SIGINT or SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await WorkerService(settings, await build_engine(settings)).run(stopping)


def main(settings: Settings) -> int:
    """The `llm-mesh worker` command; exits 1 when the model cannot be pulled from S3.

    Traced when the `OTEL_*` variables ask for it.
    """
    configure_tracing("llm-mesh-worker")
    try:
        event_loop.run(serve(settings))
    except StorageError as exc:
        logger.error("model %s not available: %s", settings.model, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Settings()))
