"""The gateway's checks of structured-output constraints (gateway/validation.py)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2
from llmmesh.v1 import chat_pb2

from gateway.errors import InvalidRequest
from gateway.validation import validate_request

_FIELD = "generation_parameters.structured_output"


def _request(constraint: chat_pb2.StructuredOutput) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="m",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hi")])
        ],
        generation_parameters=chat_pb2.GenerationParameters(structured_output=constraint),
    )


def _schema(schema: dict[str, Any]) -> chat_pb2.StructuredOutput:
    value = struct_pb2.Struct()
    value.update(schema)
    return chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="s", schema=value)
    )


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
        {"type": "string", "maxLength": 20},  # a Struct number is a double: 20.0
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array"},
    ],
)
def test_valid_schemas_pass(schema: dict[str, Any]) -> None:
    validate_request(_request(_schema(schema)), max_n=8)


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "text"}, "['type']"),
        ({"properties": {"a": {"minimum": "zero"}}}, "['properties']['a']['minimum']"),
        ({"required": "name"}, "['required']"),
        ({"maxLength": -1}, "['maxLength']"),
    ],
)
def test_invalid_schemas_are_rejected_naming_the_field(schema: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        validate_request(_request(_schema(schema)), max_n=8)
    assert raised.value.field == f"{_FIELD}.json_schema.schema"
    assert "not a valid JSON schema" in raised.value.message
    assert where in raised.value.message


def test_choices_must_not_be_empty() -> None:
    constraint = chat_pb2.StructuredOutput(choice=chat_pb2.ChoiceConstraint(choices=[]))
    with pytest.raises(InvalidRequest) as raised:
        validate_request(_request(constraint), max_n=8)
    assert raised.value.field == f"{_FIELD}.choice.choices"
    validate_request(
        _request(chat_pb2.StructuredOutput(choice=chat_pb2.ChoiceConstraint(choices=["a"]))),
        max_n=8,
    )
