"""The native API, `POST /v1/generate` (DESIGN.md, "JSON on the edge").

The body is the canonical `ChatRequest` in its JSON form plus a top-level `stream` boolean.
Streamed, the answer is the canonical events themselves, one SSE event each, named as
`plumbing.json_form.EVENT_NAMES` says. Not streamed, it is one document::

    {"generation_start": {...}, "sequences": [{"index": 0, "text": ..., "finish_reason": ...}],
     "generation_finish": {"usage": {...}, "timings": {...}}}

A sequence and a tool call carry `provider_metadata` when the provider sent any (the text
deltas' metadata merged), for the client to put back on the next turn's content part.

Errors: `{"error": {"code", "message", "field", "retryable"}}` (+ `available_models` on 404).
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format, struct_pb2
from llmmesh.v1 import chat_pb2, events_pb2
from sse_starlette import ServerSentEvent

from gateway.completion import Completion, GatheredSequence
from gateway.edge_api import EdgeRequest, load_json_object
from gateway.errors import InvalidRequest, MeshError, ModelNotFound
from gateway.providers.structs import struct_to_json
from plumbing import json_form

__all__ = ["NativeApi", "NativeEncoder"]

_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD = re.compile(r'has no field named "(\w+)"')


def _field_of(message: str) -> str | None:
    """The dotted field path a protobuf JSON parse error names, when it names one."""
    path = _FAILED_FIELD.findall(message)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown is not None:
        path.append(unknown.group(1))
    return ".".join(path) or None


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


class NativeEncoder:
    """Canonical events as SSE events: name = the event kind, data = its JSON form."""

    def encode(self, event: events_pb2.StreamEvent) -> list[ServerSentEvent]:
        """One SSE event per canonical event."""
        return [
            ServerSentEvent(data=json_form.event_to_json(event), event=json_form.event_name(event))
        ]


def _sequence_document(sequence: GatheredSequence) -> dict[str, Any]:
    finish = sequence.finish
    document: dict[str, Any] = {
        "index": sequence.index,
        "text": sequence.text,
        "reasoning": sequence.reasoning,
        "refusal": sequence.refusal,
        "tool_calls": [
            _with_metadata(
                {"id": call.id, "name": call.name, "arguments": call.arguments},
                call.provider_metadata,
            )
            for _, call in sorted(sequence.tool_calls.items())
        ],
        "finish_reason": events_pb2.FinishReason.Name(
            finish.reason if finish is not None else events_pb2.FINISH_REASON_UNSPECIFIED
        ),
        "token_ids": sequence.token_ids,
        "logprobs": [_dict(logprob) for logprob in sequence.logprobs],
    }
    _with_metadata(document, sequence.provider_metadata)
    if finish is not None and finish.HasField("stop_sequence"):
        document["stop_sequence"] = finish.stop_sequence
    if finish is not None and finish.HasField("cumulative_logprob"):
        document["cumulative_logprob"] = finish.cumulative_logprob
    return document


def _with_metadata(document: dict[str, Any], metadata: struct_pb2.Struct) -> dict[str, Any]:
    """`document` with `provider_metadata` added when there is any (as the stream prints it)."""
    if metadata.fields:
        document["provider_metadata"] = struct_to_json(metadata)
    return document


class NativeApi:
    """`/v1/generate`: the canonical request and events on the wire."""

    name = "native"

    def parse(self, body: bytes) -> EdgeRequest:
        """The `ChatRequest` JSON form plus `stream` (default false)."""
        document = load_json_object(body)
        stream = document.pop("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("stream: must be a boolean", field="stream")
        try:
            request = json_form.request_from_dict(document)
        except json_form.InvalidJson as exc:
            raise InvalidRequest(str(exc), field=_field_of(str(exc))) from exc
        return EdgeRequest(request=request, stream=stream)

    def field_name(self, canonical: str) -> str:
        """Canonical names are this API's names."""
        return canonical

    def error_body(self, error: MeshError) -> dict[str, Any]:
        """`{"error": {"code", "message", "field", "retryable"}}`."""
        body: dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "field": error.field,
            "retryable": error.retryable,
        }
        if isinstance(error, ModelNotFound):
            body["available_models"] = error.available
        return {"error": body}

    def encoder(self, request: chat_pb2.ChatRequest) -> NativeEncoder:
        """The canonical events, unchanged."""
        return NativeEncoder()

    def document(self, completion: Completion, request: chat_pb2.ChatRequest) -> dict[str, Any]:
        """Start, every sequence gathered, and the finish (usage and timings)."""
        return {
            "generation_start": _dict(completion.start or events_pb2.GenerationStart()),
            "sequences": [_sequence_document(sequence) for sequence in completion.ordered()],
            "generation_finish": _dict(completion.finish or events_pb2.GenerationFinish()),
        }
