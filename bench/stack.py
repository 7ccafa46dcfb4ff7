"""The processes under test in the overhead benchmark, started and stopped as one stack.

- the fake upstream (`bench/fake_upstream.py`);
- llm-mesh: a scheduler, a worker (synthetic engine at the upstream's token rate, or vLLM),
  a gateway whose routing file sends one model to the fake upstream through the OpenAI
  adapter and serves another self-hosted; keys in a fresh SQLite database; the broker
  objects under a private prefix on the machine's RabbitMQ, deleted at the end;
- LiteLLM's proxy from its own venv (`bench/setup-litellm.sh`), one worker, no database,
  callbacks off, in front of the same upstream;
- vLLM's own OpenAI server (real-model mode).

Every process runs in its own process group (vLLM spawns an engine-core child) and is
stopped by group: SIGTERM, then SIGKILL after a bound (`bench.process_mesh`). CPU time is read
per process tree with psutil.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process
from meshctl._local_broker import delete_stack
from plumbing.keystore import Keystore
from plumbing.topology import Topology

__all__ = [
    "LITELLM_VENV",
    "MeshStack",
    "cpu_seconds",
    "rabbitmq_pids",
    "start_litellm",
    "start_upstream",
    "start_vllm_server",
]

BENCH: Final = Path(__file__).resolve().parent
PYTHON: Final = sys.executable
LITELLM_VENV: Final = BENCH / ".venv-litellm"
AMQP_URL: Final = os.environ.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: Routing names inside the benchmark's gateway.
UPSTREAM_MODEL: Final = "bench-upstream"
SYNTHETIC_MODEL: Final = "bench-synthetic"
_START_TIMEOUT: Final = 120.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (vanished ones count 0)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rabbitmq_pids() -> list[int]:
    """The machine's RabbitMQ: the longest-running Erlang VM (tests may start others)."""
    brokers = [
        process
        for process in psutil.process_iter(["name", "create_time"])
        if process.info["name"] == "beam.smp"
    ]
    if not brokers:
        return []
    return [min(brokers, key=lambda process: process.info["create_time"]).pid]


def free_port() -> int:
    """A port free now on 127.0.0.1 (for servers that cannot report the one they bound)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _start(
    name: str, argv: list[str], env: Mapping[str, str], logs: Path, *, ready: str | None = None
) -> ServiceProcess:
    """Starts a process group logging to `logs/<name>.log`; with `ready`, once it printed it."""
    return await start_process(
        name,
        argv,
        # No database for LiteLLM, whatever the caller's environment says.
        environment={**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **env},
        ready=ready,
        log=logs / f"{name}.log",
        start_timeout=_START_TIMEOUT,
    )


async def _await_http(service: ServiceProcess, url: str, limit: float = _START_TIMEOUT) -> None:
    """Waits until `url` answers 200 within `limit` seconds (servers without a ready line);
    stops the service if it does not."""
    try:
        await service.wait_http_ok(url, within=limit)
    except BaseException:
        await service.stop()
        raise


async def start_upstream(logs: Path, *, tokens: int, interval: float) -> tuple[ServiceProcess, str]:
    """The fake upstream; returns it and its base URL."""
    service = await _start(
        "upstream",
        [
            PYTHON,
            str(BENCH / "fake_upstream.py"),
            "--port=0",
            f"--tokens={tokens}",
            f"--interval={interval}",
        ],
        {},
        logs,
        ready="fake upstream ready:",
    )
    return service, service.http_url


async def start_litellm(logs: Path, upstream_url: str) -> tuple[ServiceProcess, str, str]:
    """LiteLLM's proxy routing `bench-upstream` to the upstream; returns it, its URL and its
    master key (it refuses to start without one; without a database that is its only key)."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        raise FileNotFoundError(f"{executable} missing: run bash bench/setup-litellm.sh")
    config = logs / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {UPSTREAM_MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/fake\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
    )
    port = free_port()
    master_key = f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    service = await _start(
        "litellm",
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": master_key,
            "LITELLM_LOG": "ERROR",
            "DISABLE_SCHEMA_UPDATE": "True",
        },
        logs,
    )
    url = f"http://127.0.0.1:{port}"
    await _await_http(service, f"{url}/health/liveliness")
    return service, url, master_key


async def start_vllm_server(
    logs: Path, model_dir: Path, *, served_name: str, max_num_seqs: int, dtype: str
) -> tuple[ServiceProcess, str]:
    """vLLM's own OpenAI server on the model directory, set up as `worker.engine` sets up
    the worker's engine (same dtype, KV cache, eager mode, seed, thread binding)."""
    port = free_port()
    service = await _start(
        "vllm-server",
        [
            PYTHON,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            served_name,
            "--dtype",
            dtype,
            "--max-num-seqs",
            str(max_num_seqs),
            "--kv-cache-memory-bytes",
            str(1 << 30),
            "--enforce-eager",
            "--seed",
            "0",
            "--disable-log-stats",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1"),
        },
        logs,
    )
    url = f"http://127.0.0.1:{port}"
    await _await_http(service, f"{url}/health", limit=600.0)
    return service, url


@dataclass
class MeshStack:
    """llm-mesh's scheduler, worker and gateway under a private broker prefix."""

    logs: Path
    data_dir: Path
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}.")
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    gateway_url: str = ""
    scheduler_target: str = ""
    #: A client key without limits (metered by the gateway like any user's).
    api_key: str = ""
    #: The gateway's service credential (the scheduler does not meter it).
    service_key: str = ""
    _exits: AsyncExitStack = field(default_factory=AsyncExitStack)

    def _env(self) -> dict[str, str]:
        return {
            "LLM_MESH_BROKER_PREFIX": self.prefix,
            "LLM_MESH_DATA_DIR": str(self.data_dir),
            "LLM_MESH_DATABASE_URL": "",
            "LLM_MESH_SCHEDULER_DISCOVERY_PERIOD": "0",
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.5",
        }

    async def start(
        self,
        *,
        model: str,
        engine: str,
        capacity: int,
        worker_env: Mapping[str, str],
        upstream_url: str | None,
    ) -> None:
        """Starts scheduler, worker (`engine` serving `model`) and gateway; waits until ready.

        With `upstream_url`, the gateway also routes `bench-upstream` there (OpenAI adapter).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keystore = Keystore.open(f"sqlite:///{self.data_dir / 'llm-mesh.sqlite3'}")
        try:
            self.service_key, _ = keystore.create_key("bench-gateway", service=True)
            self.api_key, _ = keystore.create_key("bench-client")
        finally:
            keystore.close()
        self._exits.push_async_callback(self._delete_broker_objects, model)
        env = self._env()
        scheduler = await self._start(
            "scheduler",
            ["scheduler", "--grpc-bind=127.0.0.1:0", "--http-bind=127.0.0.1:0"],
            env,
            "llm-mesh scheduler ready:",
        )
        self.scheduler_target = scheduler.grpc_target
        await self._start(
            "worker",
            [
                "worker",
                f"--engine={engine}",
                f"--model={model}",
                f"--capacity={capacity}",
                "--http-bind=127.0.0.1:0",
            ],
            {**env, **worker_env},
            "llm-mesh worker ready:",
        )
        routing = self.logs / "routing.yaml"
        lines = ["models:", f"  {model}: {{backend: self_hosted}}"]
        if upstream_url is not None:
            lines += [
                f"  {UPSTREAM_MODEL}:",
                "    backend: openai",
                "    upstream_model: fake",
                f"    base_url: {upstream_url}/v1",
                "    api_key_env: BENCH_UPSTREAM_API_KEY",
            ]
        routing.write_text("\n".join(lines) + "\n")
        gateway = await self._start(
            "gateway",
            ["gateway", "--port=0"],
            {
                **env,
                "LLM_MESH_MODELS": str(routing),
                "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": self.scheduler_target,
                "LLM_MESH_GATEWAY_SERVICE_CREDENTIAL": self.service_key,
                "BENCH_UPSTREAM_API_KEY": "bench",
            },
            "llm-mesh gateway ready:",
        )
        self.gateway_url = gateway.http_url
        # Ready = the worker's heartbeat reached the scheduler.
        await _await_http(gateway, f"{self.gateway_url}/readyz")

    async def _start(
        self, name: str, arguments: list[str], env: Mapping[str, str], ready: str
    ) -> ServiceProcess:
        argv = [LLM_MESH, "--log-level=WARNING", *arguments]
        service = await _start(name, argv, env, self.logs, ready=ready)
        self._exits.push_async_callback(service.stop)
        self.services[name] = service
        return service

    async def _delete_broker_objects(self, model: str) -> None:
        await delete_stack(AMQP_URL, Topology(self.prefix), [model])

    async def aclose(self) -> None:
        """Stops every process (gateway first) and deletes the broker objects."""
        await self._exits.aclose()
