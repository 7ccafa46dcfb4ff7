"""The scheduler's own refusals of internal gRPC callers (API keys checked by its interceptor),
counted by reason after real calls."""

from __future__ import annotations

import grpc
import pytest
from llmmesh.v1 import events_pb2
from observability_mesh import Mesh, chat, collect, scrape

from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore
from scheduler.server import SchedulerServer
from scheduler.settings import Settings as SchedulerSettings

_REFUSALS = "llm_mesh_scheduler_refusals_total"


async def test_refused_grpc_calls_are_counted_by_reason(mesh: Mesh) -> None:
    model = "obs-refusals"
    keystore = Keystore.from_settings(mesh.mesh_settings)
    mesh.keystores.append(keystore)
    scheduler = SchedulerServer(
        SchedulerSettings(
            mesh=mesh.mesh_settings,
            grpc_bind="127.0.0.1:0",
            http_bind="127.0.0.1:0",
            discovery_period=0,
            missed_heartbeats=8,
            grace_period=1,
        ),
        keystore=keystore,
    )
    await scheduler.start()
    mesh.schedulers.append(scheduler)
    await mesh.start_worker(model, scheduler)
    service_key, _ = keystore.create_key("gateway", service=True)
    limited, _ = keystore.create_key("limited", requests_per_minute=1)
    elsewhere, _ = keystore.create_key("elsewhere", allowed_models=["another-model"])
    target = f"127.0.0.1:{scheduler.port}"

    async def generate(api_key: str | None) -> list[events_pb2.StreamEvent]:
        async with SchedulerClient(target, api_key=api_key) as client:
            return await collect(client.generate(chat(model)))

    async def refusal(api_key: str | None) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await generate(api_key)
        return refused.value.code()

    async def list_models(api_key: str) -> list[str]:
        async with SchedulerClient(target, api_key=api_key) as client:
            return [info.name for info in await client.list_models()]

    # Accepted: the service credential (twice, unmetered) and a metered key's first request.
    assert await list_models(service_key) == [model]
    for api_key in (service_key, limited):
        assert (await generate(api_key))[-1].HasField("generation_finish")
    assert await generate(service_key)
    # Refused: no key, an unknown key (on Generate and on ListModels), a model the key may not
    # use, and the limited key's second request within its minute.
    assert await refusal(None) == grpc.StatusCode.UNAUTHENTICATED
    assert await refusal("lm-nope.nope") == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await list_models("lm-nope.nope")
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await refusal(elsewhere) == grpc.StatusCode.PERMISSION_DENIED
    assert await refusal(limited) == grpc.StatusCode.RESOURCE_EXHAUSTED

    samples = await scrape(scheduler.http_port)
    refusals = {name: value for name, value in samples.items() if name.startswith(_REFUSALS)}
    assert refusals == {
        f'{_REFUSALS}{{reason="unauthenticated"}}': 3,
        f'{_REFUSALS}{{reason="permission_denied"}}': 1,
        f'{_REFUSALS}{{reason="quota_exhausted"}}': 1,
    }
    completed = f'llm_mesh_scheduler_tasks_ended_total{{model="{model}",outcome="completed"}}'
    assert samples[completed] == 3
