"""Clients that stop reading their SSE stream, or vanish, one and a hundred at a time.

The mesh (module scope, the machine's broker under a random prefix): a scheduler, one
synthetic worker with room for every stream, and a gateway whose SSE send timeout is 1 s.

What a stalled client leaves unread first fills the kernel's socket buffers: on this
machine's loopback the gateway's send buffer autotunes to about 3-4 MB (`tcp_wmem` max
4 MiB), so a stall shows in the gateway only once that much was produced; then uvicorn's
write buffer (64 KiB high-water mark) fills, sse-starlette's send blocks, and after the send
timeout the stream is cancelled end to end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from edge_client import native_body, stream_native
from fault_mesh import FaultMesh
from stalled_client import StalledClient

from bench.process_mesh import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Fast streams (500 tokens/s per sequence), to fill buffers; slow ones (10 tokens/s), to
#: keep a hundred open without saturating two cores.
FAST = "fast-readers"
SLOW = "slow-readers"
ENGINE_ABORTED = "llm_mesh_worker_engine_aborted_total"
CANCELLED = 'llm_mesh_worker_tasks_aborted_total{reason="cancelled"}'
RUNNING = "llm_mesh_worker_running_tasks"
SEND_TIMEOUT = 1.0
STALLED = 100
MIB = 1024 * 1024
#: How much each service's resident memory may grow with 100 stalled streams open: per
#: stream the gateway holds at most 256 events read ahead and uvicorn's 64 KiB write buffer,
#: the scheduler a 256-chunk demux queue, the worker a coalescing buffer; plus the
#: connections' own state. Measured growth on this machine: gateway 7.7 MiB, scheduler
#: 3.6 MiB, worker 2.8 MiB.
MEMORY_BOUND = {"gateway": 30 * MIB, "scheduler": 20 * MIB, "worker": 20 * MIB}
#: A stalled client's generation is aborted this soon (measured: 3.9 s, most of it spent
#: filling the kernel's buffers).
DROP_BOUND = 10.0


@dataclass
class Readers:
    mesh: FaultMesh
    scheduler: ServiceProcess
    fast: ServiceProcess
    slow: ServiceProcess
    gateway: ServiceProcess
    api_key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def readers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Readers]:
    mesh = FaultMesh(
        tmp_path_factory.mktemp("slow-clients"), f"test-{uuid.uuid4().hex[:8]}.", [FAST, SLOW]
    )
    try:
        scheduler = await mesh.start_scheduler()
        workers = [
            await mesh.start_worker(
                model,
                capacity=STALLED,
                LLM_MESH_WORKER_SYNTHETIC_MAX_CONTEXT="1000000",
                # No end-of-sequence before max_tokens (the OpenAI API has no ignore_eos).
                LLM_MESH_WORKER_SYNTHETIC_TOKENS="1000000",
                LLM_MESH_WORKER_SYNTHETIC_TOKEN_INTERVAL=interval,
            )
            for model, interval in ((FAST, "0.002"), (SLOW, "0.1"))
        ]
        for model in (FAST, SLOW):
            await mesh.wait_for_workers(scheduler, model)
        gateway = await mesh.start_gateway(
            [scheduler], LLM_MESH_GATEWAY_SSE_SEND_TIMEOUT=str(SEND_TIMEOUT)
        )
        fast, slow = workers
        yield Readers(mesh, scheduler, fast, slow, gateway, mesh.create_key())
    finally:
        await mesh.aclose()


def _openai_body(model: str, **parameters: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Talk."}],
        "stream": True,
        **parameters,
    }


async def test_an_sse_client_that_stops_reading_is_dropped_and_its_generation_cancelled(
    readers: Readers,
) -> None:
    """Fault: an SSE client reads the response headers, then never reads again, while its
    generation produces 8 sequences at 500 tokens/s each. Promise: once the buffers between
    them are full, the gateway's send blocks for the send timeout (1 s), the client is
    dropped, and the cancellation reaches the worker, which aborts the generation (nothing
    runs for the vanished reader). Bound: the engine aborts within 10 s of the stall (about
    4 MB of SSE must first fill the kernel's buffers)."""
    worker = readers.fast
    aborted, cancelled = await worker.metric(ENGINE_ABORTED), await worker.metric(CANCELLED)
    client = StalledClient(
        readers.gateway.http_url,
        readers.api_key,
        _openai_body(FAST, n=8, max_tokens=200_000),
        path="/v1/chat/completions",
    )
    await client.open()
    try:
        assert client.status == 200
        stalled = time.monotonic()
        await worker.wait_metric(ENGINE_ABORTED, lambda v: v == aborted + 1, within=DROP_BOUND)
        assert time.monotonic() - stalled < DROP_BOUND
        assert await worker.metric(CANCELLED) == cancelled + 1
        await worker.wait_metric(RUNNING, lambda v: v == 0)
    finally:
        client.close()


async def test_a_hundred_stalled_clients_keep_every_service_within_its_memory_bound(
    readers: Readers,
) -> None:
    """Fault: 100 SSE clients stop reading their streams (10 tokens/s each) and then vanish
    (connection reset). Promise: while they hang, no service buffers without bound — each
    one's resident memory grows by less than its bound (gateway 30 MiB, scheduler 20 MiB,
    worker 20 MiB); once they vanish, every one of their generations is cancelled.
    Bound: the 100 cancellations reach the worker within 10 s of the resets."""
    worker = readers.slow
    # Warm every path up once, so the baseline includes what the first request loads.
    status, events = await stream_native(
        readers.gateway, readers.api_key, native_body(SLOW, max_tokens=2)
    )
    assert status == 200 and events[-1].event == "generation.finish"
    services = {"gateway": readers.gateway, "scheduler": readers.scheduler, "worker": worker}
    baseline = {name: service.rss() for name, service in services.items()}
    aborted = await worker.metric(ENGINE_ABORTED)
    body = _openai_body(SLOW, max_tokens=100_000)
    clients = [
        StalledClient(readers.gateway.http_url, readers.api_key, body, path="/v1/chat/completions")
        for _ in range(STALLED)
    ]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(client.open() for client in clients))
        assert all(client.status == 200 for client in clients)
        await worker.wait_metric(RUNNING, lambda v: v == STALLED)
        peak = dict(baseline)
        for _ in range(10):  # 2 s of stalled streams, sampled.
            await asyncio.sleep(0.2)
            for name, service in services.items():
                peak[name] = max(peak[name], service.rss())
        growth = {name: peak[name] - baseline[name] for name in services}
        for name, bound in MEMORY_BOUND.items():
            assert growth[name] < bound, (name, growth[name] / MIB)
    finally:
        for client in clients:
            client.close()
    await worker.wait_metric(ENGINE_ABORTED, lambda v: v == aborted + STALLED, within=10)
    await worker.wait_metric(RUNNING, lambda v: v == 0)
