"""The official `anthropic` SDK, unchanged, against the gateway and the mesh behind it.

The SDK client talks to the real model (the session's vLLM worker); the raw HTTP cases, which
never reach a worker, use the synthetic mesh's gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest
import pytest_asyncio
from gateway_mesh import MODEL, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    real_gateway: Gateway, real_api_key: str
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=real_gateway.url, api_key=real_api_key, max_retries=0
    ) as sdk:
        yield sdk


async def test_messages_create(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=8,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Name a river."}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    (block,) = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 8


async def test_messages_stream(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model=MODEL,
        max_tokens=12,
        messages=[{"role": "user", "content": "Count."}],
        stop_sequences=["never-matches"],
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    raw = [kind for kind in kinds if kind not in ("text",)]
    assert raw[0] == "message_start"
    assert raw[1] == "content_block_start"
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


async def test_errors_in_anthropic_shape(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        await client.messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    assert MODEL in str(not_found.value)
    with pytest.raises(anthropic.BadRequestError) as invalid:
        await client.messages.create(
            model=MODEL, max_tokens=-1, messages=[{"role": "user", "content": "x"}]
        )
    body = invalid.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_prompt_over_the_context_is_400_in_anthropic_shape(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        await client.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "word " * 9000}]
        )
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "8192" in body["error"]["message"]


async def test_bad_key_is_401_in_anthropic_shape(gateway: Gateway) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="lm-bad.key", max_retries=0
    ) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await sdk.messages.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x"}]
            )
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("content", "status", "error_type"),
    [
        (b"{oops", 400, "invalid_request_error"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request_error",
        ),
        (b'{"model": "' + b"m" * 5_000_000 + b'"}', 413, "request_too_large"),
    ],
)
async def test_raw_4xx_in_anthropic_shape(
    gateway: Gateway, api_key: str, content: bytes, status: int, error_type: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": api_key}) as raw:
        response = await raw.post(
            "/v1/messages", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == status
    assert response.json() == {
        "type": "error",
        "error": {"type": error_type, "message": response.json()["error"]["message"]},
    }
