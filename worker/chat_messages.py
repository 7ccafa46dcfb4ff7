"""The canonical conversation in the form Hugging Face chat templates take.

Templates read OpenAI-shaped dicts: `{"role", "content", "tool_calls", "tool_call_id",
"name"}` messages and `{"type": "function", "function": {...}}` tools. Requests a text-only
model without tools cannot honour (images, tool calls and results) are rejected here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from worker.engine_protocol import RequestRejected

__all__ = ["json_value", "template_messages", "template_tools"]

_INVALID = events_pb2.ERROR_CODE_INVALID_REQUEST
_ROLES = {
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_TOOL: "tool",
}


def template_messages(
    messages: Sequence[chat_pb2.Message], supports_tools: bool
) -> list[dict[str, Any]]:
    """The messages as template input; text parts are joined by newlines, reasoning parts
    of earlier turns are dropped. Raises `RequestRejected` (field "messages") for an empty
    conversation, a missing role, an image, or tool calls/results when `not supports_tools`.
    """
    if not messages:
        raise RequestRejected(_INVALID, "messages must not be empty", field="messages")
    rendered: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise RequestRejected(_INVALID, f"messages[{position}] has no role", field="messages")
        if not supports_tools and (message.tool_calls or message.role == chat_pb2.ROLE_TOOL):
            raise RequestRejected(
                _INVALID,
                f"messages[{position}] holds tool calls or results; the model has no tools",
                field="messages",
            )
        texts: list[str] = []
        for part in message.content:
            kind = part.WhichOneof("kind")
            if kind == "image":
                raise RequestRejected(
                    _INVALID,
                    f"messages[{position}] has an image; the model reads text only",
                    field="messages",
                )
            if kind == "text":
                texts.append(part.text)
        entry: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
        if message.name:
            entry["name"] = message.name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _arguments(call.arguments)},
                }
                for call in message.tool_calls
            ]
        rendered.append(entry)
    return rendered


def template_tools(tools: Sequence[chat_pb2.Tool]) -> list[dict[str, Any]]:
    """The tools as template input (OpenAI's function-tool shape)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": json_value(tool.parameters),
            },
        }
        for tool in tools
    ]


def json_value(struct: struct_pb2.Struct) -> Any:
    """A Struct as plain JSON values, integral numbers as ints: Struct keeps every number
    as a double, and schema consumers (grammar compilers, templates) reject
    `"maxLength": 20.0`."""
    return _integral(json_format.MessageToDict(struct))


def _integral(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _arguments(text: str) -> object:
    """Tool-call arguments as templates expect them: the parsed object when it is JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text
