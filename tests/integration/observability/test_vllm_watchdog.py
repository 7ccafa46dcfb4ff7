"""The engine watchdog with the real vLLM engine: a frozen engine-core process takes its worker
out of service (test_hung_engine.py does the same with the synthetic engine).

The worker is a real `llm-mesh worker --engine vllm` of this test's own (the session's shared
worker must not be frozen), so the test is marked `vllm` without using `vllm_worker`:
tests/integration/conftest.py runs this directory before anything can start the shared
worker, and the test stops its worker (by process group, nothing left behind) before it ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from llmmesh.v1 import events_pb2
from observability_mesh import Mesh, chat, collect, scrape, wait_until
from shared_worker import MISSED_HEARTBEATS, MODEL, SharedWorker

from bench.process_mesh import assert_no_vllm_engine

pytestmark = pytest.mark.vllm

#: The worker's `engine_watchdog_window`: far above a token step of the small model here
#: (tens of milliseconds), far below the test's time budget.
WINDOW = 4.0
#: From the freeze to the request's error: the window, the watchdog's check interval (a
#: quarter window), and the abort on a busy machine.
REACTION = WINDOW * 1.25 + 3.0


def _engine_core(worker: SharedWorker) -> psutil.Process:
    """The worker's `VLLM::EngineCore` child (in the worker's process group)."""
    group = worker.process.pid
    cores = [
        process
        for process in psutil.Process(group).children(recursive=True)
        if process.cmdline()[:1] == ["VLLM::EngineCore"] and os.getpgid(process.pid) == group
    ]
    assert len(cores) == 1, cores
    return cores[0]


async def _until_first_token(events: AsyncIterator[events_pb2.StreamEvent]) -> None:
    while not (await anext(events)).HasField("sequence_delta"):
        pass


async def test_a_frozen_engine_core_ends_requests_and_takes_the_worker_out(
    mesh: Mesh, model_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_no_vllm_engine("the watchdog test's vLLM worker")
    scheduler = await mesh.start_scheduler(missed_heartbeats=MISSED_HEARTBEATS)
    # SharedWorker.start passes its environment on to the worker.
    monkeypatch.setenv("LLM_MESH_WORKER_ENGINE_WATCHDOG_WINDOW", str(WINDOW))
    worker = await SharedWorker.start(mesh.prefix, model_data_dir, tmp_path / "worker.log")
    engine_core: psutil.Process | None = None
    try:
        engine_core = _engine_core(worker)
        async with asyncio.timeout(30):
            await scheduler.registry.wait_for(
                lambda registry: [beat.ready for beat in registry.workers()] == [True]
            )
        client = mesh.client(scheduler)
        # The first request after a start may be slow on a busy machine: not a stall.
        warm_up = await collect(client.generate(chat(MODEL, "Hi", max_tokens=4)))
        assert warm_up[-1].HasField("generation_finish")
        events = aiter(
            client.generate(chat(MODEL, "Tell a long story.", max_tokens=2000, ignore_eos=True))
        )
        async with asyncio.timeout(30):
            await _until_first_token(events)

        engine_core.suspend()  # SIGSTOP: the engine hangs, and nothing raises
        async with asyncio.timeout(REACTION):
            rest = [event async for event in events]

        kinds = [event.WhichOneof("event") for event in rest]
        assert kinds[-2:] == ["error", "generation_finish"], kinds
        assert rest[-2].error.code == events_pb2.ERROR_CODE_WORKER_LOST
        assert rest[-2].error.retryable
        async with httpx.AsyncClient(base_url=worker.http_url, timeout=5) as http:
            assert (await http.get("/readyz")).status_code == 503
        await wait_until(lambda: [beat.ready for beat in scheduler.registry.workers()] == [False])
        consumers = f'llm_mesh_scheduler_queue_consumers{{model="{MODEL}"}}'

        async def no_consumer() -> bool:
            return (await scrape(scheduler.http_port)).get(consumers) == 0

        await wait_until(no_consumer)
        samples = await worker.metrics()
        assert samples["llm_mesh_worker_engine_stalls_total"] == 1
        assert samples['llm_mesh_worker_tasks_aborted_total{reason="engine_stalled"}'] == 1
    finally:
        if engine_core is not None and engine_core.is_running():
            engine_core.resume()  # SIGCONT: a stopped process would not act on SIGTERM
        # Stops the process group; asserts a clean exit and that no process outlived it.
        await worker.stop()
