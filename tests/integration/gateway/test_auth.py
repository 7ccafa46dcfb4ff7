"""API keys, model permissions, quotas and metering, on HTTP (every API shape) and on gRPC.

The gRPC side is a scheduler replica with the `AuthInterceptor`, run in this process beside
the session's subprocess scheduler (same broker prefix, so the same worker serves both); a
second gateway talks to it with a service credential.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from gateway_mesh import MODEL, START_TIMEOUT, Gateway, Mesh, start_gateway
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmmesh.v1 import chat_pb2

from plumbing.client import SchedulerClient
from plumbing.keystore import Keystore, UsageRecord, parse_key
from plumbing.settings import MeshSettings
from scheduler.server import SchedulerServer
from scheduler.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

Body = Callable[[str], dict[str, Any]]

#: Each API's path, body for a model, and how to read the error's kind from its body.
APIS: dict[str, tuple[str, Body, Callable[[dict[str, Any]], str]]] = {
    "native": (
        "/v1/generate",
        lambda model: {
            "model": model,
            "messages": [{"role": "ROLE_USER", "content": [{"text": "hi"}]}],
            "generation_parameters": {"max_tokens": 3},
        },
        lambda body: str(body["error"]["code"]),
    ),
    "openai": (
        "/v1/chat/completions",
        lambda model: {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
        },
        lambda body: str(body["error"]["type"]),
    ),
    "anthropic": (
        "/v1/messages",
        lambda model: {
            "model": model,
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}],
        },
        lambda body: str(body["error"]["type"]),
    ),
}
EXPECTED_KINDS = {
    "native": {401: "unauthenticated", 403: "permission_denied", 429: "quota_exceeded"},
    "openai": {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"},
    "anthropic": {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"},
}


def _chat(model: str = MODEL) -> chat_pb2.ChatRequest:
    request = chat_pb2.ChatRequest(
        model=model,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
    )
    request.generation_parameters.max_tokens = 4
    return request


async def _records(keystore: Keystore, key_id: str, count: int) -> list[UsageRecord]:
    """The key's ledger rows once `count` of them are finished (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            records = await asyncio.to_thread(keystore.usage_records, key_id=key_id)
            finished = [record for record in records if record.status != "running"]
            if len(finished) >= count:
                return records
            await asyncio.sleep(0.02)  # the record is written as the stream closes


@pytest.mark.parametrize("api", sorted(APIS))
async def test_http_auth_permission_and_quota(gateway: Gateway, api: str) -> None:
    path, body, kind = APIS[api]
    expected = EXPECTED_KINDS[api]
    limited, limited_record = gateway.keystore.create_key(
        "limited", allowed_models=[MODEL], requests_per_minute=1
    )
    other, _ = gateway.keystore.create_key("other", allowed_models=["another-model"])
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        missing = await client.post(path, json=body(MODEL))
        invalid = await client.post(path, json=body(MODEL), headers={"x-api-key": "lm-x.y"})
        denied = await client.post(
            path, json=body(MODEL), headers={"authorization": f"Bearer {other}"}
        )
        allowed = await client.post(path, json=body(MODEL), headers={"x-api-key": limited})
        throttled = await client.post(path, json=body(MODEL), headers={"x-api-key": limited})
    for response, status in ((missing, 401), (invalid, 401), (denied, 403), (throttled, 429)):
        assert response.status_code == status, response.text
        assert kind(response.json()) == expected[status]
    assert allowed.status_code == 200, allowed.text
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    records = await _records(gateway.keystore, limited_record.key_id, 1)
    assert [(record.source, record.status) for record in records] == [("http", "ok")]
    assert records[0].completion_tokens > 0 and records[0].prompt_tokens > 0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def service_key(sqlite_keystore: Keystore) -> str:
    key, _ = sqlite_keystore.create_key("gateway", service=True)
    return key


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def auth_scheduler(
    mesh: Mesh, sqlite_keystore: Keystore, service_key: str
) -> AsyncIterator[SchedulerServer]:
    """A scheduler replica in this process, with the interceptor on the session's database."""
    settings = Settings(
        mesh=MeshSettings(
            broker_prefix=mesh.prefix, data_dir=Path(mesh.base_env["LLM_MESH_DATA_DIR"])
        ),
        grpc_bind="127.0.0.1:0",
        http_bind="127.0.0.1:0",
        discovery_period=0,
        grace_period=1,
    )
    server = SchedulerServer(settings, keystore=sqlite_keystore)
    await server.start()
    try:
        async with SchedulerClient(f"127.0.0.1:{server.port}", api_key=service_key) as client:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    if any(model.name == MODEL for model in await client.list_models()):
                        break
                    await asyncio.sleep(0.05)  # the worker's next heartbeat
        yield server
    finally:
        await server.stop(grace=1)


def _status(error: grpc.aio.AioRpcError) -> Any:
    return rpc_status.from_call(error)  # type: ignore[arg-type]


async def _generate(target: str, api_key: str | None, model: str = MODEL) -> list[Any]:
    async with SchedulerClient(target, api_key=api_key) as client:
        return [event async for event in client.generate(_chat(model), timeout=30)]


async def test_grpc_refusals(auth_scheduler: SchedulerServer, sqlite_keystore: Keystore) -> None:
    target = f"127.0.0.1:{auth_scheduler.port}"
    other, _ = sqlite_keystore.create_key("other", allowed_models=["another-model"])
    for api_key in (None, "lm-nope.nope", "not-a-key"):
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await _generate(target, api_key)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _generate(target, other)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with SchedulerClient(target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            await anonymous.list_models()
    assert listing.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_quota_and_metering(
    auth_scheduler: SchedulerServer, sqlite_keystore: Keystore
) -> None:
    target = f"127.0.0.1:{auth_scheduler.port}"
    api_key, record = sqlite_keystore.create_key("team", requests_per_minute=1)
    events = await _generate(target, api_key)
    assert events[0].HasField("generation_start") and events[-1].HasField("generation_finish")
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await _generate(target, api_key)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = {detail.TypeName(): detail for detail in _status(exhausted.value).details}
    failure = error_details_pb2.QuotaFailure()
    details["google.rpc.QuotaFailure"].Unpack(failure)
    assert failure.violations[0].subject == f"api_key:{record.key_id}"
    assert "google.rpc.RetryInfo" in details
    (entry,) = await _records(sqlite_keystore, record.key_id, 1)
    usage = events[-1].generation_finish.usage
    assert (entry.source, entry.status) == ("grpc", "ok")
    assert (entry.prompt_tokens, entry.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert entry.request_id == events[0].generation_start.request_id


async def test_gateway_service_credential_is_metered_once(
    mesh: Mesh,
    auth_scheduler: SchedulerServer,
    sqlite_keystore: Keystore,
    service_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    gateway = await start_gateway(
        mesh,
        sqlite_keystore,
        tmp_path_factory.mktemp("auth-gateway") / "gateway.log",
        scheduler_target=f"127.0.0.1:{auth_scheduler.port}",
        service_credential=service_key,
    )
    try:
        user_key, user = sqlite_keystore.create_key(f"user-{uuid.uuid4().hex[:6]}")
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"authorization": f"Bearer {user_key}"}
        ) as client:
            response = await client.post("/v1/chat/completions", json=APIS["openai"][1](MODEL))
        assert response.status_code == 200, response.text
        (entry,) = await _records(sqlite_keystore, user.key_id, 1)
        assert (entry.source, entry.status) == ("http", "ok")
        service_id, _ = parse_key(service_key)
        assert sqlite_keystore.usage_records(key_id=service_id) == []
        every = sqlite_keystore.usage_records()
        assert [r for r in every if r.request_id == entry.request_id] == [entry]
    finally:
        await gateway.process.stop()
