"""The session's one real vLLM worker: an `llm-mesh worker --engine vllm` subprocess.

`conftest.py` owns its lifetime (the `vllm_worker` fixture); tests import `SharedWorker` from
here for its type and its metrics (test directories are not packages; this one is on
`sys.path` because it holds a `conftest.py`).

The worker runs in its own process group, under its own broker prefix. vLLM runs the model in
an engine-core child (`VLLM::EngineCore`, with a `VLLM::Worker` child of its own), so it is
stopped by group and checked to leave nothing behind (`process_groups.stop_group`).

It heartbeats every second, and the schedulers that join its prefix should tolerate many
missed beats: a real engine on a busy two-core machine can delay a beat by seconds, and
these tests are about what the model does, not about noticing dead workers (the synthetic
fault tests are).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aio_pika
import httpx
import psutil
from process_groups import stop_group
from prometheus_client.parser import text_string_to_metric_families

from plumbing.topology import Topology

__all__ = [
    "MISSED_HEARTBEATS",
    "MODEL",
    "SharedWorker",
    "assert_no_vllm_engine",
    "vllm_engines",
]

MODEL = "smollm2-135m"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_LLM_MESH = str(Path(sys.executable).with_name("llm-mesh"))
_READY = "llm-mesh worker ready:"
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
_POLL_INTERVAL = 0.05


def vllm_engines() -> list[psutil.Process]:
    """Live vLLM engine processes descended from this one (an in-process engine's children,
    or a worker subprocess's). vLLM titles them `VLLM::EngineCore`, `VLLM::Worker`."""
    engines = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and any(
                part.startswith("VLLM::") for part in process.cmdline()
            ):
                engines.append(process)
        except psutil.NoSuchProcess:
            continue
    return engines


def assert_no_vllm_engine(starting: str) -> None:
    """Fails when a vLLM engine already runs in this session: two do not fit two cores."""
    running = vllm_engines()
    assert not running, (
        f"{starting} would be a second vLLM engine beside {[p.pid for p in running]}"
    )


@dataclass
class SharedWorker:
    """A running `llm-mesh worker --engine vllm --model smollm2-135m`."""

    prefix: str
    worker_id: str
    http_url: str
    log: Path
    process: asyncio.subprocess.Process
    _pump: asyncio.Task[None]
    _descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def model(self) -> str:
        return MODEL

    @property
    def metrics_url(self) -> str:
        return f"{self.http_url}/metrics"

    @classmethod
    async def start(cls, prefix: str, data_dir: Path, log: Path) -> SharedWorker:
        """Starts the worker; returns once it printed its ready line and `/readyz` is 200.

        `data_dir` is `LLM_MESH_DATA_DIR`: the converted model is cached in it.
        """
        env = {
            **os.environ,
            "LLM_MESH_AMQP_URL": AMQP_URL,
            "LLM_MESH_BROKER_PREFIX": prefix,
            "LLM_MESH_DATA_DIR": str(data_dir),
            "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "LLM_MESH_WORKER_GRACE_PERIOD": "2",
        }
        process = await asyncio.create_subprocess_exec(
            _LLM_MESH,
            "worker",
            "--engine=vllm",
            f"--model={MODEL}",
            "--http-bind=127.0.0.1:0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # vLLM logs to stdout too: keep reading it for the worker's whole life (a full pipe
        # would block the worker), copying every line to the log.
        pump = asyncio.create_task(_pump_output(process, log.open("wb"), ready))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = await ready
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            await pump
            raise
        fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split())
        worker = cls(
            prefix=prefix,
            worker_id=fields["worker_id"],
            http_url=fields["http"].rstrip("/"),
            log=log,
            process=process,
            _pump=pump,
            _descendants=psutil.Process(process.pid).children(recursive=True),
        )
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{worker.http_url}/readyz", timeout=5)).status_code == 200
        return worker

    async def metrics(self) -> dict[str, float]:
        """Every sample of `/metrics`: `name{label="value",...}` → value."""
        async with httpx.AsyncClient() as http:
            response = await http.get(self.metrics_url, timeout=5)
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
        """One sample (0 when absent), e.g. `llm_mesh_worker_engine_aborted_total`."""
        return (await self.metrics()).get(name, 0.0)

    async def wait_metric(self, name: str, predicate: Callable[[float], bool]) -> float:
        """Polls one sample until `predicate` holds, within `WAIT_TIMEOUT`; returns its value.

        Another process's counter has no event to await: this polls.
        """
        async with asyncio.timeout(WAIT_TIMEOUT):
            while True:
                value = await self.metric(name)
                if predicate(value):
                    return value
                await asyncio.sleep(_POLL_INTERVAL)

    async def stop(self) -> None:
        """SIGTERM to the group (SIGKILL after `STOP_TIMEOUT`); asserts nothing is left and
        that the worker stopped gracefully (exit status 0)."""
        try:
            await stop_group(self.process, stop_timeout=STOP_TIMEOUT, descendants=self._descendants)
        finally:
            await self._pump
        assert self.process.returncode == 0, f"worker exit {self.process.returncode}: {self.log}"

    async def delete_broker_objects(self) -> None:
        """Deletes what the worker and the schedulers declared under the prefix."""
        topology = Topology(self.prefix)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for queue in (topology.task_queue(MODEL), topology.dead_letter_queue):
                await channel.queue_delete(queue, if_unused=False, if_empty=False)
            for exchange in (
                topology.tasks_exchange,
                topology.dead_letter_exchange,
                topology.control_exchange,
            ):
                await channel.exchange_delete(exchange)


async def _pump_output(
    process: asyncio.subprocess.Process, log: IO[bytes], ready: asyncio.Future[str]
) -> None:
    assert process.stdout is not None
    with log:
        async for line in process.stdout:
            log.write(line)
            log.flush()
            text = line.decode(errors="replace")
            if not ready.done() and text.startswith(_READY):
                ready.set_result(text.strip())
    if not ready.done():
        ready.set_exception(RuntimeError(f"the vLLM worker exited before it was ready: {log.name}"))
