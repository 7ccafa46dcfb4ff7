"""The session's one real vLLM worker: an `llm-mesh worker --engine vllm` subprocess.

`conftest.py` owns its lifetime (the `vllm_worker` fixture); tests import `SharedWorker` from
here for its type and its metrics (test directories are not packages; this one is on
`sys.path` because it holds a `conftest.py`).

The worker runs in its own process group, under its own broker prefix. vLLM runs the model in
an engine-core child (`VLLM::EngineCore`, with a `VLLM::Worker` child of its own), so it is
stopped by group and checked to leave nothing behind (`bench.process_mesh`).

It heartbeats every second, and the schedulers that join its prefix should tolerate many
missed beats: a real engine on a busy two-core machine can delay a beat by seconds, and
these tests are about what the model does, not about noticing dead workers (the synthetic
fault tests are).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process
from meshctl._local_broker import delete_stack
from plumbing.topology import Topology

__all__ = [
    "MISSED_HEARTBEATS",
    "MODEL",
    "SharedWorker",
]

MODEL = "smollm2-135m"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: A cold start converts the packaged model (~20 s) and loads it (~20 s) on two busy cores.
START_TIMEOUT = 300.0
#: The worker's grace period plus vLLM's engine shutdown.
STOP_TIMEOUT = 30.0
#: Bound of a wait for a metric.
WAIT_TIMEOUT = 10.0
#: Seconds between the worker's heartbeats (see the module docstring).
HEARTBEAT_INTERVAL = 1.0
#: How many beats the schedulers joining the worker's prefix may miss.
MISSED_HEARTBEATS = 10


@dataclass
class SharedWorker:
    """A running `llm-mesh worker --engine vllm --model smollm2-135m`."""

    prefix: str
    service: ServiceProcess

    @property
    def model(self) -> str:
        return MODEL

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.service.process

    @property
    def worker_id(self) -> str:
        return self.service.fields["worker_id"]

    @property
    def http_url(self) -> str:
        return self.service.http_url

    @property
    def log(self) -> Path:
        return self.service.log

    @property
    def metrics_url(self) -> str:
        return f"{self.http_url}/metrics"

    @classmethod
    async def start(cls, prefix: str, data_dir: Path, log: Path) -> SharedWorker:
        """Starts the worker; returns once it printed its ready line and `/readyz` is 200.

        `data_dir` is `LLM_MESH_DATA_DIR`: the converted model is cached in it.
        """
        service = await start_process(
            "vllm-worker",
            [LLM_MESH, "worker", "--engine=vllm", f"--model={MODEL}", "--http-bind=127.0.0.1:0"],
            environment={
                **os.environ,
                "LLM_MESH_AMQP_URL": AMQP_URL,
                "LLM_MESH_BROKER_PREFIX": prefix,
                "LLM_MESH_DATA_DIR": str(data_dir),
                "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
                "LLM_MESH_WORKER_GRACE_PERIOD": "2",
            },
            # vLLM logs to stdout too: the ready line comes among its lines.
            ready="llm-mesh worker ready:",
            log=log,
            start_timeout=START_TIMEOUT,
        )
        worker = cls(prefix, service)
        assert await service.probe("/readyz") == 200
        return worker

    async def metrics(self) -> dict[str, float]:
        """Every sample of `/metrics`: `name{label="value",...}` → value."""
        return await self.service.metrics()

    async def metric(self, name: str) -> float:
        """One sample (0 when absent), e.g. `llm_mesh_worker_engine_aborted_total`."""
        return await self.service.metric(name)

    async def wait_metric(self, name: str, predicate: Callable[[float], bool]) -> float:
        """Polls one sample until `predicate` holds, within `WAIT_TIMEOUT`; returns its value."""
        return await self.service.wait_metric(name, predicate, within=WAIT_TIMEOUT)

    async def stop(self) -> None:
        """SIGTERM to the group (SIGKILL after `STOP_TIMEOUT`); asserts nothing is left and
        that the worker stopped gracefully (exit status 0)."""
        status = await self.service.stop(grace=STOP_TIMEOUT)
        assert status == 0, f"worker exit {status}: {self.log}"

    async def delete_broker_objects(self) -> None:
        """Deletes what the worker and the schedulers declared under the prefix."""
        await delete_stack(AMQP_URL, Topology(self.prefix), [MODEL])
