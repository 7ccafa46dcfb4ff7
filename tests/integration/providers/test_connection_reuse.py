"""A finished stream gives its connection back to the adapter's pool (providers/upstream.py).

The gateway stops reading at the stream's last event, before the end of the chunked body;
unless the adapter reads that end, httpx closes the connection and every request pays for a
new one. A real uvicorn server tells which connection (client port) each request came on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from llmmesh.v1 import chat_pb2
from replay_server import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.providers.base import ProviderConfig
from gateway.providers.openai import OpenAIAdapter

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTS = 24


def _chunk(choice: dict[str, object]) -> bytes:
    document = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return f"data: {json.dumps(document)}\n\n".encode()


async def _answer() -> AsyncIterator[bytes]:
    yield _chunk({"index": 0, "delta": {"role": "assistant", "content": "hi"}})
    yield _chunk({"index": 0, "delta": {}, "finish_reason": "stop"})
    yield b"data: [DONE]\n\n"


def _app(ports: list[int]) -> Starlette:
    async def completions(request: Request) -> Response:
        assert request.client is not None
        ports.append(request.client.port)
        return StreamingResponse(_answer(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def test_sequential_streams_reuse_connections() -> None:
    ports: list[int] = []
    request = chat_pb2.ChatRequest(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
    )
    async with serve(_app(ports)) as port:
        adapter = OpenAIAdapter(
            ProviderConfig(upstream_model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        )
        try:
            for _ in range(REQUESTS):
                events = adapter.stream(request)
                async for event in events:
                    if event.HasField("generation_finish"):
                        break  # As the gateway does: the body's end is not read yet.
                await events.aclose()  # type: ignore[attr-defined]
        finally:
            await adapter.aclose()
    assert len(ports) == REQUESTS
    # Round-robin over the adapter's pools: one connection per pool, each reused.
    assert len(set(ports)) <= REQUESTS // 3
