"""The native API, `/v1/generate`, read by a real SSE client (httpx-sse).

What the model outputs is tested on the real model (the session's vLLM worker); request
validation, probes and the in-band timeout on the synthetic mesh.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_mesh import MODEL, Gateway
from httpx_sse import aconnect_sse

from plumbing import json_form

pytestmark = pytest.mark.asyncio(loop_scope="session")

_SEQUENCE_EVENTS = ("sequence_start", "sequence_delta", "sequence_finish")


def _body(**parameters: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "ROLE_USER", "content": [{"text": "Tell me about rivers."}]}],
        "generation_parameters": parameters,
    }


async def test_stream_lifecycle(real_gateway: Gateway, real_api_key: str) -> None:
    headers = {"authorization": f"Bearer {real_api_key}"}
    async with httpx.AsyncClient(base_url=real_gateway.url, headers=headers) as client:
        async with aconnect_sse(
            client, "POST", "/v1/generate", json={**_body(n=2, max_tokens=5), "stream": True}
        ) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            pairs = [(sse.event, sse.data) async for sse in source.aiter_sse()]
    events = json_form.events_from_sse(pairs)
    names = [name for name, _ in pairs]
    assert names[0] == "generation.start" and names[-1] == "generation.finish"
    assert "error" not in names
    start = events[0].generation_start
    assert start.request_id and start.model == MODEL and start.prompt_tokens > 0
    for index in (0, 1):
        mine = []
        for event in events:
            which = event.WhichOneof("event")
            if which in _SEQUENCE_EVENTS and getattr(event, which).index == index:
                mine.append(which)
        assert mine[0] == "sequence_start" and mine[-1] == "sequence_finish"
        assert set(mine[1:-1]) == {"sequence_delta"}
    usage = events[-1].generation_finish.usage
    deltas = [event.sequence_delta for event in events if event.HasField("sequence_delta")]
    assert usage.completion_tokens == sum(len(delta.token_ids) for delta in deltas)
    assert '"index":0' in pairs[1][1]  # fields without presence are printed


async def test_not_streamed_is_one_document(real_gateway: Gateway, real_api_key: str) -> None:
    headers = {"authorization": f"Bearer {real_api_key}"}
    async with httpx.AsyncClient(base_url=real_gateway.url, headers=headers) as client:
        response = await client.post("/v1/generate", json=_body(n=3, max_tokens=4))
    assert response.status_code == 200
    document = response.json()
    assert [sequence["index"] for sequence in document["sequences"]] == [0, 1, 2]
    assert all(sequence["text"] for sequence in document["sequences"])
    assert {sequence["finish_reason"] for sequence in document["sequences"]} <= {
        "FINISH_REASON_STOP",
        "FINISH_REASON_LENGTH",
    }
    assert document["generation_finish"]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{", 400, None),
        (b'{"model": 5}', 400, "model"),
        (b'{"messages": [{"role": "ROLE_USER", "content": [{"text": "x"}]}]}', 400, "model"),
        (b'{"model": "smollm2-135m", "messages": []}', 400, "messages"),
        (b'{"model": "smollm2-135m", "stream": "yes"}', 400, "stream"),
        (b'{"model": "smollm2-135m", "bogus": 1}', 400, "bogus"),
        (
            b'{"model": "x", "messages": [{"role": "ROLE_USER", "content": [{"text": "x"}]}]}',
            404,
            "model",
        ),
    ],
)
async def test_4xx_in_native_shape(
    gateway: Gateway, api_key: str, body: bytes, status: int, field: str | None
) -> None:
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as client:
        response = await client.post("/v1/generate", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["field"] == field
    assert isinstance(error["message"], str) and isinstance(error["retryable"], bool)
    if status == 404:
        assert error["available_models"] == [MODEL]


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"n": 9}, "generation_parameters.n"),
        ({"max_tokens": -3}, "generation_parameters.max_tokens"),
        ({"temperature": 3}, "generation_parameters.temperature"),
        ({"max_tokens": 100_000}, "generation_parameters.max_tokens"),  # over the context
    ],
)
async def test_out_of_range_is_400_naming_the_field(
    gateway: Gateway, api_key: str, parameters: dict[str, Any], field: str
) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as client:
        response = await client.post("/v1/generate", json=_body(**parameters))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


async def test_prompt_over_the_context_is_400_naming_messages(
    real_gateway: Gateway, real_api_key: str
) -> None:
    body = _body(max_tokens=4)
    body["messages"][0]["content"][0]["text"] = "word " * 9000
    headers = {"authorization": f"Bearer {real_api_key}"}
    async with httpx.AsyncClient(base_url=real_gateway.url, headers=headers) as client:
        response = await client.post("/v1/generate", json={**body, "stream": True})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["field"] == "messages" and error["retryable"] is False
    assert "8192" in error["message"]


async def test_probes_and_openapi(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        document = (await client.get("/openapi.json")).json()
        metrics = (await client.get("/metrics")).text
    assert document["openapi"].startswith("3.")
    assert {"/v1/generate", "/v1/chat/completions", "/v1/messages"} <= set(document["paths"])
    assert "llm_mesh_gateway_requests_total" in metrics


async def test_budget_runs_out_after_headers_in_band(gateway: Gateway, api_key: str) -> None:
    body = {
        **_body(max_tokens=400, ignore_eos=True),
        "timeout": "1.5s",
        "stream": True,
    }
    headers = {"authorization": f"Bearer {api_key}"}
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as client:
        async with client.stream("POST", "/v1/generate", json=body) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
    comments = [line for line in lines if line.startswith(":")]
    assert comments, "keep-alive comments flow once the headers are out"
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[0] == "generation.start"
    assert names[-2:] == ["error", "generation.finish"]
    assert names.count("error") == 1
