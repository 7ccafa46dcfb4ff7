"""The gateway's refusal metrics after real refusals: quota rejections, provider errors."""

from __future__ import annotations

import httpx
import pytest
from observability_mesh import Mesh, scrape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.routing import ModelRoute

_PROVIDER_KEY_ENV = "LLM_MESH_TEST_OBSERVABILITY_PROVIDER_KEY"


def _openai_body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "count me"}]}


async def test_a_quota_rejection_is_counted(mesh: Mesh) -> None:
    model = "obs-quota"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    gateway = await mesh.start_gateway(scheduler, [model])
    limited, _ = gateway.keystore.create_key("limited", requests_per_minute=1)
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {limited}"}, timeout=10
    ) as http:
        allowed = await http.post("/v1/chat/completions", json=_openai_body(model))
        refused = await http.post("/v1/chat/completions", json=_openai_body(model))
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 429, refused.text
    samples = await scrape(httpx.URL(gateway.url).port or 0)
    labels = f'model="{model}"'
    assert samples[f"llm_mesh_gateway_quota_rejections_total{{{labels}}}"] == 1
    assert samples[f'llm_mesh_gateway_requests_total{{api="openai",{labels},outcome="429"}}'] == 1
    assert samples[f'llm_mesh_gateway_requests_total{{api="openai",{labels},outcome="ok"}}'] == 1


async def _refuse(request: Request) -> JSONResponse:
    """An OpenAI-shaped error answer with the status the path names (`/{status}/v1/...`)."""
    status = int(request.path_params["status"])
    return JSONResponse(
        {"error": {"message": f"refused with {status}", "type": "invalid_request_error"}},
        status_code=status,
    )


async def test_provider_errors_are_counted_by_provider_and_kind(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_PROVIDER_KEY_ENV, "sk-observability")
    upstream = await mesh.start_upstream(
        Starlette(routes=[Route("/{status:int}/v1/chat/completions", _refuse, methods=["POST"])])
    )
    # 400: the provider rejects the request (the client's fault, ProviderRejected); 401: it
    # refuses the gateway's key (ProviderUnavailable). Neither is retried.
    routes = {
        f"obs-provider-{status}": ModelRoute(
            backend="openai",
            upstream_model="gpt-test",
            base_url=f"{upstream}/{status}/v1",  # type: ignore[arg-type]
            api_key_env=_PROVIDER_KEY_ENV,
        )
        for status in (400, 401)
    }
    scheduler = await mesh.start_scheduler()
    gateway = await mesh.start_gateway(scheduler, [], external=routes)
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {gateway.api_key}"}, timeout=10
    ) as http:
        rejected = [
            await http.post("/v1/chat/completions", json=_openai_body("obs-provider-400"))
            for _ in range(2)
        ]
        refused = await http.post("/v1/chat/completions", json=_openai_body("obs-provider-401"))
    assert [response.status_code for response in rejected] == [400, 400]
    assert refused.status_code >= 500, refused.text
    samples = await scrape(httpx.URL(gateway.url).port or 0)
    errors = "llm_mesh_gateway_provider_errors_total"
    assert samples[f'{errors}{{kind="ProviderRejected",provider="openai"}}'] == 2
    assert samples[f'{errors}{{kind="ProviderUnavailable",provider="openai"}}'] == 1
    assert sum(value for name, value in samples.items() if name.startswith(errors)) == 3
