"""The routing file's `default_quotas` at work, through a real gateway in front of the synthetic
mesh: a key without quotas of its own is held to them (429 with `Retry-After` in each API's
error shape, counted in the quota-rejection metric), a key with its own quotas is not. An
invalid value stopping the gateway is tested with the other routing-file errors
(test_gateway_routing.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from gateway_mesh import MODEL, Gateway, Mesh, start_gateway
from prometheus_client.parser import text_string_to_metric_families

from plumbing.keystore import Keystore

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: The routing file's default: two requests per minute per key.
DEFAULT_REQUESTS_PER_MINUTE = 2

#: Each API's path, a small request, and its 429 body's error kind.
APIS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    ),
    "anthropic": (
        "/v1/messages",
        {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "native": (
        "/v1/generate",
        {
            "model": MODEL,
            "messages": [{"role": "ROLE_USER", "content": [{"text": "hi"}]}],
            "generation_parameters": {"max_tokens": 3},
        },
    ),
}


def _error_kind(api: str, body: dict[str, Any]) -> str:
    """The kind of error a 429 body names, read the way each API's clients read it."""
    if api == "anthropic":
        assert body["type"] == "error"
        return str(body["error"]["type"])
    if api == "openai":
        return str(body["error"]["type"])
    return str(body["error"]["code"])


EXPECTED_KIND = {
    "openai": "rate_limit_error",
    "anthropic": "rate_limit_error",
    "native": "quota_exceeded",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def quota_gateway(
    mesh: Mesh, sqlite_keystore: Keystore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """A gateway whose routing file sets `default_quotas`."""
    directory = tmp_path_factory.mktemp("default-quotas")
    routing = directory / "models.yaml"
    routing.write_text(
        f"default_quotas: {{requests_per_minute: {DEFAULT_REQUESTS_PER_MINUTE}}}\n"
        f"models:\n  {MODEL}: {{backend: self_hosted}}\n"
    )
    gateway = await start_gateway(
        mesh,
        sqlite_keystore,
        directory / "gateway.log",
        extra_env={"LLM_MESH_MODELS": str(routing)},
    )
    yield gateway
    # A requested stop is a clean one: uvicorn's re-raised SIGTERM does not kill it.
    assert await gateway.process.stop() == 0


async def _rejections(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "llm_mesh_gateway_quota_rejections":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"model": MODEL}:
                    return sample.value
    return 0.0


async def test_a_key_without_quotas_is_held_to_the_default(
    quota_gateway: Gateway, sqlite_keystore: Keystore
) -> None:
    api_key, _ = sqlite_keystore.create_key("no-quotas-of-its-own")
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=quota_gateway.url, timeout=30) as client:
        before = await _rejections(client)
        path, body = APIS["openai"]
        for _ in range(DEFAULT_REQUESTS_PER_MINUTE):
            admitted = await client.post(path, json=body, headers=headers)
            assert admitted.status_code == 200, admitted.text
        for api, (path, body) in APIS.items():
            refused = await client.post(path, json=body, headers=headers)
            assert refused.status_code == 429, (api, refused.text)
            assert _error_kind(api, refused.json()) == EXPECTED_KIND[api]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await _rejections(client) == before + len(APIS)


async def test_a_key_with_its_own_quotas_is_not_held_to_the_default(
    quota_gateway: Gateway, sqlite_keystore: Keystore
) -> None:
    own_limit = DEFAULT_REQUESTS_PER_MINUTE + 2
    api_key, _ = sqlite_keystore.create_key("own-quotas", requests_per_minute=own_limit)
    unlimited_by_minute, _ = sqlite_keystore.create_key("own-token-quota", tokens_per_day=10**6)
    async with httpx.AsyncClient(base_url=quota_gateway.url, timeout=30) as client:
        path, body = APIS["native"]
        statuses = [
            (await client.post(path, json=body, headers={"x-api-key": api_key})).status_code
            for _ in range(own_limit + 1)
        ]
        # A key with only a token quota has no request quota: the default's does not apply.
        others = [
            (
                await client.post(path, json=body, headers={"x-api-key": unlimited_by_minute})
            ).status_code
            for _ in range(DEFAULT_REQUESTS_PER_MINUTE + 1)
        ]
    assert statuses == [200] * own_limit + [429]
    assert others == [200] * (DEFAULT_REQUESTS_PER_MINUTE + 1)
