"""Anthropic Messages ⇄ canonical (gateway/anthropic_api.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_streams import generation, text
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.anthropic_api import AnthropicApi
from gateway.completion import Completion
from gateway.errors import InvalidRequest, ProviderUnavailable

API = AnthropicApi()


def _base(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_request_maps_to_canonical() -> None:
    request = API.parse(
        json.dumps(
            _base(
                system=[{"type": "text", "text": "be brief"}],
                messages=[
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                            {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "x"}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                            {
                                "type": "text",
                                "text": "thanks",
                                "cache_control": {"type": "ephemeral"},
                            },
                        ],
                    },
                ],
                stop_sequences=["END"],
                top_k=5,
                tools=[{"name": "w", "input_schema": {"type": "object"}}],
                tool_choice={"type": "any"},
                thinking={"type": "enabled", "budget_tokens": 1024},
                metadata={"user_id": "u1"},
                service_tier="auto",
            )
        ).encode()
    ).request
    roles = [message.role for message in request.messages]
    assert roles == [
        chat_pb2.ROLE_SYSTEM,
        chat_pb2.ROLE_USER,
        chat_pb2.ROLE_ASSISTANT,
        chat_pb2.ROLE_TOOL,
        chat_pb2.ROLE_USER,
    ]
    assistant = request.messages[2]
    assert assistant.content[0].reasoning.signature == "sig"
    assert json.loads(assistant.tool_calls[0].arguments) == {"city": "x"}
    assert request.messages[3].tool_call_id == "t1"
    parameters = request.generation_parameters
    assert (parameters.max_tokens, parameters.top_k, list(parameters.stop)) == (8, 5, ["END"])
    assert request.tool_choice.mode == chat_pb2.ToolChoice.MODE_REQUIRED
    assert request.include_reasoning
    extension = parameters.provider_extensions["anthropic"]
    assert extension["service_tier"] == "auto"
    assert dict(extension["thinking"])["budget_tokens"] == 1024  # type: ignore[arg-type]
    assert request.metadata["user_id"] == "u1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (_base(max_tokens=-1), "max_tokens"),
        (_base(temperature=1.5), "temperature"),
        (_base(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
    ],
)
def test_invalid_bodies_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        API.parse(json.dumps(body).encode())
    assert raised.value.field == param


def test_error_shape() -> None:
    assert API.error_body(ProviderUnavailable("busy")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    assert API.field_name("generation_parameters.stop") == "stop_sequences"


def _events(events: list[events_pb2.StreamEvent]) -> list[tuple[str, dict[str, Any]]]:
    encoder = API.encoder(chat_pb2.ChatRequest(model="m"))
    return [
        (item.event or "", json.loads(str(item.data)))
        for event in events
        for item in encoder.encode(event)
    ]


def test_stream_event_sequence_with_thinking_text_and_tool_use() -> None:
    thinking = events_pb2.SequenceDelta(
        reasoning=events_pb2.ReasoningDelta(text="hm", signature="s")
    )
    tool = events_pb2.SequenceDelta(
        tool_call=events_pb2.ToolCallDelta(tool_call_index=0, id="t1", name="w", arguments="{}")
    )
    events = generation(
        [[thinking, text("a"), text("b"), tool]], reasons=[events_pb2.FINISH_REASON_TOOL_CALLS]
    )
    encoded = _events(events)
    names = [name for name, _ in encoded]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in encoded)
    assert encoded[0][1]["message"]["usage"]["input_tokens"] == 5
    assert encoded[1][1]["content_block"]["type"] == "thinking"
    assert encoded[3][1]["delta"] == {"type": "signature_delta", "signature": "s"}
    assert encoded[9][1] == {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "t1", "name": "w", "input": {}},
    }
    assert encoded[10][1]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert encoded[12][1]["delta"]["stop_reason"] == "tool_use"
    assert encoded[12][1]["usage"]["output_tokens"] == 4


def test_stream_error_is_an_error_event() -> None:
    events = generation(
        [[text("a")]],
        error=events_pb2.StreamError(code=events_pb2.ERROR_CODE_WORKER_LOST, message="gone"),
    )
    encoded = _events(events)
    error = [data for name, data in encoded if name == "error"]
    assert error == [{"type": "error", "error": {"type": "api_error", "message": "gone"}}]
    assert [name for name, _ in encoded][-2:] == ["message_delta", "message_stop"]


def test_document_stop_sequence() -> None:
    completion = Completion()
    for event in generation([[text("hi")]]):
        completion.add(event)
    sequence = completion.sequences[0]
    assert sequence.finish is not None
    sequence.finish.stop_sequence = "END"
    document = API.document(completion, chat_pb2.ChatRequest(model="m"))
    assert document["content"] == [{"type": "text", "text": "hi"}]
    assert (document["stop_reason"], document["stop_sequence"]) == ("stop_sequence", "END")
    assert document["usage"] == {"input_tokens": 5, "output_tokens": 1}
