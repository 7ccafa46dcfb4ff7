"""A client that goes away mid-generation cancels it end to end, and is billed what it got.

On the real model: the session's vLLM worker aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from gateway_mesh import MODEL, Gateway, Mesh
from httpx_sse import aconnect_sse

from plumbing.keystore import UsageRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Long enough (ignore_eos) that only a cancellation ends it within the test's bounds.
LONG = {
    "model": MODEL,
    "messages": [{"role": "ROLE_USER", "content": [{"text": "Go on forever."}]}],
    "generation_parameters": {"max_tokens": 400, "ignore_eos": True},
}


async def _aborted(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(url)).text
    return sum(
        float(value)
        for value in re.findall(r"^llm_mesh_worker_tasks_aborted_total\{[^}]*\} (\S+)$", text, re.M)
    )


async def _cancelled_record(gateway: Gateway, key_id: str) -> UsageRecord:
    async with asyncio.timeout(10):
        while True:
            records = await asyncio.to_thread(gateway.keystore.usage_records, key_id=key_id)
            if records and records[0].status != "running":
                return records[0]
            await asyncio.sleep(0.02)  # recorded as the gateway closes the stream


async def _wait_aborted(client: httpx.AsyncClient, mesh: Mesh, before: float) -> None:
    async with asyncio.timeout(10):
        while True:
            if await _aborted(client, mesh.worker_metrics_url) > before:
                return
            await asyncio.sleep(0.02)  # the worker's counter: no event to await across processes


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_aborts_the_worker_and_bills_the_tokens(
    real_mesh: Mesh, real_gateway: Gateway, stream: bool
) -> None:
    mesh, gateway = real_mesh, real_gateway
    api_key, record = gateway.keystore.create_key("leaver")
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient() as probe:
        before = await _aborted(probe, mesh.worker_metrics_url)
        received = 0
        if stream:
            async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as client:
                body: dict[str, Any] = {**LONG, "stream": True}
                async with aconnect_sse(client, "POST", "/v1/generate", json=body) as source:
                    async for sse in source.aiter_sse():
                        received += sse.event == "sequence.delta"
                        if received == 5:
                            break  # leaving the block closes the connection
        else:
            async with httpx.AsyncClient(
                base_url=gateway.url, headers=headers, timeout=httpx.Timeout(1.0)
            ) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post("/v1/generate", json=LONG)
        await _wait_aborted(probe, mesh, before)
    entry = await _cancelled_record(gateway, record.key_id)
    assert entry.status == "cancelled"
    assert entry.prompt_tokens > 0
    assert received <= entry.completion_tokens < 400
