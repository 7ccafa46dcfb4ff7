"""The official `openai` SDK, unchanged, against the gateway and the mesh behind it.

The SDK client talks to the real model (the session's vLLM worker); the raw HTTP cases, which
never reach a worker, use the synthetic mesh's gateway.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
import pytest_asyncio
from gateway_mesh import MODEL, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name three rivers."},
]


@pytest_asyncio.fixture(loop_scope="session")
async def client(real_gateway: Gateway, real_api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{real_gateway.url}/v1", api_key=real_api_key, max_retries=0
    ) as sdk:
        yield sdk


async def test_non_streaming(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, seed=1
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_streaming_n3_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        n=3,
        max_tokens=6,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    roles: dict[int, int] = {}
    finishes: dict[int, list[str]] = {}
    texts: dict[int, str] = {}
    usage = None
    order: list[int] = []
    async for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        assert usage is None, "the usage chunk comes last"
        assert chunk.usage is None
        for choice in chunk.choices:
            order.append(choice.index)
            if choice.delta.role == "assistant":
                assert choice.index not in texts, "the role chunk comes first"
                roles[choice.index] = roles.get(choice.index, 0) + 1
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.setdefault(choice.index, []).append(choice.finish_reason)
    assert roles == {0: 1, 1: 1, 2: 1}
    assert set(finishes) == {0, 1, 2}
    assert all(len(reasons) == 1 for reasons in finishes.values())
    assert all(texts[index] for index in range(3))
    assert order != sorted(order), "the choices are interleaved"
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_same_seed_same_text(client: openai.AsyncOpenAI) -> None:
    first, second = [
        await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, seed=42, temperature=0.7
        )
        for _ in range(2)
    ]
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_json_schema_output_validates(client: openai.AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_completion_tokens=64,
        seed=3,
        stop=["never-matches"],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    jsonschema.validate(json.loads(choice.message.content), schema)


async def test_logprobs_with_top_alternatives(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, seed=5, logprobs=True, top_logprobs=3
    )
    (choice,) = completion.choices
    assert choice.logprobs is not None and choice.logprobs.content
    assert completion.usage is not None
    assert len(choice.logprobs.content) == completion.usage.completion_tokens
    assert "".join(token.token for token in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        assert token.logprob <= 0.0
        assert len(token.top_logprobs) == 3
        top = [alternative.logprob for alternative in token.top_logprobs]
        assert top == sorted(top, reverse=True) and top[0] >= token.logprob


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"n": 100}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 7}, "temperature"),
        ({"n": "three"}, "n"),
    ],
)
async def test_invalid_parameters_are_400_naming_the_param(
    client: openai.AsyncOpenAI, arguments: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            extra_body=arguments,  # bypasses the SDK's own typing
        )
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"


async def test_prompt_over_the_context_is_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "word " * 9000}],
            max_tokens=4,
        )
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error" and body["param"] == "messages"
    assert "8192" in body["message"] and "context" in body["message"]


async def test_unknown_model_is_404_listing_models(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert MODEL in str(raised.value)


async def test_missing_and_invalid_keys_are_401(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="lm-nope.nope", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        response = await raw.post("/v1/chat/completions", json={"model": MODEL})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "m", "messages": "x"}', 400, "messages"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "'
            + b"x" * 5_000_000
            + b'"}]}',
            413,
            None,
        ),
    ],
)
async def test_raw_4xx_in_openai_shape(
    gateway: Gateway, api_key: str, content: bytes, status: int, param: str | None
) -> None:
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}
    ) as raw:
        response = await raw.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


async def test_models_lists_the_served_model(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [model.id async for model in models] == [MODEL]
