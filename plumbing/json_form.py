"""The JSON form of the canonical schema on the edge (DESIGN.md, "JSON on the edge").

One module, both directions: the gateway and the tests use it for SSE event data and for the
native request body. Proto field names (snake_case), fields without presence always printed
(so `index: 0` is never missing), enums by name, int32 counts as JSON numbers. int64 fields
(only `seed`) print as JSON strings per the proto3 JSON mapping and parse from numbers or strings.
"""

from __future__ import annotations

import json
from typing import Any, Final

from google.protobuf import json_format
from llmmesh.v1 import chat_pb2, events_pb2

__all__ = [
    "EVENT_NAMES",
    "InvalidJson",
    "event_from_sse",
    "event_name",
    "event_to_dict",
    "event_to_json",
    "events_from_sse",
    "request_from_dict",
    "request_to_dict",
]

#: The SSE event name of each `StreamEvent` oneof member.
EVENT_NAMES: Final[dict[str, str]] = {
    "generation_start": "generation.start",
    "sequence_start": "sequence.start",
    "sequence_delta": "sequence.delta",
    "sequence_finish": "sequence.finish",
    "generation_finish": "generation.finish",
    "error": "error",
}
_FIELDS_BY_EVENT_NAME: Final[dict[str, str]] = {name: field for field, name in EVENT_NAMES.items()}


class InvalidJson(ValueError):
    """A JSON document does not fit the canonical schema; the message names the field."""


def event_name(event: events_pb2.StreamEvent) -> str:
    """The SSE event name of `event`; raises `ValueError` for an empty event."""
    which = event.WhichOneof("event")
    if which is None:
        raise ValueError("StreamEvent has no event set")
    return EVENT_NAMES[which]


def _to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


def event_to_dict(event: events_pb2.StreamEvent) -> dict[str, Any]:
    """The SSE data of `event`: the set oneof member as a dict, without the oneof wrapper."""
    which = event.WhichOneof("event")
    if which is None:
        raise ValueError("StreamEvent has no event set")
    return _to_dict(getattr(event, which))


def event_to_json(event: events_pb2.StreamEvent) -> str:
    """`event_to_dict` as compact JSON text."""
    return json.dumps(event_to_dict(event), separators=(",", ":"), ensure_ascii=False)


def event_from_sse(name: str, data: str) -> events_pb2.StreamEvent:
    """Parses one SSE event (its name and data) back into a `StreamEvent`.

    Raises `InvalidJson` for an unknown event name or data that does not fit the schema.
    """
    field = _FIELDS_BY_EVENT_NAME.get(name)
    if field is None:
        raise InvalidJson(f"unknown event name {name!r}")
    event = events_pb2.StreamEvent()
    try:
        json_format.Parse(data, getattr(event, field))
    except json_format.ParseError as exc:
        raise InvalidJson(str(exc)) from exc
    return event


def events_from_sse(pairs: list[tuple[str, str]]) -> list[events_pb2.StreamEvent]:
    """Parses a sequence of (event name, data) pairs; see `event_from_sse`."""
    return [event_from_sse(name, data) for name, data in pairs]


def request_to_dict(request: chat_pb2.ChatRequest) -> dict[str, Any]:
    """The native JSON form of a request (without the gateway-only `stream` flag)."""
    return _to_dict(request)


def request_from_dict(body: dict[str, Any]) -> chat_pb2.ChatRequest:
    """Parses the native JSON form of a request. Keys the schema does not know are an error.

    Raises `InvalidJson` naming the offending field (wrong type, unknown field, bad enum).
    """
    request = chat_pb2.ChatRequest()
    try:
        json_format.ParseDict(body, request)
    except json_format.ParseError as exc:
        raise InvalidJson(str(exc)) from exc
    return request
