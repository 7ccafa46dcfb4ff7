"""The Anthropic-compatible API, `POST /v1/messages` (the official SDK works unchanged).

Request: Anthropic's Messages body, validated by the pydantic models of
`gateway/anthropic_schema.py` and mapped onto the canonical request (`tool_result` blocks
become tool messages, `thinking` blocks reasoning parts, `system` the system message).
Top-level fields the canonical schema lacks go to `provider_extensions["anthropic"]`.

Stream (https://docs.anthropic.com/en/api/messages-streaming): `message_start`, then content
blocks (`content_block_start`, `content_block_delta` with `text_delta` / `thinking_delta` /
`signature_delta` / `input_json_delta`, `content_block_stop`), `message_delta` with the stop
reason and usage, `message_stop`. An error after the headers is an `error` event.
Errors: `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from llmmesh.v1 import chat_pb2, events_pb2
from sse_starlette import ServerSentEvent

from gateway.anthropic_schema import (
    ImageBlock,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from gateway.completion import Completion
from gateway.edge_api import EdgeRequest, parse_validated
from gateway.errors import InvalidRequest, MeshError, error_from_stream_error
from gateway.providers.structs import struct_from_json

__all__ = ["AnthropicApi", "AnthropicEncoder"]


def _image(block: ImageBlock, field: str) -> chat_pb2.ContentPart:
    source = block.source
    if isinstance(source, UrlSource):
        return chat_pb2.ContentPart(image=chat_pb2.Image(url=source.url))
    try:
        data = base64.b64decode(source.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{field}.source.data: invalid base64", field=field) from exc
    return chat_pb2.ContentPart(image=chat_pb2.Image(data=data, mime_type=source.media_type))


def _parts(content: str | list[Any] | None, field: str) -> list[chat_pb2.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [chat_pb2.ContentPart(text=content)]
    parts = []
    for position, block in enumerate(content):
        if isinstance(block, TextBlock):
            parts.append(chat_pb2.ContentPart(text=block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, f"{field}.{position}"))
    return parts


def _messages(turn: MessageParam, position: int) -> list[chat_pb2.Message]:
    field = f"messages.{position}.content"
    if isinstance(turn.content, str):
        role = chat_pb2.ROLE_USER if turn.role == "user" else chat_pb2.ROLE_ASSISTANT
        return [chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=turn.content)])]
    if turn.role == "assistant":
        message = chat_pb2.Message(role=chat_pb2.ROLE_ASSISTANT)
        for block in turn.content:
            if isinstance(block, ThinkingBlock):
                message.content.add(
                    reasoning=chat_pb2.Reasoning(text=block.thinking, signature=block.signature)
                )
            elif isinstance(block, RedactedThinkingBlock):
                message.content.add(reasoning=chat_pb2.Reasoning(signature=block.data))
            elif isinstance(block, ToolUseBlock):
                message.tool_calls.add(
                    id=block.id, name=block.name, arguments=json.dumps(block.input)
                )
            elif isinstance(block, TextBlock):
                message.content.add(text=block.text)
            else:
                raise InvalidRequest(
                    f"{field}: {block.type} blocks are not allowed in assistant turns", field=field
                )
        return [message]
    # A user turn: tool results become tool messages (in order), the rest one user message.
    result: list[chat_pb2.Message] = []
    user = chat_pb2.Message(role=chat_pb2.ROLE_USER)
    for index, block in enumerate(turn.content):
        if isinstance(block, ToolResultBlock):
            result.append(
                chat_pb2.Message(
                    role=chat_pb2.ROLE_TOOL,
                    tool_call_id=block.tool_use_id,
                    content=_parts(block.content, f"{field}.{index}.content"),
                )
            )
        elif isinstance(block, TextBlock | ImageBlock):
            user.content.extend(_parts([block], field))
        else:
            raise InvalidRequest(
                f"{field}: {block.type} blocks are not allowed in user turns", field=field
            )
    if user.content:
        result.append(user)
    return result


def to_canonical(body: MessagesRequest) -> chat_pb2.ChatRequest:
    """The canonical request of a validated Messages body."""
    request = chat_pb2.ChatRequest(model=body.model)
    if body.system:
        request.messages.add(role=chat_pb2.ROLE_SYSTEM, content=_parts(body.system, "system"))
    for position, turn in enumerate(body.messages):
        request.messages.extend(_messages(turn, position))
    parameters = request.generation_parameters
    parameters.max_tokens = body.max_tokens
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(body, name)
        if value is not None:
            setattr(parameters, name, value)
    parameters.stop.extend(body.stop_sequences or [])
    for tool in body.tools or []:
        request.tools.add(
            name=tool.name,
            description=tool.description or "",
            parameters=struct_from_json(tool.input_schema),
        )
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceTool):
        request.tool_choice.function_name = choice.name
    elif choice is not None:
        request.tool_choice.mode = {
            "auto": chat_pb2.ToolChoice.MODE_AUTO,
            "any": chat_pb2.ToolChoice.MODE_REQUIRED,
            "none": chat_pb2.ToolChoice.MODE_NONE,
        }[choice.type]
    extensions = dict(body.model_extra or {})
    if isinstance(body.thinking, ThinkingEnabled):
        request.include_reasoning = True
        extensions["thinking"] = body.thinking.model_dump()
    if isinstance(choice, ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool) and (
        choice.disable_parallel_tool_use is not None
    ):
        extensions["tool_choice"] = choice.model_dump(exclude_none=True)
    if extensions:
        parameters.provider_extensions["anthropic"].CopyFrom(struct_from_json(extensions))
    if body.metadata is not None and body.metadata.user_id:
        request.metadata["user_id"] = body.metadata.user_id
    return request


_STOP_REASONS: dict[int, str] = {
    events_pb2.FINISH_REASON_STOP: "end_turn",
    events_pb2.FINISH_REASON_LENGTH: "max_tokens",
    events_pb2.FINISH_REASON_TOOL_CALLS: "tool_use",
    events_pb2.FINISH_REASON_CONTENT_FILTER: "refusal",
    events_pb2.FINISH_REASON_CANCELLED: "end_turn",
    events_pb2.FINISH_REASON_ERROR: "end_turn",
}

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def _error_body(error: MeshError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(error.status, "api_error"), "message": error.message},
    }


def _stop(finish: events_pb2.SequenceFinish | None, refused: bool) -> tuple[str, str | None]:
    if finish is None:
        return "end_turn", None
    if refused:
        return "refusal", None
    if finish.reason == events_pb2.FINISH_REASON_STOP and finish.HasField("stop_sequence"):
        return "stop_sequence", finish.stop_sequence
    return _STOP_REASONS.get(finish.reason, "end_turn"), None


def _event(kind: str, document: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        event=kind, data=json.dumps({"type": kind, **document}, separators=(",", ":"))
    )


class AnthropicEncoder:
    """Canonical events (one sequence) → the Messages streaming events."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        self._model = request.model
        self._block_index = -1
        self._block_kind: str | None = None
        self._tool_call_index = -1
        self._refused = False
        self._finish: events_pb2.SequenceFinish | None = None
        self._prompt_tokens = 0

    def _close_block(self) -> list[ServerSentEvent]:
        if self._block_kind is None:
            return []
        self._block_kind = None
        return [_event("content_block_stop", {"index": self._block_index})]

    def _open_block(self, kind: str, block: Mapping[str, object]) -> list[ServerSentEvent]:
        events = self._close_block()
        self._block_index += 1
        self._block_kind = kind
        events.append(
            _event("content_block_start", {"index": self._block_index, "content_block": block})
        )
        return events

    def _delta(self, delta: dict[str, Any]) -> ServerSentEvent:
        return _event("content_block_delta", {"index": self._block_index, "delta": delta})

    def encode(self, event: events_pb2.StreamEvent) -> list[ServerSentEvent]:
        """The Messages events of one canonical event."""
        which = event.WhichOneof("event")
        if which == "generation_start":
            start = event.generation_start
            self._prompt_tokens = start.prompt_tokens
            message: dict[str, Any] = {
                "id": f"msg_{start.request_id}",
                "type": "message",
                "role": "assistant",
                "model": start.model or self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": start.prompt_tokens, "output_tokens": 0},
            }
            return [_event("message_start", {"message": message})]
        if which == "sequence_delta":
            return self._encode_delta(event.sequence_delta)
        if which == "sequence_finish":
            self._finish = event.sequence_finish
            return self._close_block()
        if which == "error":
            events = self._close_block()
            error = error_from_stream_error(event.error)
            events.append(_event("error", {"error": _error_body(error)["error"]}))
            return events
        if which == "generation_finish":
            events = self._close_block()
            usage = event.generation_finish.usage
            reason, sequence = _stop(self._finish, self._refused)
            events.append(
                _event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {
                            "input_tokens": usage.prompt_tokens or self._prompt_tokens,
                            "output_tokens": usage.completion_tokens,
                        },
                    },
                )
            )
            events.append(_event("message_stop", {}))
            return events
        return []

    def _encode_delta(self, delta: events_pb2.SequenceDelta) -> list[ServerSentEvent]:
        which = delta.WhichOneof("delta")
        events: list[ServerSentEvent] = []
        if which in ("text", "refusal"):
            self._refused = self._refused or which == "refusal"
            if self._block_kind != "text":
                events += self._open_block("text", {"type": "text", "text": ""})
            text = delta.text if which == "text" else delta.refusal
            events.append(self._delta({"type": "text_delta", "text": text}))
        elif which == "reasoning":
            if self._block_kind != "thinking":
                events += self._open_block(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            if delta.reasoning.text:
                events.append(
                    self._delta({"type": "thinking_delta", "thinking": delta.reasoning.text})
                )
            if delta.reasoning.signature:
                events.append(
                    self._delta({"type": "signature_delta", "signature": delta.reasoning.signature})
                )
        elif which == "tool_call":
            piece = delta.tool_call
            if self._block_kind != "tool_use" or piece.tool_call_index != self._tool_call_index:
                self._tool_call_index = piece.tool_call_index
                block = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
                events += self._open_block("tool_use", block)
            if piece.arguments:
                events.append(
                    self._delta({"type": "input_json_delta", "partial_json": piece.arguments})
                )
        return events


def _tool_input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {}


class AnthropicApi:
    """`/v1/messages`."""

    name = "anthropic"

    def parse(self, body: bytes) -> EdgeRequest:
        """Validates the body (pydantic, strict JSON types) and maps it to the canonical form."""
        return parse_validated(body, MessagesRequest.model_validate_json, to_canonical)

    def field_name(self, canonical: str) -> str:
        """Anthropic's parameter name of a canonical field."""
        if canonical == "generation_parameters.stop" or canonical.startswith(
            "generation_parameters.stop."
        ):
            return canonical.replace("generation_parameters.stop", "stop_sequences")
        return canonical.removeprefix("generation_parameters.")

    def error_body(self, error: MeshError) -> dict[str, Any]:
        """`{"type": "error", "error": {"type", "message"}}`."""
        return _error_body(error)

    def encoder(self, request: chat_pb2.ChatRequest) -> AnthropicEncoder:
        """A Messages event encoder for `request`."""
        return AnthropicEncoder(request)

    def document(self, completion: Completion, request: chat_pb2.ChatRequest) -> dict[str, Any]:
        """A `message` object."""
        start = completion.start or events_pb2.GenerationStart()
        sequences = completion.ordered()
        content: list[dict[str, Any]] = []
        finish: events_pb2.SequenceFinish | None = None
        refused = False
        if sequences:
            sequence = sequences[0]
            finish = sequence.finish
            refused = bool(sequence.refusal)
            if sequence.reasoning or sequence.reasoning_signature:
                content.append(
                    {
                        "type": "thinking",
                        "thinking": sequence.reasoning,
                        "signature": sequence.reasoning_signature,
                    }
                )
            if sequence.text or sequence.refusal or not sequence.tool_calls:
                content.append({"type": "text", "text": sequence.text + sequence.refusal})
            for _, call in sorted(sequence.tool_calls.items()):
                content.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _tool_input(call.arguments),
                    }
                )
        reason, stop_sequence = _stop(finish, refused)
        usage = completion.usage
        return {
            "id": f"msg_{start.request_id}",
            "type": "message",
            "role": "assistant",
            "model": start.model or request.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": usage.prompt_tokens or start.prompt_tokens,
                "output_tokens": usage.completion_tokens,
            },
        }
