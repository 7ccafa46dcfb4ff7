"""What the mesh adds to a request: gRPC + scheduler + RabbitMQ + worker vs the engine in-process.

Not a test. Starts a scheduler and a synthetic worker (`llm-mesh scheduler`, `llm-mesh worker
--engine synthetic`) under a private broker prefix on the machine's RabbitMQ, then, at each
concurrency level, runs the same requests against the same fixed-rate synthetic engine twice:
in this process (direct) and through the mesh. Prints per level:

- TTFT: time to the first token, p50 direct and through the mesh, and the p50/p95 added;
- per-token overhead: (mesh p50 total - direct p50 total) / tokens;
- throughput: requests per second through the mesh over direct;
- CPU per request of the scheduler, the worker and RabbitMQ (from /proc; the worker's
  includes its synthetic engine, which costs the same in-process).

    .venv/bin/python bench/request_path.py [--requests 200] [--tokens 32] [--interval 0.002]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from llmmesh.v1 import chat_pb2

from plumbing.client import SchedulerClient
from worker.engine_protocol import ModelCard
from worker.synthetic import SyntheticEngine

MODEL = "bench-synthetic"
LLM_MESH = Path(sys.executable).with_name("llm-mesh")
AMQP_URL = os.environ.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One request: seconds to the first token and to the end."""

    ttft: float
    total: float


def _request(number: int, tokens: int) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model=MODEL,
        messages=[
            chat_pb2.Message(
                role=chat_pb2.ROLE_USER,
                content=[chat_pb2.ContentPart(text=f"benchmark request number {number}")],
            )
        ],
        generation_parameters=chat_pb2.GenerationParameters(max_tokens=tokens, ignore_eos=True),
    )


async def _direct(engine: SyntheticEngine, request: chat_pb2.ChatRequest) -> Sample:
    started = time.perf_counter()
    ttft = 0.0
    prepared = await engine.prepare(uuid.uuid4().hex, request)
    async for output in engine.generate(prepared):
        if not ttft and any(event.HasField("sequence_delta") for event in output.events):
            ttft = time.perf_counter() - started
    return Sample(ttft, time.perf_counter() - started)


async def _mesh(client: SchedulerClient, request: chat_pb2.ChatRequest) -> Sample:
    started = time.perf_counter()
    ttft = 0.0
    async for event in client.generate(request):
        if not ttft and event.HasField("sequence_delta"):
            ttft = time.perf_counter() - started
        if event.HasField("error"):
            raise RuntimeError(f"stream failed: {event.error}")
    return Sample(ttft, time.perf_counter() - started)


async def _level(
    run: Callable[[chat_pb2.ChatRequest], Awaitable[Sample]],
    concurrency: int,
    requests: int,
    tokens: int,
) -> tuple[list[Sample], float]:
    """Runs `requests` requests, `concurrency` at a time; returns samples and wall time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(number: int) -> Sample:
        async with slots:
            return await run(_request(number, tokens))

    started = time.perf_counter()
    samples = await asyncio.gather(*(one(number) for number in range(requests)))
    return samples, time.perf_counter() - started


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _rabbitmq_pids() -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/comm"):
        try:
            if status.read_text().strip() == "beam.smp":
                pids.append(int(status.parent.name))
        except OSError:
            continue
    return pids


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _start(
    arguments: list[str], env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        str(LLM_MESH),
        "--log-level=WARNING",
        *arguments,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = (await process.stdout.readline()).decode()
    if "ready:" not in line:
        raise RuntimeError(f"{arguments[0]} did not start: {line!r}")
    return process, line


async def _cleanup_broker(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{prefix}llm.tasks.{MODEL}", f"{prefix}llm.dead"):
            await channel.queue_delete(queue, if_unused=False, if_empty=False)
        for exchange in ("llm.tasks", "llm.dlx", "llm.control"):
            await channel.exchange_delete(prefix + exchange)


async def main(arguments: argparse.Namespace) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "LLM_MESH_BROKER_PREFIX": prefix,
        "LLM_MESH_SCHEDULER_DISCOVERY_PERIOD": "0",
        "LLM_MESH_WORKER_HTTP_BIND": "127.0.0.1:0",
        "LLM_MESH_WORKER_CAPACITY": str(max(arguments.concurrency)),
        "LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL": str(arguments.interval),
        "LLM_MESH_WORKER_SYNTHETIC_TOKENS": str(arguments.tokens),
    }
    scheduler, line = await _start(
        ["scheduler", "--grpc-bind=127.0.0.1:0", "--http-bind=127.0.0.1:0"], env
    )
    target = line.split("grpc=")[1].split()[0]
    worker, _ = await _start(["worker", "--engine=synthetic", f"--model={MODEL}"], env)
    engine = SyntheticEngine(
        ModelCard(MODEL, max_context=2048, supports_tools=False),
        tokens=arguments.tokens,
        token_interval=arguments.interval,
    )
    rabbitmq_pids = _rabbitmq_pids()
    try:
        async with SchedulerClient(target) as client:
            async with asyncio.timeout(30):
                # The worker's ready heartbeat reaches the scheduler shortly after it started.
                while not await client.list_models():  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.1)
            await _level(lambda request: _mesh(client, request), 4, 20, arguments.tokens)
            print(
                f"{arguments.requests} requests per level, {arguments.tokens} tokens at "
                f"{arguments.interval * 1000:g} ms (synthetic engine), {os.cpu_count()} cores\n"
            )
            print(
                "| concurrency | TTFT p50 direct | TTFT p50 mesh | TTFT added p50 / p95 "
                "| per-token overhead | throughput vs direct | CPU/request scheduler "
                "| CPU/request worker | CPU/request RabbitMQ |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for concurrency in arguments.concurrency:
                direct, direct_wall = await _level(
                    lambda request: _direct(engine, request),
                    concurrency,
                    arguments.requests,
                    arguments.tokens,
                )
                scheduler_cpu = _cpu_seconds([scheduler.pid])
                worker_cpu = _cpu_seconds([worker.pid])
                rabbit_cpu = _cpu_seconds(rabbitmq_pids)
                mesh, mesh_wall = await _level(
                    lambda request: _mesh(client, request),
                    concurrency,
                    arguments.requests,
                    arguments.tokens,
                )
                scheduler_cpu = _cpu_seconds([scheduler.pid]) - scheduler_cpu
                worker_cpu = _cpu_seconds([worker.pid]) - worker_cpu
                rabbit_cpu = _cpu_seconds(rabbitmq_pids) - rabbit_cpu
                direct_ttft = statistics.median(s.ttft for s in direct)
                added = [s.ttft - direct_ttft for s in mesh]
                per_token = (
                    statistics.median(s.total for s in mesh)
                    - statistics.median(s.total for s in direct)
                ) / arguments.tokens
                added_p50 = statistics.median(added) * 1000
                added_p95 = _percentile(added, 0.95) * 1000
                print(
                    f"| {concurrency} | {direct_ttft * 1000:.1f} ms "
                    f"| {statistics.median(s.ttft for s in mesh) * 1000:.1f} ms "
                    f"| +{added_p50:.1f} / +{added_p95:.1f} ms "
                    f"| {per_token * 1000:+.2f} ms "
                    f"| {direct_wall / mesh_wall:.2f} "
                    f"| {scheduler_cpu / arguments.requests * 1000:.1f} ms "
                    f"| {worker_cpu / arguments.requests * 1000:.1f} ms "
                    f"| {rabbit_cpu / arguments.requests * 1000:.1f} ms |",
                    flush=True,
                )
    finally:
        for process in (worker, scheduler):
            os.killpg(process.pid, signal.SIGTERM)
            await process.wait()
        await _cleanup_broker(prefix)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per request")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds per token")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="concurrency levels"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
