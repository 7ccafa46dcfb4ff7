"""Request conversion: canonical request → each provider's body, as sent on the wire.

For every recorded `*.request.json`, the canonical request that says the same thing is built
here by hand, sent through the adapter (captured with `httpx.MockTransport`) and compared with
the recording. Differences the recordings carry that the adapters deliberately do not produce
are normalised away in `_normalise_recording`, each with its reason.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2
from llmmesh.v1 import chat_pb2
from provider_cases import FIXTURES

from gateway.providers import InvalidRequest, ProviderConfig, load_adapter

ROLE = chat_pb2


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _text(role: chat_pb2.Role, text: str, **fields: Any) -> chat_pb2.Message:
    return chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=text)], **fields)


def _extension(request: chat_pb2.ChatRequest, provider: str, values: dict[str, Any]) -> None:
    request.generation_parameters.provider_extensions[provider].CopyFrom(_struct(values))


def _answered(
    request: chat_pb2.ChatRequest, call: chat_pb2.ToolCall, result: str
) -> chat_pb2.ChatRequest:
    """The next turn of `request`: the assistant made `call`, and the tool answered `result`."""
    follow_up = copy.deepcopy(request)
    follow_up.messages.extend(
        [
            chat_pb2.Message(role=ROLE.ROLE_ASSISTANT, tool_calls=[call]),
            _text(ROLE.ROLE_TOOL, result, tool_call_id=call.id),
        ]
    )
    return follow_up


async def _sent_body(
    provider: str, request: chat_pb2.ChatRequest, upstream_model: str = "upstream-model"
) -> dict[str, Any]:
    """The JSON body the adapter sends for `request` (the answer is a recorded stream)."""
    answers = {
        "openai": "openai/chat-stream-basic-text.sse",
        "anthropic": "anthropic/docs-basic-stream.sse",
        "gemini": "gemini/stream-basic-text.sse",
    }
    sent: list[httpx.Request] = []

    def handler(http_request: httpx.Request) -> httpx.Response:
        sent.append(http_request)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=(FIXTURES / answers[provider]).read_bytes(),
        )

    adapter = load_adapter(provider)(
        ProviderConfig(upstream_model=upstream_model, api_key="k"),
        transport=httpx.MockTransport(handler),
    )
    try:
        async with asyncio.timeout(10):
            async for _ in adapter.stream(request):
                pass
    finally:
        await adapter.aclose()
    assert len(sent) == 1
    body: dict[str, Any] = json.loads(sent[0].content)
    return body


def _recording(name: str) -> dict[str, Any]:
    recording: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return recording


def _normalise_recording(provider: str, recording: dict[str, Any]) -> dict[str, Any]:
    recording = copy.deepcopy(recording)
    if provider == "openai":
        # The adapter always asks for the usage chunk (it goes into GenerationFinish); the
        # README says the 2024 OAI request bodies were rebuilt without stream_options.
        recording.setdefault("stream_options", {"include_usage": True})
        # The canonical Tool cannot tell an empty description from none; empty ones are omitted.
        for tool in recording.get("tools", []):
            if tool["function"].get("description") == "":
                del tool["function"]["description"]
    if provider == "anthropic":
        # A string content is shorthand for one text block; the adapter always sends blocks.
        for message in recording["messages"]:
            if isinstance(message["content"], str):
                message["content"] = [{"type": "text", "text": message["content"]}]
    if provider == "gemini":
        # pydantic-ai sends `role: "user"` inside systemInstruction; the API ignores it there.
        recording.get("systemInstruction", {}).pop("role", None)
    return recording


# -- the recorded requests --------------------------------------------------------------------

_GET_CAPITAL_OPENAI = chat_pb2.Tool(
    name="get_capital",
    description="",
    parameters=_struct(
        {
            "additionalProperties": False,
            "properties": {"country": {"type": "string"}},
            "required": ["country"],
            "type": "object",
        }
    ),
    strict=True,
)
_UK_QUESTION = "What is the capital of the UK? Use the tool, then answer."


def _openai_requests() -> dict[str, tuple[chat_pb2.ChatRequest, str]]:
    basic = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "What's the weather like in SF?")])
    logprobs = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "Say foo")])
    logprobs.generation_parameters.logprobs = True
    single_tool = chat_pb2.ChatRequest(
        messages=[_text(ROLE.ROLE_USER, "what's the weather in NYC?")],
        tools=[
            chat_pb2.Tool(
                name="get_weather",
                parameters=_struct({"type": "object", "properties": {"city": {"type": "string"}}}),
            )
        ],
    )
    roundtrip_1 = chat_pb2.ChatRequest(
        messages=[_text(ROLE.ROLE_USER, _UK_QUESTION)],
        tools=[_GET_CAPITAL_OPENAI],
        tool_choice=chat_pb2.ToolChoice(mode=chat_pb2.ToolChoice.MODE_AUTO),
        include_usage=True,
    )
    capital_call = chat_pb2.ToolCall(
        id="call_ZR5UUuTt3pf61kjwAJIYdVMj", name="get_capital", arguments='{"country":"UK"}'
    )
    roundtrip_2 = _answered(roundtrip_1, capital_call, "London")
    return {
        "openai/chat-stream-basic-text.request.json": (basic, "gpt-4o-2024-08-06"),
        "openai/chat-stream-logprobs.request.json": (logprobs, "gpt-4o-2024-08-06"),
        "openai/chat-stream-single-tool-call.request.json": (single_tool, "gpt-4o-2024-08-06"),
        "openai/chat-stream-tool-roundtrip-1.request.json": (roundtrip_1, "gpt-4o-mini"),
        "openai/chat-stream-tool-roundtrip-2.request.json": (roundtrip_2, "gpt-4o-mini"),
    }


def _anthropic_requests() -> dict[str, tuple[chat_pb2.ChatRequest, str]]:
    basic = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "Hello")])
    basic.generation_parameters.max_tokens = 256
    tool_use = chat_pb2.ChatRequest(
        messages=[_text(ROLE.ROLE_USER, "What is the weather like in San Francisco?")],
        tools=[
            chat_pb2.Tool(
                name="get_weather",
                description="Get the current weather in a given location",
                parameters=_struct(
                    {
                        "type": "object",
                        "properties": {
                            "location": {
                                "type": "string",
                                "description": "The city and state, e.g. San Francisco, CA",
                            }
                        },
                        "required": ["location"],
                    }
                ),
            )
        ],
        tool_choice=chat_pb2.ToolChoice(mode=chat_pb2.ToolChoice.MODE_REQUIRED),
    )
    tool_use.generation_parameters.max_tokens = 1024
    thinking = chat_pb2.ChatRequest(
        messages=[_text(ROLE.ROLE_USER, "How do I cross the street?")], include_reasoning=True
    )
    thinking.generation_parameters.max_tokens = 4096
    # The recording's URL had `?beta=true` (the SDK's beta client); the adapter does not add it.
    _extension(thinking, "anthropic", {"thinking": {"budget_tokens": 1024, "type": "enabled"}})
    return {
        "anthropic/docs-basic-stream.request.json": (basic, "claude-sonnet-4-5"),
        "anthropic/docs-tool-use-stream.request.json": (tool_use, "claude-sonnet-4-5"),
        "anthropic/thinking-stream.request.json": (thinking, "claude-sonnet-4-0"),
    }


def _gemini_tool(name: str, description: str, argument: str, argument_description: str) -> Any:
    return chat_pb2.Tool(
        name=name,
        description=description,
        parameters=_struct(
            {
                "type": "object",
                "properties": {argument: {"type": "string", "description": argument_description}},
                "required": [argument],
                # JSON Schema keywords Gemini's Schema lacks are dropped by the adapter.
                "additionalProperties": False,
            }
        ),
    )


def _gemini_requests() -> dict[str, tuple[chat_pb2.ChatRequest, str]]:
    roundtrip_1 = chat_pb2.ChatRequest(
        messages=[
            _text(ROLE.ROLE_SYSTEM, "You are a helpful chatbot."),
            _text(ROLE.ROLE_USER, "What is the temperature of the capital of France?"),
        ],
        tools=[
            _gemini_tool(
                "get_capital", "Get the capital of a country.", "country", "The country name."
            ),
            _gemini_tool(
                "get_temperature", "Get the temperature in a city.", "city", "The city name."
            ),
        ],
    )
    capital_call = chat_pb2.ToolCall(
        id="pyd_ai_0e1a07b3c2b64d2ab3ad2efbe18e1b97",
        name="get_capital",
        arguments='{"country": "France"}',
    )
    roundtrip_2 = _answered(roundtrip_1, capital_call, '{"return_value": "Paris"}')
    temperature_call = chat_pb2.ToolCall(
        id="pyd_ai_98b25d994c5648df82f683188629229d",
        name="get_temperature",
        arguments='{"city": "Paris"}',
    )
    roundtrip_3 = _answered(roundtrip_2, temperature_call, '{"return_value": "30°C"}')
    growing = chat_pb2.ChatRequest(
        messages=[_text(ROLE.ROLE_USER, "Count from 1 to 30, one number per line, digits only.")]
    )
    _extension(growing, "gemini", {"generationConfig": {"responseModalities": ["TEXT"]}})
    return {
        "gemini/stream-tool-roundtrip-1.request.json": (roundtrip_1, "gemini-2.0-flash"),
        "gemini/stream-tool-roundtrip-2.request.json": (roundtrip_2, "gemini-2.0-flash"),
        "gemini/stream-tool-roundtrip-3.request.json": (roundtrip_3, "gemini-2.0-flash"),
        "gemini/stream-usage-growing.request.json": (growing, "gemini-2.5-flash"),
    }


_RECORDED = {**_openai_requests(), **_anthropic_requests(), **_gemini_requests()}


def test_every_recorded_request_is_covered() -> None:
    recorded = {f"{path.parent.name}/{path.name}" for path in FIXTURES.glob("*/*.request.json")}
    assert recorded == set(_RECORDED)


@pytest.mark.parametrize("name", sorted(_RECORDED))
async def test_the_body_says_what_the_recording_says(name: str) -> None:
    provider = name.split("/", 1)[0]
    request, upstream_model = _RECORDED[name]
    sent = await _sent_body(provider, request, upstream_model)
    assert sent == _normalise_recording(provider, _recording(name))


# -- conversions the recordings do not show ----------------------------------------------------


async def test_openai_generation_parameters() -> None:
    request = chat_pb2.ChatRequest(
        messages=[
            _text(ROLE.ROLE_SYSTEM, "Be brief."),
            _text(ROLE.ROLE_USER, "Where?", name="ada"),
        ],
        tools=[chat_pb2.Tool(name="locate")],
        tool_choice=chat_pb2.ToolChoice(function_name="locate"),
    )
    params = request.generation_parameters
    params.temperature = 0.7
    params.top_p = 0.9
    params.top_k = 5  # OpenAI has no top_k: dropped
    params.max_tokens = 100
    params.n = 3
    params.seed = 42
    params.stop.extend(["END", "STOP"])
    params.presence_penalty = 0.5
    params.frequency_penalty = -0.5
    params.logprobs = True
    params.top_logprobs = 2
    params.structured_output.json_schema.name = "Location"
    params.structured_output.json_schema.schema.update({"type": "object"})
    params.structured_output.json_schema.strict = True
    sent = await _sent_body("openai", request)
    assert sent == {
        "model": "upstream-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where?", "name": "ada"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "top_p": 0.9,
        "max_completion_tokens": 100,
        "n": 3,
        "seed": 42,
        "stop": ["END", "STOP"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Location", "schema": {"type": "object"}, "strict": True},
        },
        "tools": [{"type": "function", "function": {"name": "locate"}}],
        "tool_choice": {"type": "function", "function": {"name": "locate"}},
    }


async def test_openai_images_and_json_object() -> None:
    request = chat_pb2.ChatRequest(
        messages=[
            chat_pb2.Message(
                role=ROLE.ROLE_USER,
                content=[
                    chat_pb2.ContentPart(text="What is this?"),
                    chat_pb2.ContentPart(image=chat_pb2.Image(url="https://example.com/a.png")),
                    chat_pb2.ContentPart(
                        image=chat_pb2.Image(data=b"\x89PNG", mime_type="image/png")
                    ),
                ],
            )
        ]
    )
    request.generation_parameters.structured_output.json_object = True
    sent = await _sent_body("openai", request)
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
    ]
    assert sent["response_format"] == {"type": "json_object"}


async def test_anthropic_sends_thinking_back_and_merges_tool_results() -> None:
    request = chat_pb2.ChatRequest(
        messages=[
            _text(ROLE.ROLE_SYSTEM, "Be brief."),
            _text(ROLE.ROLE_SYSTEM, "Use tools."),
            _text(ROLE.ROLE_USER, "Weather in Paris and Rome?"),
            chat_pb2.Message(
                role=ROLE.ROLE_ASSISTANT,
                content=[
                    chat_pb2.ContentPart(
                        reasoning=chat_pb2.Reasoning(text="Two calls.", signature="sig-1")
                    ),
                    chat_pb2.ContentPart(reasoning=chat_pb2.Reasoning(signature="redacted-2")),
                    chat_pb2.ContentPart(text="Checking."),
                ],
                tool_calls=[
                    chat_pb2.ToolCall(id="t1", name="weather", arguments='{"city": "Paris"}'),
                    chat_pb2.ToolCall(id="t2", name="weather", arguments=""),
                ],
            ),
            _text(ROLE.ROLE_TOOL, "18C", tool_call_id="t1"),
            _text(ROLE.ROLE_TOOL, "21C", tool_call_id="t2"),
        ],
        tools=[chat_pb2.Tool(name="weather")],
        tool_choice=chat_pb2.ToolChoice(mode=chat_pb2.ToolChoice.MODE_NONE),
    )
    params = request.generation_parameters
    params.temperature = 0.2
    params.top_k = 40
    params.seed = 7  # Anthropic has no seed: dropped
    params.stop.append("END")
    params.structured_output.json_schema.schema.update({"type": "object"})
    sent = await _sent_body("anthropic", request)
    assert sent == {
        "model": "upstream-model",
        "max_tokens": 4096,  # the config's default_max_tokens
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two calls.", "signature": "sig-1"},
                    {"type": "redacted_thinking", "data": "redacted-2"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "t2", "name": "weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "21C"},
                ],
            },
        ],
        "stream": True,
        "temperature": 0.2,
        "top_k": 40,
        "stop_sequences": ["END"],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "tools": [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "none"},
    }


async def test_gemini_round_trips_thought_signatures_and_camel_cases_the_config() -> None:
    request = chat_pb2.ChatRequest(
        messages=[
            _text(ROLE.ROLE_USER, "How long until New Year?"),
            chat_pb2.Message(
                role=ROLE.ROLE_ASSISTANT,
                content=[
                    chat_pb2.ContentPart(
                        reasoning=chat_pb2.Reasoning(text="Need the date.", signature="sig-t")
                    ),
                    chat_pb2.ContentPart(
                        text="Let me check.",
                        provider_metadata=_struct({"gemini": {"thoughtSignature": "sig-x"}}),
                    ),
                ],
                tool_calls=[
                    chat_pb2.ToolCall(
                        id="call_1",
                        name="now",
                        arguments="{}",
                        provider_metadata=_struct({"gemini": {"thoughtSignature": "sig-c"}}),
                    )
                ],
            ),
            _text(ROLE.ROLE_TOOL, "2025-07-28", tool_call_id="call_1"),
        ],
        tool_choice=chat_pb2.ToolChoice(function_name="now"),
        include_reasoning=True,
    )
    params = request.generation_parameters
    params.temperature = 0.5
    params.top_p = 0.25
    params.top_k = 3
    params.max_tokens = 64
    params.n = 2
    params.seed = 9
    params.stop.append("END")
    params.structured_output.json_schema.schema.update(
        {
            "type": "object",
            "properties": {
                "days": {"type": ["integer", "null"]},
                "unit": {"$ref": "#/$defs/Unit"},
            },
            "$defs": {"Unit": {"enum": ["days"], "type": "string"}},
        }
    )
    sent = await _sent_body("gemini", request)
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "How long until New Year?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Need the date.", "thought": True, "thoughtSignature": "sig-t"},
                {"text": "Let me check.", "thoughtSignature": "sig-x"},
                {
                    "functionCall": {"name": "now", "args": {}, "id": "call_1"},
                    "thoughtSignature": "sig-c",
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "now",
                        "response": {"output": "2025-07-28"},
                        "id": "call_1",
                    }
                },
            ],
        },
    ]
    assert sent["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.25,
        "topK": 3,
        "maxOutputTokens": 64,
        "candidateCount": 2,
        "seed": 9,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {
                "days": {"type": "INTEGER", "nullable": True},
                "unit": {"type": "STRING", "enum": ["days"]},
            },
        },
        "thinkingConfig": {"includeThoughts": True},
    }
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}
    }


async def test_gemini_choice_constraint_is_an_enum() -> None:
    request = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "Yes or no?")])
    request.generation_parameters.structured_output.choice.choices.extend(["yes", "no"])
    sent = await _sent_body("gemini", request)
    assert sent["generationConfig"] == {
        "responseMimeType": "text/x.enum",
        "responseSchema": {"type": "STRING", "enum": ["yes", "no"]},
    }


# -- refusals and provider_extensions ---------------------------------------------------------


def _set(request: chat_pb2.ChatRequest, name: str) -> None:
    params = request.generation_parameters
    if name == "n":
        params.n = 2
    elif name == "logprobs":
        params.logprobs = True
    elif name == "beam_search":
        params.beam_search.beam_width = 4
    elif name == "ignore_eos":
        params.ignore_eos = True
    elif name == "regex":
        params.structured_output.regex = "[a-z]+"
    elif name == "choice":
        params.structured_output.choice.choices.append("a")
    elif name == "json_object":
        params.structured_output.json_object = True


_REFUSED = [
    ("openai", "beam_search"),
    ("openai", "ignore_eos"),
    ("openai", "regex"),
    ("openai", "choice"),
    ("anthropic", "n"),
    ("anthropic", "logprobs"),
    ("anthropic", "beam_search"),
    ("anthropic", "regex"),
    ("anthropic", "choice"),
    ("anthropic", "json_object"),
    ("gemini", "beam_search"),
    ("gemini", "ignore_eos"),
    ("gemini", "regex"),
    ("gemini", "logprobs"),
]


@pytest.mark.parametrize(("provider", "parameter"), _REFUSED)
async def test_a_parameter_the_provider_cannot_honour_is_refused(
    provider: str, parameter: str
) -> None:
    request = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "hi")])
    _set(request, parameter)
    with pytest.raises(InvalidRequest) as caught:
        await _sent_body(provider, request)
    assert caught.value.retryable is False
    assert caught.value.field.startswith("generation_parameters.")


@pytest.mark.parametrize(
    ("provider", "extension"),
    [
        ("openai", {"messages": []}),
        ("openai", {"stream": False}),
        ("openai", {"model": "gpt-5"}),
        ("anthropic", {"stream": False}),
        ("anthropic", {"messages": []}),
        ("gemini", {"contents": []}),
        ("openai", {"temperature": 1.5}),  # set by the canonical request below
        ("anthropic", {"max_tokens": 10}),
        ("gemini", {"generationConfig": {"temperature": 1.5}}),
    ],
)
async def test_an_extension_may_not_override_what_the_adapter_sets(
    provider: str, extension: dict[str, Any]
) -> None:
    request = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "hi")])
    request.generation_parameters.temperature = 0.5
    _extension(request, provider, extension)
    with pytest.raises(InvalidRequest) as caught:
        await _sent_body(provider, request)
    assert caught.value.provider == provider
    assert f"provider_extensions.{provider}" in caught.value.field


async def test_only_the_named_provider_reads_its_extension() -> None:
    request = chat_pb2.ChatRequest(messages=[_text(ROLE.ROLE_USER, "hi")])
    request.generation_parameters.temperature = 0.5
    _extension(request, "openai", {"user": "u-1", "parallel_tool_calls": False})
    _extension(request, "anthropic", {"thinking": {"type": "enabled", "budget_tokens": 1024}})
    _extension(request, "gemini", {"generationConfig": {"responseModalities": ["TEXT"]}})
    openai = await _sent_body("openai", request)
    assert openai["user"] == "u-1" and openai["parallel_tool_calls"] is False
    assert "thinking" not in openai and "generationConfig" not in openai
    anthropic = await _sent_body("anthropic", request)
    assert anthropic["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "user" not in anthropic
    gemini = await _sent_body("gemini", request)
    assert gemini["generationConfig"] == {"temperature": 0.5, "responseModalities": ["TEXT"]}
