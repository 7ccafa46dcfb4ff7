"""The scheduler's checks of a request before it queues a task (scheduler/validation.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llmmesh.v1 import chat_pb2

from scheduler.errors import InvalidRequest
from scheduler.validation import validate


def _request() -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
    )


def _set_n(n: int) -> Callable[[chat_pb2.ChatRequest], None]:
    def mutate(request: chat_pb2.ChatRequest) -> None:
        request.generation_parameters.n = n

    return mutate


def _set_null_value(request: chat_pb2.ChatRequest) -> None:
    schema = request.generation_parameters.structured_output.json_schema.schema
    schema.fields["a"].struct_value.fields["b"].null_value = 7  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("model"), "model"),
        (lambda r: r.ClearField("messages"), "messages"),
        (lambda r: setattr(r.messages[0], "role", chat_pb2.ROLE_UNSPECIFIED), "messages.0.role"),
        (lambda r: setattr(r.messages[0], "role", 99), "messages.0.role"),
        (lambda r: setattr(r, "priority", 42), "priority"),
        (lambda r: setattr(r.tool_choice, "mode", 77), "tool_choice.mode"),
        (
            _set_null_value,
            "generation_parameters.structured_output.json_schema.schema.fields.a"
            ".struct_value.fields.b.null_value",
        ),
        (_set_n(0), "generation_parameters.n"),
        (_set_n(9), "generation_parameters.n"),
        (_set_n(2**31 - 1), "generation_parameters.n"),
        (
            lambda r: setattr(r.generation_parameters, "max_tokens", 0),
            "generation_parameters.max_tokens",
        ),
    ],
)
def test_invalid_requests_name_their_field(
    mutate: Callable[[chat_pb2.ChatRequest], None], field: str
) -> None:
    request = _request()
    mutate(request)
    with pytest.raises(InvalidRequest) as invalid:
        validate(request, max_n=8)
    assert invalid.value.field == field


def test_a_valid_request_passes() -> None:
    request = _request()
    request.generation_parameters.n = 8
    request.generation_parameters.max_tokens = 1
    request.priority = chat_pb2.PRIORITY_BATCH
    validate(request, max_n=8)
