"""Anthropic's Messages API behind the canonical interface.

Request (https://docs.claude.com/en/api/messages): system messages go to the top-level
`system` field (wherever they stood); `max_tokens` is required, so an unset one is the config's
`default_max_tokens`; consecutive messages of one role merge (tool results become `tool_result`
blocks of a user turn, as the API wants parallel results in one turn); an assistant turn sends
its reasoning back first as `thinking` blocks with their signatures (or `redacted_thinking`
when the text is empty: the signature is then the redacted data), then text, then `tool_use`
blocks with the parsed arguments. Tools carry `input_schema`; `tool_choice` auto/none/required/
function → auto/none/any/tool. `json_schema` output → `output_config.format`. Refused: `n` > 1,
logprobs, beam search, `ignore_eos`, regex/choice/json_object constraints. Dropped: `seed`, the
penalties. Extended thinking is enabled through `provider_extensions["anthropic"]`
(e.g. `{"thinking": {"type": "enabled", "budget_tokens": 1024}}`).

Stream (https://docs.claude.com/en/docs/build-with-claude/streaming): one sequence (0).
`message_start` starts the generation (its id, model and prompt tokens = input + cache
creation + cache read); text, `tool_use` (id and name first, then `input_json_delta` pieces as
streamed, even when the stop leaves them invalid JSON), thinking and signature deltas map to
canonical deltas; `message_delta` carries the stop reason (end_turn/stop_sequence/pause_turn →
STOP, with the matched `stop_sequence`; max_tokens/model_context_window_exceeded → LENGTH;
tool_use → TOOL_CALLS; refusal → CONTENT_FILTER) and the cumulative output tokens;
`message_stop` (or the end of the body after a stop reason) finishes. An `event: error`
(e.g. `overloaded_error`) ends the stream with a `StreamError`: overloaded → UNAVAILABLE,
api_error → UPSTREAM_ERROR, rate_limit_error → RATE_LIMITED (all retryable),
invalid_request_error/request_too_large → INVALID_REQUEST, anything else UPSTREAM_ERROR (not
retryable).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.base import ProviderConfig
from gateway.providers.errors import InvalidRequest, ProviderError, error_for_code
from gateway.providers.extensions import merge_extensions
from gateway.providers.http_adapter import HttpAdapter, UpstreamCall
from gateway.providers.parameters import decimal, refuse_unsupported, tool_call_arguments
from gateway.providers.sse import ServerSentEvent
from gateway.providers.stream_builder import MalformedStream, StreamBuilder
from gateway.providers.structs import struct_to_json
from gateway.providers.upstream import parse_json_object

__all__ = ["AnthropicAdapter"]

PROVIDER: Final = "anthropic"
DEFAULT_BASE_URL: Final = "https://api.anthropic.com/v1"
#: The API version the adapter speaks (https://docs.claude.com/en/api/versioning).
API_VERSION: Final = "2023-06-01"

_UNSUPPORTED: Final = (
    "n",
    "logprobs",
    "top_logprobs",
    "beam_search",
    "ignore_eos",
    "structured_output.regex",
    "structured_output.choice",
    "structured_output.json_object",
)
_RESERVED: Final = frozenset({"model", "messages", "stream"})

_STOP_REASONS: Final = {
    "end_turn": events_pb2.FINISH_REASON_STOP,
    "stop_sequence": events_pb2.FINISH_REASON_STOP,
    "pause_turn": events_pb2.FINISH_REASON_STOP,
    "max_tokens": events_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": events_pb2.FINISH_REASON_LENGTH,
    "tool_use": events_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": events_pb2.FINISH_REASON_CONTENT_FILTER,
}

_ERROR_TYPES: Final = {
    "overloaded_error": (events_pb2.ERROR_CODE_UNAVAILABLE, True),
    "api_error": (events_pb2.ERROR_CODE_UPSTREAM_ERROR, True),
    "rate_limit_error": (events_pb2.ERROR_CODE_RATE_LIMITED, True),
    "invalid_request_error": (events_pb2.ERROR_CODE_INVALID_REQUEST, False),
    "request_too_large": (events_pb2.ERROR_CODE_INVALID_REQUEST, False),
}

Events = list[events_pb2.StreamEvent]


# -- canonical request → Anthropic body ---------------------------------------------------------


def _image_block(image: chat_pb2.Image) -> dict[str, Any]:
    if image.WhichOneof("source") == "url":
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    if not image.mime_type:
        raise InvalidRequest(
            "an inline image needs its mime_type", provider=PROVIDER, field="messages.content"
        )
    data = base64.b64encode(image.data).decode("ascii")
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": image.mime_type, "data": data},
    }


def _blocks(message: chat_pb2.Message) -> list[dict[str, Any]]:
    """The content blocks of a user or assistant message, reasoning first."""
    reasoning: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        kind = part.WhichOneof("kind")
        if kind == "text" and part.text:
            blocks.append({"type": "text", "text": part.text})
        elif kind == "image":
            blocks.append(_image_block(part.image))
        elif kind == "reasoning" and message.role == chat_pb2.ROLE_ASSISTANT:
            if part.reasoning.text:
                reasoning.append(
                    {
                        "type": "thinking",
                        "thinking": part.reasoning.text,
                        "signature": part.reasoning.signature,
                    }
                )
            elif part.reasoning.signature:
                reasoning.append({"type": "redacted_thinking", "data": part.reasoning.signature})
    for call in message.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": tool_call_arguments(call, PROVIDER),
            }
        )
    return reasoning + blocks


def _text(message: chat_pb2.Message) -> str:
    return "".join(part.text for part in message.content if part.WhichOneof("kind") == "text")


def _conversation(request: chat_pb2.ChatRequest) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == chat_pb2.ROLE_SYSTEM:
            system.append(_text(message))
            continue
        if message.role == chat_pb2.ROLE_TOOL:
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": _text(message),
                }
            ]
        elif message.role in (chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT):
            role = "user" if message.role == chat_pb2.ROLE_USER else "assistant"
            blocks = _blocks(message)
        else:
            raise InvalidRequest("a message has no role", provider=PROVIDER, field="messages.role")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return system, messages


def _tool(tool: chat_pb2.Tool) -> dict[str, Any]:
    result: dict[str, Any] = {"name": tool.name}
    if tool.description:
        result["description"] = tool.description
    result["input_schema"] = (
        struct_to_json(tool.parameters)
        if tool.HasField("parameters")
        else {"type": "object", "properties": {}}
    )
    if tool.HasField("strict"):
        result["strict"] = tool.strict
    return result


def _tool_choice(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    which = choice.WhichOneof("choice")
    if which == "function_name":
        return {"type": "tool", "name": choice.function_name}
    if which == "mode":
        kind = {
            chat_pb2.ToolChoice.MODE_AUTO: "auto",
            chat_pb2.ToolChoice.MODE_NONE: "none",
            chat_pb2.ToolChoice.MODE_REQUIRED: "any",
        }.get(choice.mode)
        return {"type": kind} if kind else None
    return None


def request_body(request: chat_pb2.ChatRequest, config: ProviderConfig) -> dict[str, Any]:
    """The Messages API body for `request` (streaming); raises `InvalidRequest`."""
    refuse_unsupported(request, provider=PROVIDER, unsupported=_UNSUPPORTED)
    params = request.generation_parameters
    system, messages = _conversation(request)
    body: dict[str, Any] = {
        "model": config.upstream_model,
        "max_tokens": params.max_tokens
        if params.HasField("max_tokens")
        else config.default_max_tokens,
        "messages": messages,
        "stream": True,
    }
    if len(system) == 1:
        body["system"] = system[0]
    elif system:
        body["system"] = [{"type": "text", "text": text} for text in system]
    for field in ("temperature", "top_p"):
        if params.HasField(field):
            body[field] = decimal(getattr(params, field))
    if params.HasField("top_k"):
        body["top_k"] = params.top_k
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    if params.structured_output.WhichOneof("constraint") == "json_schema":
        schema = struct_to_json(params.structured_output.json_schema.schema)
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    tool_choice = _tool_choice(request.tool_choice)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return merge_extensions(body, request, provider=PROVIDER, reserved=_RESERVED)


# -- Anthropic answers → canonical events -------------------------------------------------------


def _prompt_tokens(usage: dict[str, Any]) -> int:
    return int(
        (usage.get("input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
    )


def _apply_usage(builder: StreamBuilder, usage: dict[str, Any]) -> None:
    if "input_tokens" in usage:
        builder.usage.prompt_tokens = _prompt_tokens(usage)
    if "cache_read_input_tokens" in usage:
        builder.usage.cached_prompt_tokens = usage.get("cache_read_input_tokens") or 0
    if "output_tokens" in usage:
        builder.usage.completion_tokens = usage.get("output_tokens") or 0


def _error_from_object(error: dict[str, Any]) -> ProviderError:
    message = str(error.get("message") or "the provider reported an error")
    kind = str(error.get("type") or "")
    code, retryable = _ERROR_TYPES.get(kind, (events_pb2.ERROR_CODE_UPSTREAM_ERROR, False))
    return error_for_code(code, message, provider=PROVIDER, retryable=retryable)


class _StreamTranslator:
    """Messages API stream events → canonical events (one sequence)."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        self.builder = StreamBuilder(sequences=1)
        self._reasoning = request.include_reasoning
        self._tool_calls: dict[int, int] = {}  # content block index → tool call index
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def feed(self, event: ServerSentEvent) -> Events:
        if not event.data.strip():
            return []
        data = parse_json_object(event.data)
        kind = data.get("type") or event.event
        builder = self.builder
        if kind == "error":
            error = data.get("error")
            failure = _error_from_object(error if isinstance(error, dict) else {})
            if not builder.started:
                raise failure
            return builder.fail(failure.code, failure.message, retryable=failure.retryable)
        if kind == "message_start":
            message = data.get("message") or {}
            usage = message.get("usage") or {}
            events = builder.start(
                request_id=str(message.get("id") or ""),
                model=str(message.get("model") or ""),
                prompt_tokens=_prompt_tokens(usage),
            )
            _apply_usage(builder, usage)
            return events + builder.open(0)
        if kind == "content_block_start":
            return self.block(int(data.get("index") or 0), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index") or 0), data.get("delta") or {})
        if kind == "message_delta":
            delta = data.get("delta") or {}
            self.stop(delta.get("stop_reason"), delta.get("stop_sequence"))
            _apply_usage(builder, data.get("usage") or {})
            return []
        if kind == "message_stop":
            return self.finish()
        return []  # ping, content_block_stop, and event types added after this adapter

    def block(self, block_index: int, block: dict[str, Any], *, whole: bool = False) -> Events:
        """The events of a content block's start (`whole`: a complete non-streamed block)."""
        builder = self.builder
        kind = block.get("type")
        if kind == "text":
            return builder.text(0, block.get("text") or "")
        if kind == "tool_use":
            tool_index = self._tool_calls.setdefault(block_index, len(self._tool_calls))
            tool_input = block.get("input") or {}
            return builder.tool_call(
                0,
                tool_index,
                call_id=str(block.get("id") or ""),
                name=str(block.get("name") or ""),
                # A streamed block starts with `input: {}` and its JSON follows in deltas.
                arguments=json.dumps(tool_input) if tool_input or whole else "",
            )
        if not self._reasoning:
            return builder.open(0)
        if kind == "thinking":
            return builder.reasoning(0, block.get("thinking") or "", block.get("signature") or "")
        if kind == "redacted_thinking":
            return builder.reasoning(0, "", block.get("data") or "")
        return builder.open(0)

    def _block_delta(self, block_index: int, delta: dict[str, Any]) -> Events:
        builder = self.builder
        kind = delta.get("type")
        if kind == "text_delta":
            return builder.text(0, delta.get("text") or "")
        if kind == "input_json_delta":
            if block_index not in self._tool_calls:
                raise MalformedStream(f"input_json_delta for block {block_index}, not a tool_use")
            return builder.tool_call(
                0, self._tool_calls[block_index], arguments=delta.get("partial_json") or ""
            )
        if self._reasoning and kind == "thinking_delta":
            return builder.reasoning(0, delta.get("thinking") or "")
        if self._reasoning and kind == "signature_delta":
            return builder.reasoning(0, signature=delta.get("signature") or "")
        return builder.open(0)

    def stop(self, reason: Any, stop_sequence: Any) -> None:
        """Records the message's stop reason (and the stop sequence that matched)."""
        if reason:
            self._stop_reason = str(reason)
            self._stop_sequence = str(stop_sequence) if stop_sequence else None

    def finish(self) -> Events:
        """Finishes the sequence with the recorded stop reason, and the generation."""
        builder = self.builder
        if self._stop_reason is None:
            return builder.fail(
                events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                f"{PROVIDER} ended the message without a stop reason",
                retryable=True,
            )
        reason = _STOP_REASONS.get(self._stop_reason, events_pb2.FINISH_REASON_UNSPECIFIED)
        stop_sequence = self._stop_sequence if self._stop_reason == "stop_sequence" else None
        return builder.finish(0, reason, stop_sequence) + builder.end()

    def end_of_body(self) -> Events:
        # Recorded streams end without the blank line after `message_stop`, and a proxy may
        # drop `message_stop` itself: a body that ends after the stop reason is complete.
        if not self.builder.started or self.builder.done or self._stop_reason is None:
            return []
        return self.finish()


def _message_events(body: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
    """A non-streaming Messages API answer → the same canonical events as its stream."""
    if body.get("type") == "error":
        raise _error_from_object(body.get("error") or {})
    translator = _StreamTranslator(request)
    builder = translator.builder
    usage = body.get("usage") or {}
    events = builder.start(
        request_id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        prompt_tokens=_prompt_tokens(usage),
    )
    _apply_usage(builder, usage)
    events += builder.open(0)
    for block_index, block in enumerate(body.get("content") or []):
        events += translator.block(block_index, block, whole=True)
    translator.stop(body.get("stop_reason"), body.get("stop_sequence"))
    return events + translator.finish()


class AnthropicAdapter(HttpAdapter):
    """Anthropic's Messages API (or a compatible server at `base_url`)."""

    name = PROVIDER
    default_base_url = DEFAULT_BASE_URL

    def _headers(self, api_key: str) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _call(self, request: chat_pb2.ChatRequest, *, stream: bool) -> UpstreamCall:
        body = request_body(request, self._config)
        body["stream"] = stream
        return UpstreamCall("messages", body)

    def _translator(self, request: chat_pb2.ChatRequest) -> _StreamTranslator:
        return _StreamTranslator(request)

    def _answer_events(self, answer: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
        return _message_events(answer, request)
