"""OpenAI Chat Completions (and compatible servers) behind the canonical interface.

Request (https://platform.openai.com/docs/api-reference/chat/create): messages with their
roles, `max_completion_tokens`, `n`, `seed`, `stop`, penalties, `logprobs`/`top_logprobs`,
`response_format` (`json_schema` or `json_object`), `tools`/`tool_choice`, and always
`stream_options.include_usage` (the usage goes into `GenerationFinish`). Reasoning parts of
earlier turns are not sent (the API has no place for them). Refused: beam search, `ignore_eos`,
regex and choice constraints. Dropped: `top_k`. `provider_extensions["openai"]` may add any
other key of the body.

Stream: every choice `index` is a canonical sequence, started by its first chunk and finished
by its `finish_reason` (stop → STOP, length → LENGTH, tool_calls/function_call → TOOL_CALLS,
content_filter → CONTENT_FILTER, anything else → UNSPECIFIED); `delta.content`, `delta.refusal`,
`delta.tool_calls` and (for compatible servers, with `include_reasoning`) `reasoning_content`
become deltas, `logprobs.content` rides on its text delta. An in-band `{"error": …}` chunk
ends the stream with a `StreamError` (rate limits → RATE_LIMITED, invalid requests →
INVALID_REQUEST, both retryable as their kind is; anything else UPSTREAM_ERROR, retryable).
"""

from __future__ import annotations

import base64
from typing import Any, Final

from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.base import ProviderConfig
from gateway.providers.errors import InvalidRequest, ProviderError, error_for_code
from gateway.providers.extensions import merge_extensions
from gateway.providers.http_adapter import HttpAdapter, UpstreamCall
from gateway.providers.parameters import copy_parameters, refuse_unsupported
from gateway.providers.sse import ServerSentEvent
from gateway.providers.stream_builder import StreamBuilder
from gateway.providers.structs import struct_to_json
from gateway.providers.upstream import parse_json_object

__all__ = ["OpenAIAdapter"]

PROVIDER: Final = "openai"
DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

_UNSUPPORTED: Final = (
    "beam_search",
    "ignore_eos",
    "structured_output.regex",
    "structured_output.choice",
)
#: Keys that carry the conversation or the streaming protocol: never from an extension.
_RESERVED: Final = frozenset({"model", "messages", "stream", "stream_options"})

_FINISH_REASONS: Final = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "tool_calls": events_pb2.FINISH_REASON_TOOL_CALLS,
    "function_call": events_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": events_pb2.FINISH_REASON_CONTENT_FILTER,
}

#: The keys of a delta that carries nothing but text (the role comes with the first one).
_PLAIN_DELTA: Final = frozenset({"role", "content"})

Events = list[events_pb2.StreamEvent]


# -- canonical request → OpenAI body ------------------------------------------------------------


def _text(message: chat_pb2.Message) -> str:
    return "".join(part.text for part in message.content if part.WhichOneof("kind") == "text")


def _image_url(image: chat_pb2.Image) -> str:
    if image.WhichOneof("source") == "url":
        return image.url
    if not image.mime_type:
        raise InvalidRequest(
            "an inline image needs its mime_type", provider=PROVIDER, field="messages.content"
        )
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _user_content(message: chat_pb2.Message) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in message.content:
        kind = part.WhichOneof("kind")
        if kind == "text":
            parts.append({"type": "text", "text": part.text})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part.image)}})
    if all(part["type"] == "text" for part in parts) and len(parts) <= 1:
        return parts[0]["text"] if parts else ""
    return parts


def _message(message: chat_pb2.Message) -> dict[str, Any]:
    role = message.role
    result: dict[str, Any]
    if role == chat_pb2.ROLE_SYSTEM:
        result = {"role": "system", "content": _text(message)}
    elif role == chat_pb2.ROLE_USER:
        result = {"role": "user", "content": _user_content(message)}
    elif role == chat_pb2.ROLE_ASSISTANT:
        result = {"role": "assistant", "content": _text(message) or None}
        if message.tool_calls:
            result["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments or "{}"},
                }
                for call in message.tool_calls
            ]
    elif role == chat_pb2.ROLE_TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": _text(message)}
    else:
        raise InvalidRequest("a message has no role", provider=PROVIDER, field="messages.role")
    if message.name:
        result["name"] = message.name
    return result


def _tool(tool: chat_pb2.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.HasField("parameters"):
        function["parameters"] = struct_to_json(tool.parameters)
    if tool.HasField("strict"):
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: chat_pb2.ToolChoice) -> str | dict[str, Any] | None:
    which = choice.WhichOneof("choice")
    if which == "function_name":
        return {"type": "function", "function": {"name": choice.function_name}}
    if which == "mode":
        return {
            chat_pb2.ToolChoice.MODE_AUTO: "auto",
            chat_pb2.ToolChoice.MODE_NONE: "none",
            chat_pb2.ToolChoice.MODE_REQUIRED: "required",
        }.get(choice.mode)
    return None


def _response_format(output: chat_pb2.StructuredOutput) -> dict[str, Any] | None:
    which = output.WhichOneof("constraint")
    if which == "json_schema":
        schema: dict[str, Any] = {"name": output.json_schema.name or "response"}
        schema["schema"] = struct_to_json(output.json_schema.schema)
        if output.json_schema.HasField("strict"):
            schema["strict"] = output.json_schema.strict
        return {"type": "json_schema", "json_schema": schema}
    if which == "json_object" and output.json_object:
        return {"type": "json_object"}
    return None


def request_body(request: chat_pb2.ChatRequest, config: ProviderConfig) -> dict[str, Any]:
    """The Chat Completions body for `request` (streaming); raises `InvalidRequest`."""
    refuse_unsupported(request, provider=PROVIDER, unsupported=_UNSUPPORTED)
    params = request.generation_parameters
    body: dict[str, Any] = {
        "model": config.upstream_model,
        "messages": [_message(message) for message in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    copy_parameters(
        params,
        body,
        floats=(
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ),
        exact=(
            ("max_tokens", "max_completion_tokens"),
            ("n", "n"),
            ("seed", "seed"),
            ("logprobs", "logprobs"),
            ("top_logprobs", "top_logprobs"),
        ),
    )
    if params.stop:
        body["stop"] = list(params.stop)
    response_format = _response_format(params.structured_output)
    if response_format is not None:
        body["response_format"] = response_format
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    tool_choice = _tool_choice(request.tool_choice)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return merge_extensions(body, request, provider=PROVIDER, reserved=_RESERVED)


# -- OpenAI answers → canonical events ----------------------------------------------------------


def _logprobs(entries: Any) -> list[events_pb2.TokenLogprob]:
    return [
        events_pb2.TokenLogprob(
            token=entry.get("token", ""),
            logprob=entry.get("logprob", 0.0),
            top_logprobs=[
                events_pb2.TopLogprob(token=top.get("token", ""), logprob=top.get("logprob", 0.0))
                for top in entry.get("top_logprobs") or []
            ],
        )
        for entry in entries or []
    ]


def _apply_usage(builder: StreamBuilder, usage: dict[str, Any]) -> None:
    target = builder.usage
    target.prompt_tokens = usage.get("prompt_tokens") or 0
    target.completion_tokens = usage.get("completion_tokens") or 0
    target.total_tokens = usage.get("total_tokens") or 0
    target.cached_prompt_tokens = (usage.get("prompt_tokens_details") or {}).get(
        "cached_tokens"
    ) or 0
    target.reasoning_tokens = (usage.get("completion_tokens_details") or {}).get(
        "reasoning_tokens"
    ) or 0


def _error_kind(error: dict[str, Any]) -> tuple[events_pb2.ErrorCode, bool]:
    """The canonical code and retryable flag of an OpenAI error object."""
    kind = f"{error.get('type') or ''} {error.get('code') or ''}"
    if "rate_limit" in kind:
        return events_pb2.ERROR_CODE_RATE_LIMITED, True
    if "invalid_request" in kind:
        return events_pb2.ERROR_CODE_INVALID_REQUEST, False
    return events_pb2.ERROR_CODE_UPSTREAM_ERROR, True


def _raise_error_object(error: dict[str, Any]) -> ProviderError:
    message = str(error.get("message") or "the provider reported an error")
    code, retryable = _error_kind(error)
    return error_for_code(code, message, provider=PROVIDER, retryable=retryable)


class _StreamTranslator:
    """Chat completion chunks → canonical events."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        params = request.generation_parameters
        self.builder = StreamBuilder(sequences=params.n if params.HasField("n") else 1)
        self._reasoning = request.include_reasoning

    def feed(self, event: ServerSentEvent) -> Events:
        data = event.data.strip()
        if not data:
            return []
        if data == "[DONE]":
            return self._close(done_marker=True)
        chunk = parse_json_object(data)
        error = chunk.get("error")
        if error:
            error = error if isinstance(error, dict) else {"message": str(error)}
            if not self.builder.started:
                raise _raise_error_object(error)
            code, retryable = _error_kind(error)
            message = str(error.get("message") or "the provider reported an error")
            return self.builder.fail(code, message, retryable=retryable)
        events = self.builder.start(
            request_id=str(chunk.get("id") or ""),
            model=str(chunk.get("model") or ""),
            created=chunk.get("created"),
        )
        for choice in chunk.get("choices") or []:
            events += self._choice(choice)
        if chunk.get("usage"):
            _apply_usage(self.builder, chunk["usage"])
        return events

    def _choice(self, choice: dict[str, Any]) -> Events:
        builder = self.builder
        index = int(choice.get("index") or 0)
        delta = choice.get("delta") or {}
        if delta.keys() <= _PLAIN_DELTA and not (
            choice.get("finish_reason") or choice.get("logprobs")
        ):
            # The shape of almost every chunk (one token of text): the same events as below.
            return builder.text(index, delta.get("content") or "")
        logprobs = choice.get("logprobs") or {}
        events = builder.open(index)
        if self._reasoning:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str):
                events += builder.reasoning(index, reasoning)
        events += builder.text(
            index, delta.get("content") or "", _logprobs(logprobs.get("content"))
        )
        events += builder.refusal(
            index, delta.get("refusal") or "", _logprobs(logprobs.get("refusal"))
        )
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            events += builder.tool_call(
                index,
                int(call.get("index") or 0),
                call_id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
            )
        reason = choice.get("finish_reason")
        if reason:
            events += builder.finish(
                index, _FINISH_REASONS.get(reason, events_pb2.FINISH_REASON_UNSPECIFIED)
            )
        return events

    def _close(self, *, done_marker: bool) -> Events:
        builder = self.builder
        if not builder.started or builder.done:
            return []
        if builder.open_sequences:
            ending = "[DONE]" if done_marker else "the end of the stream"
            return builder.fail(
                events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                f"{PROVIDER} sent {ending} before every choice finished",
                retryable=True,
            )
        return builder.end()

    def end_of_body(self) -> Events:
        return self._close(done_marker=False)


def _completion_events(body: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
    """A non-streaming `chat.completion` → the same canonical events as its stream."""
    if body.get("error"):
        error = body["error"] if isinstance(body["error"], dict) else {"message": body["error"]}
        raise _raise_error_object(error)
    params = request.generation_parameters
    builder = StreamBuilder(sequences=params.n if params.HasField("n") else 1)
    usage = body.get("usage") or {}
    events = builder.start(
        request_id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        prompt_tokens=usage.get("prompt_tokens") or 0,
        created=body.get("created"),
    )
    for choice in sorted(body.get("choices") or [], key=lambda c: int(c.get("index") or 0)):
        index = int(choice.get("index") or 0)
        message = choice.get("message") or {}
        logprobs = choice.get("logprobs") or {}
        events += builder.open(index)
        if request.include_reasoning and isinstance(message.get("reasoning_content"), str):
            events += builder.reasoning(index, message["reasoning_content"])
        events += builder.text(
            index, message.get("content") or "", _logprobs(logprobs.get("content"))
        )
        events += builder.refusal(
            index, message.get("refusal") or "", _logprobs(logprobs.get("refusal"))
        )
        for position, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            events += builder.tool_call(
                index,
                position,
                call_id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
            )
        reason = choice.get("finish_reason") or ""
        events += builder.finish(
            index, _FINISH_REASONS.get(reason, events_pb2.FINISH_REASON_UNSPECIFIED)
        )
    _apply_usage(builder, usage)
    return events + builder.end()


class OpenAIAdapter(HttpAdapter):
    """OpenAI's Chat Completions API (or a compatible server at `base_url`)."""

    name = PROVIDER
    default_base_url = DEFAULT_BASE_URL

    def _headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(self, request: chat_pb2.ChatRequest, *, stream: bool) -> UpstreamCall:
        body = request_body(request, self._config)
        if not stream:
            body["stream"] = False
            del body["stream_options"]
        return UpstreamCall("chat/completions", body)

    def _translator(self, request: chat_pb2.ChatRequest) -> _StreamTranslator:
        return _StreamTranslator(request)

    def _answer_events(self, answer: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
        return _completion_events(answer, request)
