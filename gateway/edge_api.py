"""The interface each HTTP API of the edge implements (native, OpenAI, Anthropic).

An edge API parses its body into the canonical request, renders canonical events as its own
SSE stream or as one JSON document, and renders mesh errors in its own error shape. The
request path between them (auth, validation, routing, admission, the backend call, metering)
is the same for every API and lives in `gateway/app.py` and `gateway/streaming.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llmmesh.v1 import chat_pb2, events_pb2
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from gateway.completion import Completion
from gateway.errors import InvalidRequest, MeshError

__all__ = [
    "EdgeApi",
    "EdgeRequest",
    "StreamEncoder",
    "invalid_request",
    "load_json_object",
    "parse_validated",
]


@dataclass
class EdgeRequest:
    """A parsed body: the canonical request and whether to stream the answer."""

    request: chat_pb2.ChatRequest
    stream: bool


class StreamEncoder(Protocol):
    """Turns one generation's canonical events into this API's SSE events, in order."""

    def encode(self, event: events_pb2.StreamEvent) -> list[ServerSentEvent]:
        """The SSE events for one canonical event (the finish yields the stream's trailer)."""
        ...


class EdgeApi(Protocol):
    """One HTTP API of the edge."""

    name: str

    def parse(self, body: bytes) -> EdgeRequest:
        """Parses a request body; raises `InvalidRequest` naming the field in this API's terms."""
        ...

    def field_name(self, canonical: str) -> str:
        """This API's name of a canonical request field (e.g. `generation_parameters.n`)."""
        ...

    def error_body(self, error: MeshError) -> dict[str, Any]:
        """The JSON error body in this API's shape."""
        ...

    def encoder(self, request: chat_pb2.ChatRequest) -> StreamEncoder:
        """A fresh encoder for one streamed answer to `request`."""
        ...

    def document(self, completion: Completion, request: chat_pb2.ChatRequest) -> dict[str, Any]:
        """The non-streamed answer: one JSON document."""
        ...


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"invalid JSON: {name} is not a JSON value")


def load_json_object(body: bytes) -> dict[str, Any]:
    """Parses a body that must be a JSON object; raises `InvalidRequest` otherwise."""
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return document


# pydantic names union members in error locations ("str", "list[...]", "function-after[...]").
_TYPE_LIKE = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|.*[\[(].*)$")


def invalid_request(error: ValidationError) -> InvalidRequest:
    """The `InvalidRequest` of a body's validation error, naming its first field (dotted)."""
    details = error.errors()
    if not details:
        return InvalidRequest(str(error))
    first = details[0]
    parts = [
        str(part)
        for part in first["loc"]
        if isinstance(part, int) or not _TYPE_LIKE.match(str(part))
    ]
    field = ".".join(parts) or None
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    return InvalidRequest(message, field=field)


class _ValidatedBody(Protocol):
    """A validated request body: its top-level `stream` flag is all `parse_validated` reads."""

    @property
    def stream(self) -> bool | None:
        """Whether the client asked for a streamed answer (None = not said)."""
        ...


_Body = TypeVar("_Body", bound=_ValidatedBody)


def parse_validated(
    body: bytes,
    validate: Callable[[bytes], _Body],
    to_canonical: Callable[[_Body], chat_pb2.ChatRequest],
) -> EdgeRequest:
    """Validates `body` (e.g. a pydantic model's `model_validate_json`) and maps it to the
    canonical request; streamed only when the body says `stream: true`.

    Raises `InvalidRequest` naming the first invalid field, or for a value no canonical field
    can hold.
    """
    try:
        parsed = validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from exc
    try:
        request = to_canonical(parsed)
    except (ValueError, OverflowError) as exc:  # e.g. a number no protobuf field can hold
        raise InvalidRequest(f"a value is out of range: {exc}") from exc
    return EdgeRequest(request=request, stream=bool(parsed.stream))
