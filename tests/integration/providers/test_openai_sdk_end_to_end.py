"""End to end: the official `openai` SDK → our gateway → a replayed Anthropic or Gemini.

The gateway (real uvicorn, free port) routes two model names to external backends whose
`base_url` is the local replay server; the SDK must get correct OpenAI-shaped chunks: the
text, the tool calls with their arguments, the finish reasons and the usage that the
recordings hold (the facts are read from the fixtures, as in `provider_cases`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from replay_server import Answer, ReplayServer, provider_cases, serve

from gateway.app import create_app
from gateway.routing import ModelRoute, RoutingTable
from gateway.settings import GatewaySettings
from plumbing.keystore import Keystore
from plumbing.settings import MeshSettings

cases = provider_cases()

_ROUTED = {
    # model name → (backend, fixture)
    "claude-replayed": ("anthropic", "docs-tool-use-stream.sse"),
    "claude-basic": ("anthropic", "docs-basic-stream.sse"),
    "gemini-replayed": ("gemini", "stream-tool-roundtrip-1.sse"),
    "gemini-basic": ("gemini", "stream-basic-text.sse"),
}


@pytest.fixture
async def gateway(
    replay: ReplayServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AsyncOpenAI, dict[str, Answer]]]:
    monkeypatch.setenv("E2E_PROVIDER_KEY", "replay-key")
    answers: dict[str, Answer] = {}
    routes: dict[str, ModelRoute] = {}
    for model, (backend, fixture) in _ROUTED.items():
        answers[model] = Answer(content=(cases.FIXTURES / backend / fixture).read_bytes())
        routes[model] = ModelRoute.model_validate(
            {
                "backend": backend,
                "upstream_model": cases.UPSTREAM_MODEL,
                "base_url": replay.base_url(backend, answers[model]),
                "api_key_env": "E2E_PROVIDER_KEY",
            }
        )
    keystore = Keystore.open(f"sqlite:///{tmp_path / 'keys.db'}")
    api_key, _record = keystore.create_key("e2e")
    settings = GatewaySettings(
        mesh=MeshSettings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'keys.db'}"),
        scheduler_targets=["127.0.0.1:9"],  # never called: every model here is external
    )
    app = create_app(settings, routing=RoutingTable(routes), keystore=keystore)
    try:
        async with serve(app, lifespan="on") as port:
            client = AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0
            )
            try:
                yield client, answers
            finally:
                await client.close()
    finally:
        keystore.close()


async def _chunks(client: AsyncOpenAI, model: str) -> list[Any]:
    async with asyncio.timeout(20):
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "replayed"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]


def _gathered(chunks: list[Any]) -> dict[str, Any]:
    text, finish, usage = "", None, None
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if chunk.usage is not None:
            usage = (
                chunk.usage.prompt_tokens,
                chunk.usage.completion_tokens,
                chunk.usage.total_tokens,
            )
        for choice in chunk.choices:
            assert choice.index == 0
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.finish_reason is not None:
                assert finish is None, "one finish per choice"
                finish = choice.finish_reason
    return {"text": text, "calls": calls, "finish": finish, "usage": usage}


async def test_anthropic_tool_use_through_the_openai_api(
    gateway: tuple[AsyncOpenAI, dict[str, Answer]],
) -> None:
    client, answers = gateway
    result = _gathered(await _chunks(client, "claude-replayed"))
    # docs-tool-use-stream.sse: 13 text deltas, one tool_use block, stop_reason tool_use.
    assert result["text"] == "Okay, let's check the weather for San Francisco, CA:"
    assert list(result["calls"]) == [0]
    call = result["calls"][0]
    assert (call["id"], call["name"]) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert json.loads(call["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert result["finish"] == "tool_calls"
    assert result["usage"] == (472, 89, 561)
    assert len(answers["claude-replayed"].hits) == 1


async def test_anthropic_text_through_the_openai_api(
    gateway: tuple[AsyncOpenAI, dict[str, Answer]],
) -> None:
    client, _answers = gateway
    result = _gathered(await _chunks(client, "claude-basic"))
    assert (result["text"], result["finish"], result["usage"]) == ("Hello!", "stop", (25, 15, 40))


async def test_gemini_function_call_through_the_openai_api(
    gateway: tuple[AsyncOpenAI, dict[str, Answer]],
) -> None:
    client, answers = gateway
    result = _gathered(await _chunks(client, "gemini-replayed"))
    # stream-tool-roundtrip-1.sse: one whole functionCall, finishReason STOP.
    assert result["text"] == ""
    call = result["calls"][0]
    assert call["name"] == "get_capital" and call["id"]
    assert json.loads(call["arguments"]) == {"country": "France"}
    assert result["finish"] == "tool_calls"
    assert result["usage"] == (52, 5, 57)
    sent = json.loads(answers["gemini-replayed"].hits[0]["body"])
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "replayed"}]}]


async def test_gemini_text_through_the_openai_api(
    gateway: tuple[AsyncOpenAI, dict[str, Answer]],
) -> None:
    client, _answers = gateway
    result = _gathered(await _chunks(client, "gemini-basic"))
    assert result["text"] == "The capital of Wyoming is **Cheyenne**.\n"
    assert (result["finish"], result["usage"]) == ("stop", (7, 10, 17))
