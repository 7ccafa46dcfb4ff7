"""Metric values after real traffic, read from the services' own /metrics."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from observability_mesh import Mesh, chat, collect, scrape, wait_until

LLM_MESH = Path(sys.executable).with_name("llm-mesh")


async def test_ten_requests_count_ten_completions_and_ten_first_tokens(mesh: Mesh) -> None:
    model = "obs-count"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    client = mesh.client(scheduler)
    streams = await asyncio.gather(
        *(collect(client.generate(chat(model, f"request {number}"))) for number in range(10))
    )
    assert all(events[-1].HasField("generation_finish") for events in streams)
    tokens = sum(events[-1].generation_finish.usage.completion_tokens for events in streams)
    samples = await scrape(scheduler.http_port)
    labels = f'model="{model}"'
    assert samples[f'llm_mesh_scheduler_tasks_ended_total{{{labels},outcome="completed"}}'] == 10
    assert samples[f"llm_mesh_scheduler_time_to_first_token_seconds_count{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_queue_time_seconds_count{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_request_duration_seconds_count{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_inter_token_latency_seconds_count{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_tasks_published_total{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_tasks_started_total{{{labels}}}"] == 10
    assert samples[f"llm_mesh_scheduler_tokens_total{{{labels}}}"] == tokens
    assert samples[f"llm_mesh_scheduler_relayed_chunks_total{{{labels}}}"] >= 10
    assert samples["llm_mesh_scheduler_requests_in_flight"] == 0
    assert samples[f'llm_mesh_scheduler_workers{{{labels},state="ready"}}'] == 1
    for outcome in ("failed", "cancelled", "expired", "rejected"):
        assert (
            samples.get(f'llm_mesh_scheduler_tasks_ended_total{{{labels},outcome="{outcome}"}}', 0)
            == 0
        )
    worker = mesh.workers[0].service
    worker_samples = await scrape(worker.http_port)
    assert worker_samples["llm_mesh_worker_tasks_completed_total"] == 10
    assert worker_samples["llm_mesh_worker_tokens_generated_total"] == tokens
    assert worker_samples['llm_mesh_worker_engine_requests{state="running"}'] == 0


async def test_top_once_prints_the_table_of_a_running_mesh(mesh: Mesh) -> None:
    model = "obs-top"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    client = mesh.client(scheduler)
    await asyncio.gather(*(collect(client.generate(chat(model, f"top {n}"))) for n in range(3)))
    consumers = f'llm_mesh_scheduler_queue_consumers{{model="{model}"}}'
    await wait_until(lambda: _reads(scheduler.http_port, consumers, 1))
    process = await asyncio.create_subprocess_exec(
        str(LLM_MESH),
        "top",
        "--once",
        "--interval=0.2",
        f"--scheduler=http://127.0.0.1:{scheduler.http_port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    table = stdout.decode()
    lines = table.splitlines()
    header = next(line for line in lines if "MODEL" in line)
    assert header.split() == [
        "MODEL", "WORKERS", "CONSUMERS", "QUEUED", "UNACKED", "TOKENS/S", "CHUNKS/S",
        "TTFT", "P50", "TTFT", "P95", "DONE", "FAILED",
    ]  # fmt: skip
    row = next(line for line in lines if line.strip().startswith(model)).split()
    # model, workers, consumers, queued, unacked (no management API: "-"), tokens/s, chunks/s,
    # p50 (2 words), p95 (2), done, failed
    assert row[:5] == [model, "1/1", "1", "0", "-"], table
    assert re.fullmatch(r"\d+(\.\d+)?", row[7]) and row[8] in ("ms", "s"), table
    assert row[-2:] == ["3", "0"], table


async def _reads(port: int, name: str, value: float) -> bool:
    return (await scrape(port)).get(name) == value
