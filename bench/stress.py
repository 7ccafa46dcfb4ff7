"""Stress gate: many concurrent streams through the full mesh, watching errors, latency and memory.

Not a test (CI runs a short version: `tests/quality/test_stress_gate.py`). Starts a scheduler,
a worker (`--engine synthetic` by default, `vllm` for the real model) and a gateway as
`llm-mesh` subprocesses under a private broker prefix on the machine's RabbitMQ, with API keys
in a fresh SQLite database (the gateway's service credential, which the scheduler requires, and
a client key). Then `--concurrency` clients stream `POST /v1/generate` back to back for
`--warmup` + `--duration` seconds, while the RSS of every service (with its children: a vLLM
worker's engine core) is sampled every `--sample-interval` seconds.

Report: requests and tokens per second after the warm-up, the error count (HTTP errors,
in-band `error` events, streams without their `generation.finish`, client exceptions), p50/p99
time to the first token, and each service's RSS over time. Exits 1 on any error, or when a
service's RSS grew by more than 5% *and* more than 50 MB between the end of the warm-up and
the end of the run (a leak, not the allocator settling); 2 when the mesh does not start.

    .venv/bin/python bench/stress.py [--duration 60] [--warmup 10] [--concurrency 32]
        [--max-tokens 32] [--engine synthetic|vllm] [--json report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # Run as a file: make `bench` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.process_mesh import LLM_MESH, ServiceProcess, start_process
from meshctl._local_broker import delete_stack
from plumbing.keystore import Keystore
from plumbing.topology import Topology

MODEL = "smollm2-135m"
AMQP_URL = os.environ.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
START_TIMEOUT = 120.0
#: A stream that takes longer than this counts as an error.
REQUEST_TIMEOUT = 60.0
#: RSS growth that fails the gate: both bounds must be exceeded.
GROWTH_FRACTION = 0.05
GROWTH_BYTES = 50 * 1024 * 1024
_MIB = 1024 * 1024


@dataclass
class MemoryTrace:
    """A service of the mesh under load, and its RSS (with its children) over time."""

    service: ServiceProcess
    rss: list[tuple[float, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.service.name

    def sample_rss(self, elapsed: float) -> None:
        if self.service.process.returncode is None:
            self.rss.append((elapsed, self.service.rss()))


async def start_service(
    name: str, args: list[str], *, env: dict[str, str], ready: str, log: Path
) -> MemoryTrace:
    """Starts `llm-mesh ARGS`; returns once it printed a line starting with `ready`."""
    service = await start_process(
        name,
        [LLM_MESH, *args],
        environment={**os.environ, **env},
        ready=ready,
        log=log,
        start_timeout=START_TIMEOUT,
    )
    return MemoryTrace(service)


@dataclass
class Load:
    """What the clients saw."""

    started: float
    warmup_end: float
    requests: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)


async def _stream_once(client: httpx.AsyncClient, body: dict[str, Any], load: Load) -> None:
    began = time.monotonic()
    first_token: float | None = None
    finished = False
    tokens = 0
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            async with client.stream("POST", "/v1/generate", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    load.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    return
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        if event == "sequence.delta":
                            if first_token is None:
                                first_token = time.monotonic()
                            data = json.loads(line.removeprefix("data:"))
                            tokens += len(data.get("token_ids", []))
                        elif event == "error":
                            load.errors.append(f"in-band error: {line[:200]}")
                        elif event == "generation.finish":
                            finished = True
    except (httpx.HTTPError, TimeoutError, json.JSONDecodeError) as error:
        load.errors.append(f"client: {error!r}")
        return
    if not finished:
        load.errors.append("stream ended without generation.finish")
        return
    if began >= load.warmup_end:
        load.requests += 1
        load.tokens += tokens
        if first_token is not None:
            load.ttft.append(first_token - began)


async def _client(
    url: str, api_key: str, max_tokens: int, deadline: float, load: Load, number: int
) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=10.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as client:
        request = 0
        while time.monotonic() < deadline:
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "ROLE_USER", "content": [{"text": f"stress {number}-{request}"}]}
                ],
                "generation_parameters": {"max_tokens": max_tokens, "ignore_eos": True},
                "stream": True,
            }
            await _stream_once(client, body, load)
            request += 1


async def _sample(
    services: list[MemoryTrace], began: float, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for service in services:
            service.sample_rss(time.monotonic() - began)
        try:
            async with asyncio.timeout(interval):
                await stop.wait()
        except TimeoutError:
            pass
    for service in services:
        service.sample_rss(time.monotonic() - began)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _rss_at(service: MemoryTrace, elapsed: float) -> int:
    """The last sample taken at or before `elapsed` (the first one if none)."""
    before = [rss for at, rss in service.rss if at <= elapsed]
    return before[-1] if before else service.rss[0][1]


def _report(
    services: list[MemoryTrace], load: Load, args: argparse.Namespace
) -> tuple[dict[str, Any], bool]:
    measured = max(args.duration, 1e-9)
    growth_failures = []
    memory: dict[str, Any] = {}
    for service in services:
        if not service.rss:
            continue
        warm = _rss_at(service, args.warmup)
        end = service.rss[-1][1]
        grew = end - warm
        failed = grew > GROWTH_BYTES and grew > GROWTH_FRACTION * warm
        if failed:
            growth_failures.append(service.name)
        memory[service.name] = {
            "rss_after_warmup_mib": round(warm / _MIB, 1),
            "rss_end_mib": round(end / _MIB, 1),
            "growth_mib": round(grew / _MIB, 1),
            "grew_too_much": failed,
            "samples": [(round(at, 1), round(rss / _MIB, 1)) for at, rss in service.rss],
        }
    report = {
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "engine": args.engine,
        "requests": load.requests,
        "requests_per_s": round(load.requests / measured, 1),
        "tokens_per_s": round(load.tokens / measured, 1),
        "errors": len(load.errors),
        "first_errors": load.errors[:5],
        "ttft_p50_ms": round(_percentile(load.ttft, 0.5) * 1000, 1),
        "ttft_p99_ms": round(_percentile(load.ttft, 0.99) * 1000, 1),
        "memory": memory,
    }
    ok = not load.errors and not growth_failures and load.requests > 0
    return report, ok


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['requests']} requests in {report['duration_s']:g} s after "
        f"{report['warmup_s']:g} s warm-up, {report['concurrency']} streams "
        f"({report['engine']} engine): {report['requests_per_s']} req/s, "
        f"{report['tokens_per_s']} tokens/s"
    )
    print(f"errors: {report['errors']} {report['first_errors'] if report['errors'] else ''}")
    print(f"TTFT p50 {report['ttft_p50_ms']} ms, p99 {report['ttft_p99_ms']} ms")
    print("RSS (MiB) over time [(seconds, MiB)]:")
    for name, memory in report["memory"].items():
        verdict = "GREW" if memory["grew_too_much"] else "ok"
        print(
            f"  {name:9} after warm-up {memory['rss_after_warmup_mib']:8.1f}  "
            f"end {memory['rss_end_mib']:8.1f}  growth {memory['growth_mib']:+7.1f}  {verdict}"
        )
        print(f"            {memory['samples']}")


async def _start_mesh(
    data_dir: Path, prefix: str, args: argparse.Namespace
) -> tuple[list[MemoryTrace], str, str]:
    """The services (started in order) and the gateway's URL and a client key."""
    keystore = Keystore.open(f"sqlite:///{data_dir / 'llm-mesh.sqlite3'}")
    try:
        service_key, _ = keystore.create_key("gateway", service=True)
        client_key, _ = keystore.create_key("stress")
    finally:
        keystore.close()
    env = {
        "LLM_MESH_BROKER_PREFIX": prefix,
        "LLM_MESH_DATA_DIR": str(data_dir),
        "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL": str(args.token_interval),
        "LLM_MESH_WORKER_GRACE_PERIOD": "2",
        "LLM_MESH_GATEWAY_SERVICE_CREDENTIAL": service_key,
    }
    services: list[MemoryTrace] = []
    try:
        scheduler = await start_service(
            "scheduler",
            ["scheduler", "--grpc-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"],
            env=env,
            ready="llm-mesh scheduler ready:",
            log=data_dir / "scheduler.log",
        )
        services.append(scheduler)
        worker_args = ["worker", "--engine", args.engine, "--model", MODEL]
        worker_args += ["--capacity", str(args.capacity), "--http-bind", "127.0.0.1:0"]
        services.append(
            await start_service(
                "worker",
                worker_args,
                env=env,
                ready="llm-mesh worker ready:",
                log=data_dir / "worker.log",
            )
        )
        gateway = await start_service(
            "gateway",
            ["gateway", "--port", "0"],
            env={**env, "LLM_MESH_GATEWAY_SCHEDULER_TARGETS": scheduler.service.grpc_target},
            ready="llm-mesh gateway ready:",
            log=data_dir / "gateway.log",
        )
        services.append(gateway)
        url = gateway.service.http_url
        # Readiness follows the worker's heartbeats.
        await gateway.service.wait_http_ok(f"{url}/readyz", within=START_TIMEOUT)
    except BaseException:
        for service in reversed(services):
            await service.service.stop()
        raise
    return services, url, client_key


async def run(args: argparse.Namespace) -> int:
    prefix = f"stress-{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="llm-mesh-stress-") as temporary:
        data_dir = Path(temporary)
        try:
            services, url, client_key = await _start_mesh(data_dir, prefix, args)
        except (RuntimeError, TimeoutError) as error:
            print(f"the mesh did not start: {error}", file=sys.stderr)
            await delete_stack(AMQP_URL, Topology(prefix), [MODEL])
            return 2
        try:
            began = time.monotonic()
            load = Load(started=began, warmup_end=began + args.warmup)
            deadline = load.warmup_end + args.duration
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(services, began, args.sample_interval, stop))
            try:
                async with asyncio.TaskGroup() as group:
                    for number in range(args.concurrency):
                        group.create_task(
                            _client(url, client_key, args.max_tokens, deadline, load, number)
                        )
            finally:
                stop.set()
                await sampler
            dead = [s.name for s in services if s.service.process.returncode is not None]
            if dead:
                load.errors.append(f"services died during the run: {dead}")
        finally:
            for service in reversed(services):
                await service.service.stop()
            await delete_stack(AMQP_URL, Topology(prefix), [MODEL])
    report, ok = _report(services, load, args)
    _print(report)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2) + "\n")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent streams")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument("--engine", choices=["synthetic", "vllm"], default="synthetic")
    parser.add_argument("--capacity", type=int, default=64, help="the worker's capacity")
    parser.add_argument(
        "--token-interval", type=float, default=0.005, help="synthetic: seconds per token"
    )
    parser.add_argument("--sample-interval", type=float, default=1.0, help="RSS sampling period")
    parser.add_argument("--json", default="", help="also write the report here")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
