"""A worker whose engine stops producing tokens takes itself out of service."""

from __future__ import annotations

import httpx
from llmmesh.v1 import events_pb2
from observability_mesh import Mesh, chat, collect, scrape, wait_until


async def test_a_hung_engine_ends_its_requests_and_turns_not_ready(mesh: Mesh) -> None:
    model = "obs-hang"
    scheduler = await mesh.start_scheduler()
    worker = await mesh.start_worker(
        model, scheduler, synthetic_hang_after=2, engine_watchdog_window=0.5
    )
    service = worker.service
    client = mesh.client(scheduler)

    events = await collect(client.generate(chat(model, "hang after two")))

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "generation_start"
    assert kinds[-2:] == ["error", "generation_finish"]
    assert events[-2].error.code == events_pb2.ERROR_CODE_WORKER_LOST
    assert events[-2].error.retryable
    assert events[-1].generation_finish.usage.completion_tokens == 2
    assert sum(kind == "sequence_delta" for kind in kinds) >= 1
    # Not ready: probe, heartbeat (the scheduler's registry) and the broker's consumer list.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
    await wait_until(lambda: [beat.ready for beat in scheduler.registry.workers()] == [False])
    consumers = f'llm_mesh_scheduler_queue_consumers{{model="{model}"}}'

    async def no_consumer() -> bool:
        return (await scrape(scheduler.http_port)).get(consumers) == 0

    await wait_until(no_consumer)
    samples = await scrape(service.http_port)
    assert samples["llm_mesh_worker_engine_stalls_total"] == 1
    assert samples['llm_mesh_worker_tasks_aborted_total{reason="engine_stalled"}'] == 1
