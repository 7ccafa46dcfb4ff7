"""The gateway's checks of a canonical request, before anything is queued.

Each edge API parses its own body into a `ChatRequest`; this module then checks the ranges the
schema documents, naming the canonical field (`generation_parameters.n`). The APIs rename it
to their own parameter names when they report it.
"""

from __future__ import annotations

import math

import jsonschema  # type: ignore[import-untyped]
from google.protobuf import json_format
from llmmesh.v1 import chat_pb2

from gateway.errors import InvalidRequest

__all__ = ["validate_request"]

_MAX_TOP_LOGPROBS = 20


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise InvalidRequest(f"{field}: {message}", field=field)


def _in_range(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def validate_request(request: chat_pb2.ChatRequest, *, max_n: int) -> None:
    """Raises `InvalidRequest` naming the first field out of its documented range."""
    _require(bool(request.model), "model", "is required")
    _require(len(request.messages) > 0, "messages", "must hold at least one message")
    for position, message in enumerate(request.messages):
        field = f"messages.{position}"
        _require(message.role != chat_pb2.ROLE_UNSPECIFIED, f"{field}.role", "is required")
        if message.role == chat_pb2.ROLE_TOOL:
            _require(bool(message.tool_call_id), f"{field}.tool_call_id", "is required")
    parameters = request.generation_parameters
    prefix = "generation_parameters."
    if parameters.HasField("temperature"):
        _require(
            _in_range(parameters.temperature, 0.0, 2.0), prefix + "temperature", "must be 0 to 2"
        )
    if parameters.HasField("top_p"):
        _require(
            math.isfinite(parameters.top_p) and 0.0 < parameters.top_p <= 1.0,
            prefix + "top_p",
            "must be in (0, 1]",
        )
    if parameters.HasField("top_k"):
        _require(parameters.top_k >= 1 or parameters.top_k == -1, prefix + "top_k", ">= 1 or -1")
    if parameters.HasField("max_tokens"):
        _require(parameters.max_tokens >= 1, prefix + "max_tokens", "must be at least 1")
    if parameters.HasField("n"):
        _require(1 <= parameters.n <= max_n, prefix + "n", f"must be 1 to {max_n}")
    for name in ("presence_penalty", "frequency_penalty"):
        if parameters.HasField(name):
            _require(_in_range(getattr(parameters, name), -2.0, 2.0), prefix + name, "-2 to 2")
    if parameters.HasField("top_logprobs"):
        _require(
            0 <= parameters.top_logprobs <= _MAX_TOP_LOGPROBS,
            prefix + "top_logprobs",
            f"must be 0 to {_MAX_TOP_LOGPROBS}",
        )
    if parameters.HasField("beam_search"):
        width = parameters.beam_search.beam_width
        _require(width >= 1, prefix + "beam_search.beam_width", "must be at least 1")
        _require(
            parameters.n <= width if parameters.HasField("n") else True,
            prefix + "n",
            "must not exceed beam_search.beam_width",
        )
    for position, stop in enumerate(parameters.stop):
        _require(bool(stop), f"{prefix}stop.{position}", "must not be empty")
    _check_structured_output(parameters.structured_output, prefix + "structured_output")
    names = [tool.name for tool in request.tools]
    for position, name in enumerate(names):
        _require(bool(name), f"tools.{position}.name", "is required")
    _require(len(set(names)) == len(names), "tools", "tool names must be unique")
    if request.tool_choice.WhichOneof("choice") == "function_name":
        _require(
            request.tool_choice.function_name in names,
            "tool_choice",
            f"names no tool of the request: {request.tool_choice.function_name!r}",
        )
    if request.HasField("timeout"):
        _require(
            request.timeout.seconds >= 0 and request.timeout.nanos >= 0,
            "timeout",
            "must not be negative",
        )


def _check_structured_output(constraint: chat_pb2.StructuredOutput, field: str) -> None:
    """A JSON schema must be a valid schema (its draft's meta-schema, by `$schema`, else
    2020-12); the engine's grammar compiler checks what this cannot (e.g. unsupported
    keywords), and choices must not be empty."""
    kind = constraint.WhichOneof("constraint")
    if kind == "json_schema":
        schema = json_format.MessageToDict(constraint.json_schema.schema)
        validator = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft202012Validator
        )
        try:
            validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            path = "".join(f"[{part!r}]" for part in error.path)
            raise InvalidRequest(
                f"{field}.json_schema.schema: not a valid JSON schema: {error.message}"
                + (f" (at {path})" if path else ""),
                field=f"{field}.json_schema.schema",
            ) from error
    elif kind == "choice":
        _require(
            len(constraint.choice.choices) > 0,
            f"{field}.choice.choices",
            "must hold at least one choice",
        )
