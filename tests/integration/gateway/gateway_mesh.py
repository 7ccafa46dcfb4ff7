"""The meshes behind the gateway tests: scheduler subprocesses, workers, keys, gateways.

`conftest.py` registers the fixtures; tests import the helpers from here (a unique module name:
test directories are not packages).

Two meshes, each with its own scheduler, data directory (keys, ledger) and gateway:
- `mesh` / `gateway` / `api_key`: a synthetic worker of its own (`--engine synthetic`) under a
  broker prefix of its own — for many requests, fuzzing, timing, quotas, faults;
- `real_mesh` / `real_gateway` / `real_api_key`: the session's shared real vLLM worker
  (`vllm_worker`, `../conftest.py`), whose broker prefix the scheduler joins — for every
  test of what the model outputs.

Processes run in their own process groups (`bench.process_mesh`) and are stopped by group at
the end, leaving nothing behind; the broker objects a mesh declared are deleted (those of the
real mesh's prefix by `vllm_worker`).
"""

from __future__ import annotations

import os
import signal
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from shared_worker import MISSED_HEARTBEATS, SharedWorker

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process, wait_until
from meshctl._local_broker import delete_stack
from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from plumbing.topology import Topology

MODEL = "smollm2-135m"
#: Bound of every process start-up and readiness wait.
START_TIMEOUT = 60.0


async def _start(
    args: list[str], *, env: Mapping[str, str], ready: str, log: Path
) -> ServiceProcess:
    """Starts `llm-mesh ARGS`; returns once it printed a line starting with `ready`."""
    return await start_process(
        log.stem,
        [LLM_MESH, *args],
        environment={**os.environ, **env},
        ready=ready,
        log=log,
        start_timeout=START_TIMEOUT,
    )


@dataclass
class Mesh:
    """A running scheduler and the worker behind it."""

    prefix: str
    scheduler_target: str
    worker_metrics_url: str
    base_env: dict[str, str]
    #: The gateway's service credential: the scheduler requires an API key on every call.
    service_key: str
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def keystore_url(self) -> str:
        """The SQLite keys/usage database in the mesh's data directory (the default)."""
        return _sqlite_url(self.base_env["LLM_MESH_DATA_DIR"])


def _sqlite_url(data_dir: str) -> str:
    return f"sqlite:///{Path(data_dir) / 'llm-mesh.sqlite3'}"


async def _wait_for_model(target: str, model: str, api_key: str) -> None:
    async with SchedulerClient(target, api_key=api_key) as client:

        async def served() -> bool:
            models = await client.list_models()
            return any(info.name == model and info.ready_workers > 0 for info in models)

        await wait_until(served, within=START_TIMEOUT)


@asynccontextmanager
async def _running_mesh(
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    shared_worker: SharedWorker | None,
) -> AsyncIterator[Mesh]:
    """`llm-mesh scheduler` on `prefix`, and `llm-mesh worker --engine synthetic` unless
    `shared_worker` already serves the model under that prefix."""
    logs = tmp_path_factory.mktemp("mesh-logs")
    base_env = {
        "LLM_MESH_BROKER_PREFIX": prefix,
        "LLM_MESH_DATA_DIR": str(tmp_path_factory.mktemp("mesh-data")),
        "LLM_MESH_SCHEDULER_DISCOVERY_PERIOD": "0",
        "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.5",
        # Short generations whatever a request asks (the fuzzer asks for anything).
        "LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL": "0.005",
        "LLM_MESH_WORKER_SYNTHETIC_MAX_CONTEXT": "512",
        "LLM_MESH_WORKER_GRACE_PERIOD": "2",
    }
    if shared_worker is not None:
        base_env["LLM_MESH_SCHEDULER_MISSED_HEARTBEATS"] = str(MISSED_HEARTBEATS)
    keystore = Keystore.open(_sqlite_url(base_env["LLM_MESH_DATA_DIR"]))
    service_key, _ = keystore.create_key("gateway", service=True)
    keystore.close()
    processes: list[ServiceProcess] = []
    try:
        scheduler = await _start(
            ["scheduler", "--grpc-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"],
            env=base_env,
            ready="llm-mesh scheduler ready:",
            log=logs / "scheduler.log",
        )
        processes.append(scheduler)
        if shared_worker is None:
            worker = await _start(
                [
                    "worker",
                    "--engine",
                    "synthetic",
                    "--model",
                    MODEL,
                    "--http-bind",
                    "127.0.0.1:0",
                ],
                env=base_env,
                ready="llm-mesh worker ready:",
                log=logs / "worker.log",
            )
            processes.append(worker)
            metrics_url = f"{worker.http_url}/metrics"
        else:
            metrics_url = shared_worker.metrics_url
        await _wait_for_model(scheduler.grpc_target, MODEL, service_key)
        yield Mesh(
            prefix=prefix,
            scheduler_target=scheduler.grpc_target,
            worker_metrics_url=metrics_url,
            base_env=base_env,
            service_key=service_key,
            processes=processes,
        )
    finally:
        for process in reversed(processes):
            await process.stop()
        if shared_worker is None:
            await delete_stack(
                os.environ.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
                Topology(prefix),
                [MODEL],
            )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """`llm-mesh scheduler` and a synthetic `llm-mesh worker` for the session."""
    async with _running_mesh(
        f"test-{uuid.uuid4().hex[:8]}.", tmp_path_factory, shared_worker=None
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def real_mesh(
    tmp_path_factory: pytest.TempPathFactory, vllm_worker: SharedWorker
) -> AsyncIterator[Mesh]:
    """`llm-mesh scheduler` on the prefix of the session's real vLLM worker."""
    assert vllm_worker.model == MODEL
    async with _running_mesh(
        vllm_worker.prefix, tmp_path_factory, shared_worker=vllm_worker
    ) as running:
        yield running


@dataclass
class Gateway:
    """A running `llm-mesh gateway` and the database it records to."""

    process: ServiceProcess
    url: str
    keystore: Keystore


async def start_gateway(
    mesh: Mesh,
    keystore: Keystore,
    log: Path,
    *,
    database_url: str = "",
    scheduler_target: str | None = None,
    service_credential: str = "",
    extra_env: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Gateway:
    """Starts a gateway subprocess on a free port in front of the mesh."""
    env = {
        **mesh.base_env,
        "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": scheduler_target or mesh.scheduler_target,
        "LLM_MESH_GATEWAY_PING_INTERVAL": "1",
        "LLM_MESH_GATEWAY_SSE_SEND_TIMEOUT": "5",
        "LLM_MESH_DATABASE_URL": database_url,
        "LLM_MESH_GATEWAY_SERVICE_CREDENTIAL": service_credential or mesh.service_key,
        **(extra_env or {}),
    }
    process = await _start(
        ["gateway", "--port", "0"], env=env, ready="llm-mesh gateway ready:", log=log
    )
    # Readiness follows the worker's heartbeats.
    await process.wait_http_ok(f"{process.http_url}/readyz", within=START_TIMEOUT, verify=verify)
    return Gateway(process=process, url=process.http_url, keystore=keystore)


@pytest.fixture(scope="session")
def sqlite_keystore(mesh: Mesh) -> Iterator[Keystore]:
    """The synthetic mesh's SQLite keys/usage database (the gateway's default)."""
    keystore = Keystore.open(mesh.keystore_url)
    yield keystore
    keystore.close()


@asynccontextmanager
async def _session_gateway(
    mesh: Mesh, keystore: Keystore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    running = await start_gateway(
        mesh, keystore, tmp_path_factory.mktemp("gateway") / "gateway.log"
    )
    yield running
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert await running.process.stop() in (0, -signal.SIGTERM)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(
    mesh: Mesh, sqlite_keystore: Keystore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """One gateway for the session, SQLite ledger, in front of the synthetic mesh."""
    async with _session_gateway(mesh, sqlite_keystore, tmp_path_factory) as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def real_gateway(
    real_mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """One gateway for the session, SQLite ledger, in front of the real model."""
    keystore = Keystore.open(real_mesh.keystore_url)
    try:
        async with _session_gateway(real_mesh, keystore, tmp_path_factory) as running:
            yield running
    finally:
        keystore.close()


@pytest.fixture
def api_key(gateway: Gateway) -> str:
    """A fresh key without limits, for the synthetic mesh's gateway."""
    key, _ = gateway.keystore.create_key(f"test-{uuid.uuid4().hex[:6]}")
    return key


@pytest.fixture
def real_api_key(real_gateway: Gateway) -> str:
    """A fresh key without limits, for the real model's gateway."""
    key, _ = real_gateway.keystore.create_key(f"test-{uuid.uuid4().hex[:6]}")
    return key
