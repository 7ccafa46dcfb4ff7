"""`llm-mesh up`: the whole mesh on this machine, in one command.

Checks RabbitMQ at LLM_MESH_AMQP_URL (starting a local one that is installed but stopped),
runs SeaweedFS (S3) on loopback with generated credentials, then `llm-mesh scheduler`,
`llm-mesh worker --model smollm2-135m` and `llm-mesh gateway` (127.0.0.1:8080), each in its
own process group, with their log lines prefixed by their names. The mesh has its own broker
prefix (`llm-mesh-up.` unless LLM_MESH_BROKER_PREFIX is set) and data directory
(LLM_MESH_DATA_DIR). Once the gateway's /readyz answers 200 it prints `URL: <url>` and
`API key: <key>` (a dev key, created on the first run and reused) with usage examples.
Ctrl-C or SIGTERM stops everything and deletes the prefix's queues and exchanges.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from meshctl._supervisor import ServiceExited, Supervisor

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

#: The packaged default model, the one `llm-mesh up` serves (the routing file's default).
MODEL: Final = "smollm2-135m"
#: The broker prefix of `llm-mesh up` when LLM_MESH_BROKER_PREFIX is unset or empty: never
#: the empty prefix of a deployed stack, whose queues `up` deletes when it stops.
DEFAULT_PREFIX: Final = "llm-mesh-up."
#: Where `up` keeps its keys, inside the data directory.
DEV_KEY_FILE: Final = "dev-api-key"
SERVICE_KEY_FILE: Final = "gateway-service-key"
#: The owners of the keys `up` creates.
DEV_KEY_OWNER: Final = "dev"
SERVICE_KEY_OWNER: Final = "llm-mesh-up-gateway"
#: The grace period each service gets from its own settings under `up` (unless set in the
#: environment), shorter than `up`'s own, so the services finish before they are killed.
_SERVICE_GRACE: Final = "5"
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Between two probes of the gateway's /readyz (readiness follows the workers' heartbeats).
_READY_POLL_INTERVAL: Final = 0.25


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `up` command to the `llm-mesh` parser."""
    up = commands.add_parser(
        "up",
        help="run the whole mesh locally (RabbitMQ, S3, scheduler, worker, gateway)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "--engine",
        choices=["vllm", "synthetic"],
        default="vllm",
        help="the worker's engine (default: vllm; synthetic: a fast fake for trying things)",
    )
    up.add_argument("--host", help="gateway listen address (default: LLM_MESH_GATEWAY_HOST)")
    up.add_argument(
        "--port", type=int, help="gateway port, 0 = any free port (default: LLM_MESH_GATEWAY_PORT)"
    )
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the mesh to serve the model (default: 600; the first run "
        "converts the model)",
    )
    up.add_argument(
        "--stop-timeout",
        type=float,
        default=15.0,
        help="seconds the services get to stop before they are killed (default: 15)",
    )
    up.set_defaults(handler=run)


class UpError(Exception):
    """`llm-mesh up` cannot go on; the message tells the user why."""


@dataclass
class Plan:
    """What `up` runs, decided from the options and the `LLM_MESH_*` settings before it starts."""

    engine: str
    amqp_url: str
    prefix: str
    data_dir: Path
    gateway_bind: tuple[str, int]
    scheduler_grpc_bind: str
    scheduler_http_bind: str
    worker_http_bind: str
    ready_timeout: float
    stop_timeout: float
    log_level: str
    environment: dict[str, str] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    """Runs the mesh until SIGINT/SIGTERM. Exit status 0 after a requested stop, 1 when a
    service failed or the mesh could not start, 2 for invalid settings."""
    from pydantic import ValidationError

    # `up`'s own log lines carry its name like the services' do; its readiness polls are noise.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[up] {_LOG_FORMAT}"))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        plan = make_plan(args)
    except ValidationError as exc:
        print(f"llm-mesh up: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except UpError as exc:
        print(f"llm-mesh up: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(LocalMesh(plan).run())


def make_plan(args: argparse.Namespace) -> Plan:
    """Reads the settings of every service from the environment (raising pydantic's
    `ValidationError`, which names the setting) and picks the addresses: the configured ones,
    or free ports where those are taken."""
    from gateway.routing import RoutingError, load_routing
    from gateway.settings import GatewaySettings
    from scheduler.settings import Settings as SchedulerSettings
    from worker.settings import Settings as WorkerSettings

    env = dict(os.environ)
    prefix = env.get("LLM_MESH_BROKER_PREFIX") or DEFAULT_PREFIX
    env["LLM_MESH_BROKER_PREFIX"] = prefix
    gateway = GatewaySettings()
    scheduler = SchedulerSettings()
    worker = WorkerSettings()
    data_dir = gateway.mesh.data_dir.expanduser().resolve()
    try:
        routing = load_routing(gateway.mesh.models)
    except RoutingError as exc:
        raise UpError(str(exc)) from None
    # The gateway is ready only when every self-hosted model has a worker: `up` runs one.
    unserved = sorted(set(routing.self_hosted()) - {MODEL})
    if unserved:
        raise UpError(
            f"the routing file {gateway.mesh.models} has self-hosted models llm-mesh up does "
            f"not run a worker for: {', '.join(unserved)} (it serves {MODEL}); unset "
            "LLM_MESH_MODELS, or run those workers with `llm-mesh worker --model NAME`."
        )
    host = args.host if args.host is not None else gateway.host
    port = args.port if args.port is not None else gateway.port
    if port != 0 and not _bindable(host, port):
        raise UpError(
            f"{host}:{port} is already in use: stop what listens there, or run "
            "`llm-mesh up --port 0` (any free port) or `--port N`."
        )
    env.update(
        {
            "LLM_MESH_DATA_DIR": str(data_dir),
            # Every line as it is written, so the prefixed logs interleave in order.
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name in (
        "LLM_MESH_SCHEDULER_GRACE_PERIOD",
        "LLM_MESH_WORKER_GRACE_PERIOD",
        "LLM_MESH_GATEWAY_SHUTDOWN_GRACE",
    ):
        env.setdefault(name, _SERVICE_GRACE)
    return Plan(
        engine=args.engine,
        amqp_url=gateway.mesh.amqp_url,
        prefix=prefix,
        data_dir=data_dir,
        gateway_bind=(host, port),
        scheduler_grpc_bind=_free_if_taken(scheduler.grpc_bind),
        scheduler_http_bind=_free_if_taken(scheduler.http_bind),
        worker_http_bind=_free_if_taken(worker.http_bind),
        ready_timeout=args.ready_timeout,
        stop_timeout=args.stop_timeout,
        log_level=args.log_level,
        environment=env,
    )


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_if_taken(bind: str) -> str:
    """`bind` when its port is free (or 0), else the same host with port 0 (any free port)."""
    from plumbing.probes import parse_bind

    host, port = parse_bind(bind)
    if port == 0 or _bindable(host, port):
        return bind
    return f"{host}:0" if ":" not in host else f"[{host}]:0"


class LocalMesh:
    """One `llm-mesh up` run: `run` returns its exit status (see `run` above)."""

    def __init__(self, plan: Plan, *, out: TextIO | None = None, sink: TextIO | None = None):
        self.plan = plan
        self._out = out or sys.stdout
        self._sink = sink or sys.stderr
        self._supervisor: Supervisor | None = None
        self._stop_requested = False

    async def run(self) -> int:
        """Starts the mesh, serves until a signal, stops it; returns the exit status."""
        loop = asyncio.get_running_loop()
        life = asyncio.create_task(self._life())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._interrupt, life)
        try:
            await asyncio.wait({life})
        except BaseException:
            life.cancel()
            await asyncio.wait({life})
            raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if life.cancelled():
            logger.info("stopped")
            return 0
        error = life.exception()
        if error is None:
            return 0
        from meshctl._local_broker import BrokerUnavailable
        from plumbing.s3_server import S3ServerError

        known = (UpError, BrokerUnavailable, ServiceExited, S3ServerError)
        failures = error.exceptions if isinstance(error, BaseExceptionGroup) else (error,)
        if all(isinstance(failure, known) for failure in failures):
            for failure in failures:
                logger.error("llm-mesh up failed: %s", failure)
            return 1
        raise error

    def _interrupt(self, life: asyncio.Task[None]) -> None:
        """First signal: stop gracefully. Later ones: kill what is still stopping."""
        supervisor = self._supervisor
        stopping = supervisor is not None and supervisor.stopping
        if not self._stop_requested and not stopping:
            self._stop_requested = True
            logger.info("stopping (Ctrl-C again to kill the services at once)")
            life.cancel()
        elif supervisor is not None:
            logger.warning("killing the services")
            supervisor.kill()

    async def _life(self) -> None:
        """Everything between start and stop; cancelled by the first signal."""
        from meshctl._local_broker import delete_stack, ensure_broker
        from plumbing.s3_server import S3Server
        from plumbing.topology import Topology

        plan = self.plan
        await ensure_broker(plan.amqp_url, environment=plan.environment)
        dev_key, service_key = await asyncio.to_thread(self._keys)
        logger.info("data directory %s, broker prefix %r", plan.data_dir, plan.prefix)
        try:
            async with S3Server(plan.data_dir / "seaweedfs") as s3:
                logger.info("S3 (SeaweedFS) at http://%s", s3.endpoint)
                environment = {**plan.environment, **s3.environment()}
                program = [sys.executable, "-m", "meshctl.main", "--log-level", plan.log_level]
                supervisor = Supervisor(program, sink=self._sink, grace=plan.stop_timeout)
                self._supervisor = supervisor
                async with supervisor, asyncio.TaskGroup() as tasks:
                    tasks.create_task(supervisor.watch())
                    url, grpc_target = await self._start(supervisor, environment, service_key)
                    self._banner(url, grpc_target, dev_key)
                    await asyncio.Event().wait()  # serve until cancelled
        finally:
            try:
                await delete_stack(plan.amqp_url, Topology(plan.prefix), [MODEL])
                logger.info("deleted the queues and exchanges of prefix %r", plan.prefix)
            except Exception as exc:  # the stop goes on; the user is told what remains
                logger.error(
                    "could not delete the broker objects of prefix %r: %r", plan.prefix, exc
                )

    def _keys(self) -> tuple[str, str]:
        """The dev key and the gateway's service credential, stored in the data directory."""
        from meshctl._stored_keys import stored_key
        from plumbing.keystore import Keystore
        from plumbing.settings import MeshSettings

        settings = MeshSettings(data_dir=self.plan.data_dir)
        keystore = Keystore.from_settings(settings)
        try:
            dev_key = stored_key(keystore, self.plan.data_dir / DEV_KEY_FILE, owner=DEV_KEY_OWNER)
            service_key = stored_key(
                keystore,
                self.plan.data_dir / SERVICE_KEY_FILE,
                owner=SERVICE_KEY_OWNER,
                service=True,
            )
        finally:
            keystore.close()
        return dev_key, service_key

    async def _start(
        self, supervisor: Supervisor, environment: dict[str, str], service_key: str
    ) -> tuple[str, str]:
        """Starts the services in order; once the gateway's /readyz says 200, returns its URL
        and the scheduler's gRPC address."""
        import httpx

        plan = self.plan
        waiting_for = "the scheduler"
        try:
            async with asyncio.timeout(plan.ready_timeout):
                scheduler = await supervisor.start(
                    "scheduler",
                    [
                        "scheduler",
                        "--grpc-bind",
                        plan.scheduler_grpc_bind,
                        "--http-bind",
                        plan.scheduler_http_bind,
                    ],
                    environment=environment,
                    ready="llm-mesh scheduler ready:",
                )
                target = re.search(r"grpc=(\S+)", await scheduler.ready())
                if target is None:
                    raise UpError("the scheduler did not announce its gRPC address")
                if plan.engine == "vllm":
                    logger.info(
                        "starting the vLLM worker: its first start converts the model into the "
                        "data directory; expect a minute or two"
                    )
                worker = await supervisor.start(
                    "worker",
                    [
                        "worker",
                        "--model",
                        MODEL,
                        "--engine",
                        plan.engine,
                        "--http-bind",
                        plan.worker_http_bind,
                    ],
                    environment=environment,
                    ready="llm-mesh worker ready:",
                )
                host, port = plan.gateway_bind
                gateway = await supervisor.start(
                    "gateway",
                    ["gateway", "--host", host, "--port", str(port)],
                    environment={
                        **environment,
                        "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": target.group(1),
                        "LLM_MESH_GATEWAY_SERVICE_CREDENTIAL": service_key,
                    },
                    ready="llm-mesh gateway ready:",
                )
                waiting_for = "the gateway"
                url = (await gateway.ready()).split("ready:", 1)[1].strip()
                waiting_for = "the worker"
                await worker.ready()
                waiting_for = f"{url}/readyz"
                async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
                    while True:
                        try:
                            answer = await client.get("/readyz")
                        except httpx.TransportError as exc:
                            waiting_for = f"{url}/readyz (last: {exc!r})"
                        else:
                            if answer.status_code == 200:
                                return url, target.group(1)
                            waiting_for = f"{url}/readyz (last: {answer.text})"
                        await asyncio.sleep(_READY_POLL_INTERVAL)
        except TimeoutError:
            raise UpError(
                f"gave up waiting for {waiting_for} after {plan.ready_timeout:g} s "
                "(--ready-timeout); its log lines above may say why"
            ) from None

    def _banner(self, url: str, grpc_target: str, api_key: str) -> None:
        base_url = f"{url}/v1"
        self._out.write(
            f"""
llm-mesh is up: {MODEL} served by the {self.plan.engine} engine.
URL: {url}
API key: {api_key}
gRPC (scheduler, same key): {grpc_target}

Try it with curl:
  curl -N {base_url}/chat/completions \\
    -H "Authorization: Bearer {api_key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{MODEL}", "stream": true,
         "messages": [{{"role": "user", "content": "Say hello"}}]}}'

or with the openai SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{api_key}")
  stream = client.chat.completions.create(
      model="{MODEL}",
      messages=[{{"role": "user", "content": "Say hello"}}],
      stream=True,
  )
  for chunk in stream:
      if chunk.choices:
          print(chunk.choices[0].delta.content or "", end="", flush=True)

The key is kept in {self.plan.data_dir / DEV_KEY_FILE}. Press Ctrl-C to stop.
"""
        )
        self._out.flush()
