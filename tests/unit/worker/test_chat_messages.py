"""Canonical messages and tools → chat-template input."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from worker.chat_messages import json_value, template_messages, template_tools
from worker.engine_protocol import RequestRejected


def _text(role: chat_pb2.Role, *texts: str) -> chat_pb2.Message:
    return chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=text) for text in texts])


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def test_roles_and_text_parts() -> None:
    reasoning = chat_pb2.ContentPart(reasoning=chat_pb2.Reasoning(text="hidden"))
    assistant = _text(chat_pb2.ROLE_ASSISTANT, "Hello")
    assistant.content.insert(0, reasoning)
    messages = [
        _text(chat_pb2.ROLE_SYSTEM, "Be brief."),
        _text(chat_pb2.ROLE_USER, "first line", "second line"),
        assistant,
    ]
    assert template_messages(messages, supports_tools=False) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first line\nsecond line"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_tool_calls_and_results_for_a_tool_model() -> None:
    call = chat_pb2.ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')
    broken = chat_pb2.ToolCall(id="call-2", name="get_weather", arguments="{not json")
    assistant = chat_pb2.Message(role=chat_pb2.ROLE_ASSISTANT, tool_calls=[call, broken])
    result = _text(chat_pb2.ROLE_TOOL, "sunny")
    result.tool_call_id = "call-1"
    result.name = "get_weather"
    rendered = template_messages([_text(chat_pb2.ROLE_USER, "?"), assistant, result], True)
    assert rendered[1]["tool_calls"] == [
        {"id": "call-1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call-2", "type": "function",
         "function": {"name": "get_weather", "arguments": "{not json"}},
    ]  # fmt: skip
    assert rendered[2] == {
        "role": "tool",
        "content": "sunny",
        "name": "get_weather",
        "tool_call_id": "call-1",
    }


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [_text(chat_pb2.ROLE_UNSPECIFIED, "who am I")],
        [
            chat_pb2.Message(
                role=chat_pb2.ROLE_USER,
                content=[chat_pb2.ContentPart(image=chat_pb2.Image(url="https://x.test/a.png"))],
            )
        ],
        [_text(chat_pb2.ROLE_TOOL, "sunny")],
        [
            chat_pb2.Message(
                role=chat_pb2.ROLE_ASSISTANT, tool_calls=[chat_pb2.ToolCall(id="c", name="f")]
            )
        ],
    ],
    ids=["empty", "no-role", "image", "tool-result", "tool-call"],
)
def test_rejected_for_a_text_model_without_tools(messages: list[chat_pb2.Message]) -> None:
    with pytest.raises(RequestRejected) as rejected:
        template_messages(messages, supports_tools=False)
    assert rejected.value.code == events_pb2.ERROR_CODE_INVALID_REQUEST
    assert rejected.value.field == "messages"


def test_tools_and_integral_numbers() -> None:
    parameters = _struct(
        {"type": "object", "properties": {"days": {"type": "integer", "maximum": 14}}}
    )
    tool = chat_pb2.Tool(name="forecast", description="Weather ahead.", parameters=parameters)
    assert template_tools([tool]) == [
        {
            "type": "function",
            "function": {
                "name": "forecast",
                "description": "Weather ahead.",
                "parameters": {
                    "type": "object",
                    "properties": {"days": {"type": "integer", "maximum": 14}},
                },
            },
        }
    ]
    value = json_value(_struct({"a": 1.5, "b": [2.0, {"c": 3.0}], "d": True}))
    assert value == {"a": 1.5, "b": [2, {"c": 3}], "d": True}
    assert isinstance(value["b"][0], int)
