"""Request logs: one JSON access line per request, with its ids, never the API key."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from observability_mesh import Mesh

from plumbing.structured_logs import JsonFormatter


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of the process, as the JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("llm-mesh test"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_access_lines_carry_the_request_and_never_the_key(
    mesh: Mesh, json_lines: io.StringIO
) -> None:
    model = "obs-logs"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(model, scheduler)
    gateway = await mesh.start_gateway(scheduler, [model])
    secret = gateway.api_key.split(".", 1)[1]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        served = await http.post(
            "/v1/generate",
            headers={"authorization": f"Bearer {gateway.api_key}"},
            json={
                "model": model,
                "messages": [{"role": "ROLE_USER", "content": [{"text": "log me"}]}],
                "stream": True,
            },
        )
        refused = await http.post(
            "/v1/generate",
            headers={"x-api-key": f"lm-{gateway.key_id}.not-the-secret"},
            json={"model": model, "messages": []},
        )
    assert served.status_code == 200
    assert refused.status_code == 401
    text = json_lines.getvalue()
    assert secret not in text and "not-the-secret" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    access = [line for line in lines if line["logger"] == "llm_mesh.access"]
    assert len(access) == 2
    # A stream's line is written once it has ended: maybe after the next request's.
    ok, unauthenticated = sorted(access, key=lambda line: int(line["status"]))
    assert ok["status"] == 200 and ok["route"] == "/v1/generate" and ok["api"] == "native"
    assert ok["model"] == model and ok["key_id"] == gateway.key_id
    assert len(ok["request_id"]) == 32
    assert ok["outcome"] == "ok" and ok["completion_tokens"] == 8 and ok["prompt_tokens"] == 2
    assert ok["time_to_start_ms"] <= ok["duration_ms"]
    assert unauthenticated["status"] == 401 and "key_id" not in unauthenticated
    # The scheduler's and the worker's lines about this request carry its id too.
    others = [line for line in lines if line.get("request_id") == ok["request_id"]]
    assert {line["logger"] for line in others} >= {"llm_mesh.access"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        samples = (await http.get("/metrics")).text
    assert (
        f'llm_mesh_gateway_http_requests_total{{method="POST",model="{model}",'
        f'route="/v1/generate",status="200"}} 1.0' in samples
    )
    assert (
        'llm_mesh_gateway_http_requests_total{method="POST",model="none",'
        'route="/v1/generate",status="401"} 1.0' in samples
    )
