"""The OpenAI-compatible API, `POST /v1/chat/completions` (the official SDK works unchanged).

Request: OpenAI's Chat Completions body, validated by the pydantic models of
`gateway/openai_schema.py` and mapped onto the canonical request. Parameters OpenAI has
and the canonical schema lacks go, unchanged, to `provider_extensions["openai"]`.

Stream: `chat.completion.chunk` objects. Each choice gets its own role chunk, its deltas
(content, refusal, `reasoning_content`, tool-call pieces, logprobs) and its own
`finish_reason` chunk, interleaved as the sequences progress; with
`stream_options.include_usage` a last chunk with `choices: []` carries the usage; then
`data: [DONE]`. An error after the headers is `data: {"error": {...}}` (the SDK raises it).
Errors: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llmmesh.v1 import chat_pb2, events_pb2
from sse_starlette import ServerSentEvent

from gateway.completion import Completion, GatheredSequence
from gateway.edge_api import EdgeRequest, parse_validated
from gateway.errors import MeshError, error_from_stream_error
from gateway.openai_schema import (
    AssistantMessage,
    ChatCompletionRequest,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    NamedToolChoice,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from gateway.providers.structs import struct_from_json

__all__ = ["OpenAIApi", "OpenAIEncoder"]

#: Compact JSON text, built once (`json.dumps` with arguments builds an encoder per call).
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _text(content: str | list[Any] | None) -> list[chat_pb2.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [chat_pb2.ContentPart(text=content)]
    parts: list[chat_pb2.ContentPart] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append(chat_pb2.ContentPart(text=part.text))
        elif isinstance(part, RefusalPart):
            parts.append(chat_pb2.ContentPart(text=part.refusal))
        elif isinstance(part, ImagePart):
            parts.append(chat_pb2.ContentPart(image=chat_pb2.Image(url=part.image_url.url)))
    return parts


def _message(message: SystemMessage | UserMessage | AssistantMessage | ToolMessage) -> Any:
    if isinstance(message, SystemMessage):
        return chat_pb2.Message(
            role=chat_pb2.ROLE_SYSTEM, content=_text(message.content), name=message.name or ""
        )
    if isinstance(message, UserMessage):
        return chat_pb2.Message(
            role=chat_pb2.ROLE_USER, content=_text(message.content), name=message.name or ""
        )
    if isinstance(message, ToolMessage):
        return chat_pb2.Message(
            role=chat_pb2.ROLE_TOOL,
            content=_text(message.content),
            tool_call_id=message.tool_call_id,
        )
    content: list[chat_pb2.ContentPart] = []
    if message.reasoning_content:
        content.append(
            chat_pb2.ContentPart(reasoning=chat_pb2.Reasoning(text=message.reasoning_content))
        )
    content.extend(_text(message.content))
    if message.refusal:
        content.append(chat_pb2.ContentPart(text=message.refusal))
    return chat_pb2.Message(
        role=chat_pb2.ROLE_ASSISTANT,
        content=content,
        name=message.name or "",
        tool_calls=[
            chat_pb2.ToolCall(
                id=call.id, name=call.function.name, arguments=call.function.arguments
            )
            for call in message.tool_calls or []
        ],
    )


def to_canonical(body: ChatCompletionRequest) -> chat_pb2.ChatRequest:
    """The canonical request of a validated Chat Completions body."""
    parameters = chat_pb2.GenerationParameters()
    for name in ("temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(parameters, name, value)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        parameters.max_tokens = max_tokens
    if body.stop is not None:
        parameters.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    if body.logprobs is not None:
        parameters.logprobs = body.logprobs
    if body.top_logprobs is not None:
        parameters.top_logprobs = body.top_logprobs
    response_format = body.response_format
    if isinstance(response_format, JsonObjectFormat):
        parameters.structured_output.json_object = True
    elif isinstance(response_format, JsonSchemaResponseFormat):
        constraint = parameters.structured_output.json_schema
        constraint.name = response_format.json_schema.name
        constraint.schema.CopyFrom(struct_from_json(response_format.json_schema.json_schema or {}))
        if response_format.json_schema.strict is not None:
            constraint.strict = response_format.json_schema.strict
    if body.model_extra:
        parameters.provider_extensions["openai"].CopyFrom(struct_from_json(dict(body.model_extra)))
    request = chat_pb2.ChatRequest(
        model=body.model,
        messages=[_message(message) for message in body.messages],
        generation_parameters=parameters,
    )
    for tool in body.tools or []:
        function = tool.function
        canonical = request.tools.add(name=function.name, description=function.description or "")
        if function.parameters is not None:
            canonical.parameters.CopyFrom(struct_from_json(function.parameters))
        if function.strict is not None:
            canonical.strict = function.strict
    if isinstance(body.tool_choice, NamedToolChoice):
        request.tool_choice.function_name = body.tool_choice.function.name
    elif body.tool_choice is not None:
        request.tool_choice.mode = {
            "none": chat_pb2.ToolChoice.MODE_NONE,
            "auto": chat_pb2.ToolChoice.MODE_AUTO,
            "required": chat_pb2.ToolChoice.MODE_REQUIRED,
        }[body.tool_choice]
    if body.stream_options is not None and body.stream_options.include_usage is not None:
        request.include_usage = body.stream_options.include_usage
    if body.user:
        request.metadata["user"] = body.user
    request.metadata.update(body.metadata or {})
    return request


_FINISH_REASONS: dict[int, str] = {
    events_pb2.FINISH_REASON_STOP: "stop",
    events_pb2.FINISH_REASON_LENGTH: "length",
    events_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    events_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    events_pb2.FINISH_REASON_CANCELLED: "stop",
    events_pb2.FINISH_REASON_ERROR: "stop",
}

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _logprobs(logprobs: list[events_pb2.TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": item.token,
                "logprob": item.logprob,
                "bytes": list(item.token.encode()),
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob, "bytes": list(top.token.encode())}
                    for top in item.top_logprobs
                ],
            }
            for item in logprobs
        ],
        "refusal": None,
    }


def _usage(usage: events_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _error_body(error: MeshError, field: str | None) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(error.status, "api_error"),
            "param": field,
            "code": error.code,
        }
    }


class OpenAIEncoder:
    """Canonical events → `chat.completion.chunk` SSE data, then `[DONE]`."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        self._include_usage = request.include_usage
        self._id = ""
        self._model = request.model
        self._created = int(time.time())
        self._text_prefix: str | None = None
        self._text_suffix = ""

    def _text_chunk(self, index: int, text: str) -> ServerSentEvent:
        """`_chunk` of one plain text delta, without building the document each time: the
        per-token fast path (the JSON is the same, key for key)."""
        if self._text_prefix is None:
            # Everything before the choice's content; fixed once the generation started.
            envelope = json.dumps(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "system_fingerprint": None,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
            self._text_prefix = envelope[:-1] + ',"choices":[{"index":'
            self._text_suffix = '},"logprobs":null,"finish_reason":null}]' + (
                ',"usage":null}' if self._include_usage else "}"
            )
        content = _to_json(text)
        return _LineEvent(
            data=f'{self._text_prefix}{index},"delta":{{"content":{content}{self._text_suffix}'
        )

    def _chunk(self, choices: list[dict[str, Any]]) -> ServerSentEvent:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None
        return _json_event(chunk)

    def _choice(self, index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, **extra}

    def encode(self, event: events_pb2.StreamEvent) -> list[ServerSentEvent]:
        """The chunks of one canonical event."""
        which = event.WhichOneof("event")
        if which == "generation_start":
            start = event.generation_start
            self._id = f"chatcmpl-{start.request_id}"
            self._model = start.model or self._model
            if start.HasField("created"):
                self._created = start.created.seconds
            self._text_prefix = None
            return []
        if which == "sequence_start":
            index = event.sequence_start.index
            return [self._chunk([self._choice(index, {"role": "assistant", "content": ""})])]
        if which == "sequence_delta":
            delta = event.sequence_delta
            if delta.WhichOneof("delta") == "text" and not delta.logprobs:
                return [self._text_chunk(delta.index, delta.text)]
            return [self._chunk([self._delta_choice(delta)])]
        if which == "sequence_finish":
            finish = event.sequence_finish
            reason = _FINISH_REASONS.get(finish.reason, "stop")
            return [self._chunk([self._choice(finish.index, {}, finish_reason=reason)])]
        if which == "error":
            error = error_from_stream_error(event.error)
            return [_json_event(_error_body(error, None))]
        if which == "generation_finish":
            trailer = []
            if self._include_usage:
                usage_chunk = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": _usage(event.generation_finish.usage),
                }
                trailer.append(_json_event(usage_chunk))
            trailer.append(_LineEvent(data="[DONE]"))
            return trailer
        return []

    def _delta_choice(self, delta: events_pb2.SequenceDelta) -> dict[str, Any]:
        which = delta.WhichOneof("delta")
        content: dict[str, Any] = {}
        if which == "text":
            content["content"] = delta.text
        elif which == "refusal":
            content["refusal"] = delta.refusal
        elif which == "reasoning":
            content["reasoning_content"] = delta.reasoning.text
        elif which == "tool_call":
            piece = delta.tool_call
            call: dict[str, Any] = {"index": piece.tool_call_index}
            function: dict[str, Any] = {"arguments": piece.arguments}
            if piece.id:
                call["id"] = piece.id
                call["type"] = "function"
            if piece.name:
                function["name"] = piece.name
            call["function"] = function
            content["tool_calls"] = [call]
        else:
            content["content"] = ""
        choice = self._choice(delta.index, content)
        if delta.logprobs:
            choice["logprobs"] = _logprobs(list(delta.logprobs))
        return choice


class _LineEvent(ServerSentEvent):
    """A data-only event whose data is one line (compact JSON never holds a raw CR or LF, and
    `[DONE]`): the bytes of `ServerSentEvent.encode`, without its line splitting per event."""

    def encode(self) -> bytes:
        return f"data: {self.data}\r\n\r\n".encode()


def _json_event(document: dict[str, Any]) -> ServerSentEvent:
    return _LineEvent(data=_to_json(document))


def _choice_document(sequence: GatheredSequence, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": sequence.text if sequence.text or not sequence.tool_calls else None,
        "refusal": sequence.refusal or None,
    }
    if sequence.reasoning:
        message["reasoning_content"] = sequence.reasoning
    if sequence.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for _, call in sorted(sequence.tool_calls.items())
        ]
    finish = sequence.finish
    return {
        "index": sequence.index,
        "message": message,
        "logprobs": _logprobs(sequence.logprobs) if logprobs else None,
        "finish_reason": _FINISH_REASONS.get(finish.reason, "stop") if finish else "stop",
    }


class OpenAIApi:
    """`/v1/chat/completions`."""

    name = "openai"

    def parse(self, body: bytes) -> EdgeRequest:
        """Validates the body (pydantic, strict JSON types) and maps it to the canonical form."""
        return parse_validated(body, ChatCompletionRequest.model_validate_json, to_canonical)

    def field_name(self, canonical: str) -> str:
        """OpenAI's parameter name of a canonical field."""
        if canonical == "generation_parameters.max_tokens":
            return "max_tokens"
        if canonical.startswith("generation_parameters.structured_output"):
            return "response_format"
        return canonical.removeprefix("generation_parameters.")

    def error_body(self, error: MeshError) -> dict[str, Any]:
        """`{"error": {"message", "type", "param", "code"}}`."""
        field = self.field_name(error.field) if error.field else None
        return _error_body(error, field)

    def encoder(self, request: chat_pb2.ChatRequest) -> OpenAIEncoder:
        """A chunk encoder for `request`."""
        return OpenAIEncoder(request)

    def document(self, completion: Completion, request: chat_pb2.ChatRequest) -> dict[str, Any]:
        """A `chat.completion` object."""
        start = completion.start or events_pb2.GenerationStart()
        logprobs = request.generation_parameters.logprobs
        return {
            "id": f"chatcmpl-{start.request_id}",
            "object": "chat.completion",
            "created": start.created.seconds if start.HasField("created") else int(time.time()),
            "model": start.model or request.model,
            "system_fingerprint": None,
            "choices": [_choice_document(seq, logprobs) for seq in completion.ordered()],
            "usage": _usage(completion.usage),
        }
