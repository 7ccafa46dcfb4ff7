"""Google's Gemini API (generateContent / streamGenerateContent) behind the canonical interface.

Request (https://ai.google.dev/api/generate-content): `contents` of `user`/`model` turns made
of parts (text, `inlineData`/`fileData` images, `functionCall`, `functionResponse`); system
messages go to `systemInstruction`; `generationConfig` in camelCase (temperature, topP, topK,
maxOutputTokens, candidateCount = `n`, seed, stopSequences, penalties; `json_schema` →
responseMimeType application/json + responseSchema; `json_object` → application/json;
`choice` → text/x.enum with an enum schema; `include_reasoning` → thinkingConfig.includeThoughts).
Tool and response schemas are JSON Schema converted to Gemini's OpenAPI subset (upper-case
types, local `$ref`s inlined, `nullable` for `["x", "null"]`, unsupported keywords dropped).
A tool result is sent as a `functionResponse` whose `response` is the result when it is a JSON
object, else `{"output": <text>}` (the key Gemini's docs name). Refused: beam search,
`ignore_eos`, regex constraints, logprobs. `provider_extensions["gemini"]` may add keys anywhere
the adapter did not set them (e.g. `generationConfig.responseModalities`).

Opaque `thoughtSignature`s round-trip: on a `functionCall` part it rides on the tool call's
`provider_metadata["gemini"]["thoughtSignature"]`; on a thought part it is that reasoning's
signature; on a text part (or a part holding nothing but the signature, as Gemini may end a
stream) it rides on the text delta's `provider_metadata`, the same way, whether or not
`include_reasoning` is set. On the way back each is put on the part it came from: the tool
call's, the reasoning's, or the text `ContentPart`'s `provider_metadata`.

Stream: every chunk is a whole `GenerateContentResponse`; each candidate `index` (0 when
absent) is a sequence. Function calls arrive whole: one tool call delta with id (Gemini's, or
a generated `call_…` when it sends none), name and the JSON of `args`. Finish reasons: STOP →
STOP, or TOOL_CALLS when the candidate called a function (Gemini says STOP for both);
MAX_TOKENS → LENGTH; SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, LANGUAGE and the
IMAGE_* ones → CONTENT_FILTER; anything else UNSPECIFIED. Usage comes from the last chunk that
carries `usageMetadata` (every chunk repeats the running totals, so summing would count twice);
completion tokens include `thoughtsTokenCount`. A prompt blocked by `promptFeedback.blockReason`
(a 200 answer without candidates) is a generation whose every sequence finishes with
CONTENT_FILTER and no output: the provider answered, the client's request was well-formed, and
OpenAI-shaped clients see the `content_filter` finish they know; it is not an error.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Final

import httpx
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.base import ProviderConfig
from gateway.providers.errors import InvalidRequest, ProviderError, error_for_code
from gateway.providers.extensions import merge_extensions
from gateway.providers.gemini_schema import gemini_schema
from gateway.providers.http_adapter import HttpAdapter, UpstreamCall
from gateway.providers.parameters import copy_parameters, refuse_unsupported, tool_call_arguments
from gateway.providers.sse import ServerSentEvent
from gateway.providers.stream_builder import StreamBuilder
from gateway.providers.structs import struct_to_json
from gateway.providers.upstream import parse_json_object

__all__ = ["GeminiAdapter"]

PROVIDER: Final = "gemini"
DEFAULT_BASE_URL: Final = "https://generativelanguage.googleapis.com/v1beta"

_UNSUPPORTED: Final = (
    "beam_search",
    "ignore_eos",
    "structured_output.regex",
    "logprobs",
    "top_logprobs",
)
_RESERVED: Final = frozenset({"contents"})

_CONTENT_FILTERS: Final = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)

#: google.rpc status names → canonical code and retryable flag.
_STATUSES: Final = {
    "RESOURCE_EXHAUSTED": (events_pb2.ERROR_CODE_RATE_LIMITED, True),
    "INVALID_ARGUMENT": (events_pb2.ERROR_CODE_INVALID_REQUEST, False),
    "FAILED_PRECONDITION": (events_pb2.ERROR_CODE_INVALID_REQUEST, False),
    "UNAVAILABLE": (events_pb2.ERROR_CODE_UNAVAILABLE, True),
    "INTERNAL": (events_pb2.ERROR_CODE_UPSTREAM_ERROR, True),
    "DEADLINE_EXCEEDED": (events_pb2.ERROR_CODE_UPSTREAM_ERROR, True),
}

Events = list[events_pb2.StreamEvent]


# -- canonical request → Gemini body ------------------------------------------------------------


def _signature(metadata: Any) -> str:
    gemini = struct_to_json(metadata).get(PROVIDER) if metadata.fields else None
    if isinstance(gemini, dict) and isinstance(gemini.get("thoughtSignature"), str):
        return str(gemini["thoughtSignature"])
    return ""


def _image_part(image: chat_pb2.Image) -> dict[str, Any]:
    if image.WhichOneof("source") == "data":
        if not image.mime_type:
            raise InvalidRequest(
                "an inline image needs its mime_type", provider=PROVIDER, field="messages.content"
            )
        data = base64.b64encode(image.data).decode("ascii")
        return {"inlineData": {"mimeType": image.mime_type, "data": data}}
    if image.url.startswith("data:"):
        header, _, data = image.url.partition(",")
        mime_type = header.removeprefix("data:").split(";", 1)[0]
        return {"inlineData": {"mimeType": mime_type or image.mime_type, "data": data}}
    file_data = {"fileUri": image.url}
    if image.mime_type:
        file_data["mimeType"] = image.mime_type
    return {"fileData": file_data}


def _parts(message: chat_pb2.Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in message.content:
        kind = part.WhichOneof("kind")
        result: dict[str, Any]
        if kind == "text":
            result = {"text": part.text}
        elif kind == "image":
            result = _image_part(part.image)
        elif kind == "reasoning" and message.role == chat_pb2.ROLE_ASSISTANT:
            result = {"text": part.reasoning.text, "thought": True}
            if part.reasoning.signature:
                result["thoughtSignature"] = part.reasoning.signature
        else:
            continue
        signature = _signature(part.provider_metadata)
        if signature:
            result["thoughtSignature"] = signature
        parts.append(result)
    for call in message.tool_calls:
        function_call: dict[str, Any] = {
            "name": call.name,
            "args": tool_call_arguments(call, PROVIDER),
        }
        if call.id:
            function_call["id"] = call.id
        result = {"functionCall": function_call}
        signature = _signature(call.provider_metadata)
        if signature:
            result["thoughtSignature"] = signature
        parts.append(result)
    return parts


def _function_response(message: chat_pb2.Message, names: dict[str, str]) -> dict[str, Any]:
    name = names.get(message.tool_call_id) or message.name
    if not name:
        raise InvalidRequest(
            "a tool result must answer a tool call of an earlier message (or name its function)",
            provider=PROVIDER,
            field="messages.tool_call_id",
        )
    text = "".join(part.text for part in message.content if part.WhichOneof("kind") == "text")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"output": text}
    result: dict[str, Any] = {"name": name, "response": response}
    if message.tool_call_id:
        result["id"] = message.tool_call_id
    return {"functionResponse": result}


def _contents(request: chat_pb2.ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in request.messages:
        if message.role == chat_pb2.ROLE_SYSTEM:
            system += _parts(message)
            continue
        if message.role == chat_pb2.ROLE_USER:
            role, parts = "user", _parts(message)
        elif message.role == chat_pb2.ROLE_ASSISTANT:
            names.update({call.id: call.name for call in message.tool_calls})
            role, parts = "model", _parts(message)
        elif message.role == chat_pb2.ROLE_TOOL:
            role, parts = "user", [_function_response(message, names)]
        else:
            raise InvalidRequest("a message has no role", provider=PROVIDER, field="messages.role")
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _generation_config(request: chat_pb2.ChatRequest) -> dict[str, Any]:
    params = request.generation_parameters
    config: dict[str, Any] = {}
    copy_parameters(
        params,
        config,
        floats=(
            ("temperature", "temperature"),
            ("top_p", "topP"),
            ("presence_penalty", "presencePenalty"),
            ("frequency_penalty", "frequencyPenalty"),
        ),
        exact=(
            ("top_k", "topK"),
            ("max_tokens", "maxOutputTokens"),
            ("n", "candidateCount"),
            ("seed", "seed"),
        ),
    )
    if params.stop:
        config["stopSequences"] = list(params.stop)
    output = params.structured_output
    constraint = output.WhichOneof("constraint")
    if constraint == "json_schema":
        config["responseMimeType"] = "application/json"
        config["responseSchema"] = gemini_schema(struct_to_json(output.json_schema.schema))
    elif constraint == "json_object" and output.json_object:
        config["responseMimeType"] = "application/json"
    elif constraint == "choice":
        config["responseMimeType"] = "text/x.enum"
        config["responseSchema"] = {"type": "STRING", "enum": list(output.choice.choices)}
    if request.include_reasoning:
        config["thinkingConfig"] = {"includeThoughts": True}
    return config


def _function_declaration(tool: chat_pb2.Tool) -> dict[str, Any]:
    result: dict[str, Any] = {"name": tool.name}
    if tool.description:
        result["description"] = tool.description
    if tool.HasField("parameters"):
        result["parameters"] = gemini_schema(struct_to_json(tool.parameters))
    return result


def _tool_config(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    which = choice.WhichOneof("choice")
    if which == "function_name":
        return {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice.function_name]}
        }
    if which == "mode":
        mode = {
            chat_pb2.ToolChoice.MODE_AUTO: "AUTO",
            chat_pb2.ToolChoice.MODE_NONE: "NONE",
            chat_pb2.ToolChoice.MODE_REQUIRED: "ANY",
        }.get(choice.mode)
        return {"functionCallingConfig": {"mode": mode}} if mode else None
    return None


def request_body(request: chat_pb2.ChatRequest) -> dict[str, Any]:
    """The generateContent body for `request`; raises `InvalidRequest`."""
    refuse_unsupported(request, provider=PROVIDER, unsupported=_UNSUPPORTED)
    system, contents = _contents(request)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    body["generationConfig"] = _generation_config(request)
    if request.tools:
        body["tools"] = [
            {"functionDeclarations": [_function_declaration(tool) for tool in request.tools]}
        ]
    tool_config = _tool_config(request.tool_choice)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    return merge_extensions(body, request, provider=PROVIDER, reserved=_RESERVED)


# -- Gemini answers → canonical events ----------------------------------------------------------


def _error_from_object(error: dict[str, Any]) -> tuple[events_pb2.ErrorCode, bool, str]:
    message = str(error.get("message") or "the provider reported an error")
    code, retryable = _STATUSES.get(
        str(error.get("status") or ""), (events_pb2.ERROR_CODE_UPSTREAM_ERROR, False)
    )
    return code, retryable, message


def _raise_error_object(error: dict[str, Any]) -> ProviderError:
    code, retryable, message = _error_from_object(error)
    status = int(error.get("code") or 400)
    return error_for_code(code, message, provider=PROVIDER, retryable=retryable, status=status)


def _finish_reason(reason: str, called_a_function: bool) -> events_pb2.FinishReason:
    if reason == "STOP":
        if called_a_function:
            return events_pb2.FINISH_REASON_TOOL_CALLS
        return events_pb2.FINISH_REASON_STOP
    if reason == "MAX_TOKENS":
        return events_pb2.FINISH_REASON_LENGTH
    if reason in _CONTENT_FILTERS:
        return events_pb2.FINISH_REASON_CONTENT_FILTER
    return events_pb2.FINISH_REASON_UNSPECIFIED


def _apply_usage(builder: StreamBuilder, usage: dict[str, Any]) -> None:
    """Replaces the usage with this chunk's running totals (the last chunk's win)."""
    prompt = int(usage.get("promptTokenCount") or 0) + int(
        usage.get("toolUsePromptTokenCount") or 0
    )
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    completion = int(usage.get("candidatesTokenCount") or 0) + thoughts
    builder.usage.CopyFrom(
        events_pb2.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(usage.get("totalTokenCount") or prompt + completion),
            cached_prompt_tokens=int(usage.get("cachedContentTokenCount") or 0),
            reasoning_tokens=thoughts,
        )
    )


class _StreamTranslator:
    """GenerateContentResponse chunks → canonical events."""

    def __init__(self, request: chat_pb2.ChatRequest, model: str) -> None:
        params = request.generation_parameters
        self.builder = StreamBuilder(sequences=params.n if params.HasField("n") else 1)
        self._reasoning = request.include_reasoning
        self._model = model
        self._tool_calls: dict[int, int] = {}  # candidate index → tool calls so far

    def feed(self, event: ServerSentEvent) -> Events:
        if not event.data.strip():
            return []
        return self.response(parse_json_object(event.data))

    def response(self, chunk: dict[str, Any]) -> Events:
        """The events of one `GenerateContentResponse` (a stream chunk or a whole answer)."""
        builder = self.builder
        error = chunk.get("error")
        if isinstance(error, dict):
            if not builder.started:
                raise _raise_error_object(error)
            code, retryable, message = _error_from_object(error)
            return builder.fail(code, message, retryable=retryable)
        usage = chunk.get("usageMetadata")
        events = builder.start(
            request_id=str(chunk.get("responseId") or ""),
            model=str(chunk.get("modelVersion") or self._model),
            prompt_tokens=int((usage or {}).get("promptTokenCount") or 0),
        )
        if isinstance(usage, dict):
            _apply_usage(builder, usage)
        candidates = chunk.get("candidates") or []
        if not candidates and (chunk.get("promptFeedback") or {}).get("blockReason"):
            return (
                events
                + builder.finish_all(events_pb2.FINISH_REASON_CONTENT_FILTER)
                + (builder.end())
            )
        for candidate in candidates:
            index = int(candidate.get("index") or 0)
            events += builder.open(index)
            for part in (candidate.get("content") or {}).get("parts") or []:
                events += self._part(index, part)
            reason = candidate.get("finishReason")
            if reason:
                events += builder.finish(
                    index, _finish_reason(str(reason), index in self._tool_calls)
                )
        return events

    def _part(self, index: int, part: dict[str, Any]) -> Events:
        builder = self.builder
        signature = str(part.get("thoughtSignature") or "")
        call = part.get("functionCall")
        if isinstance(call, dict):
            position = self._tool_calls.get(index, 0)
            self._tool_calls[index] = position + 1
            arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
            return builder.tool_call(
                index,
                position,
                call_id=str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                name=str(call.get("name") or ""),
                arguments=arguments,
                provider_metadata={PROVIDER: {"thoughtSignature": signature}}
                if signature
                else None,
            )
        text = part.get("text")
        if part.get("thought"):
            if not self._reasoning:
                return []
            return builder.reasoning(index, text if isinstance(text, str) else "", signature)
        if signature and (isinstance(text, str) or part.keys() == {"thoughtSignature"}):
            metadata = {PROVIDER: {"thoughtSignature": signature}}
            return builder.text_with_metadata(index, text or "", metadata)
        if not isinstance(text, str):
            return builder.open(index)  # inline data, code execution: not canonical output
        return builder.text(index, text)

    def end_of_body(self) -> Events:
        builder = self.builder
        if not builder.started or builder.done:
            return []
        if builder.open_sequences or not builder.finished_sequences:
            return builder.fail(
                events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                f"the answer from {PROVIDER} ended before every candidate had a finishReason",
                retryable=True,
            )
        return builder.end()


class GeminiAdapter(HttpAdapter):
    """Google's Gemini API (the Developer API at `base_url`)."""

    name = PROVIDER
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self, config: ProviderConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(config, transport=transport)
        self._model = config.upstream_model.removeprefix("models/")

    def _headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def _call(self, request: chat_pb2.ChatRequest, *, stream: bool) -> UpstreamCall:
        if stream:
            return UpstreamCall(
                f"models/{self._model}:streamGenerateContent", request_body(request), {"alt": "sse"}
            )
        return UpstreamCall(f"models/{self._model}:generateContent", request_body(request))

    def _translator(self, request: chat_pb2.ChatRequest) -> _StreamTranslator:
        return _StreamTranslator(request, self._model)

    def _answer_events(self, answer: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
        translator = _StreamTranslator(request, self._model)
        return translator.response(answer) + translator.end_of_body()

    def _credentials_rejected(self, error: dict[str, Any]) -> bool:
        reasons = {
            detail.get("reason")
            for detail in error.get("details") or []
            if isinstance(detail, dict)
        }
        # Google reports a refused key as 400 INVALID_ARGUMENT with this ErrorInfo reason.
        return "API_KEY_INVALID" in reasons
