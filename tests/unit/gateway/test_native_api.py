"""The native body and events (gateway/native_api.py) and the request checks (validation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_streams import generation, text
from llmmesh.v1 import chat_pb2

from gateway.completion import Completion
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.native_api import NativeApi
from gateway.validation import validate_request
from plumbing import json_form

API = NativeApi()


def _body(**parameters: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "ROLE_USER", "content": [{"text": "hi"}]}],
        "generation_parameters": parameters,
    }


def test_parse_reads_stream_and_the_canonical_form() -> None:
    parsed = API.parse(json.dumps({**_body(n=2), "stream": True}).encode())
    assert parsed.stream
    assert parsed.request.generation_parameters.n == 2
    assert not API.parse(json.dumps(_body()).encode()).stream


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**_body(), "stream": "yes"}, "stream"),
        ({**_body(), "colour": 1}, "colour"),
        (_body(n="x"), "generation_parameters.n"),
        ({"model": 3}, "model"),
    ],
)
def test_parse_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        API.parse(json.dumps(body).encode())
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"n": 9}, "generation_parameters.n"),
        ({"n": 0}, "generation_parameters.n"),
        ({"max_tokens": -1}, "generation_parameters.max_tokens"),
        ({"temperature": 2.5}, "generation_parameters.temperature"),
        ({"temperature": -0.1}, "generation_parameters.temperature"),
        ({"top_p": 0}, "generation_parameters.top_p"),
        ({"top_k": 0}, "generation_parameters.top_k"),
        ({"presence_penalty": 3}, "generation_parameters.presence_penalty"),
        ({"top_logprobs": 21}, "generation_parameters.top_logprobs"),
        ({"stop": [""]}, "generation_parameters.stop.0"),
    ],
)
def test_validation_names_the_field(parameters: dict[str, Any], field: str) -> None:
    request = API.parse(json.dumps(_body(**parameters)).encode()).request
    with pytest.raises(InvalidRequest) as raised:
        validate_request(request, max_n=8)
    assert raised.value.field == field


def test_validation_of_model_messages_and_tools() -> None:
    with pytest.raises(InvalidRequest, match="model"):
        validate_request(chat_pb2.ChatRequest(), max_n=8)
    with pytest.raises(InvalidRequest, match="messages"):
        validate_request(chat_pb2.ChatRequest(model="m"), max_n=8)
    request = API.parse(json.dumps(_body()).encode()).request
    request.tool_choice.function_name = "missing"
    with pytest.raises(InvalidRequest, match="tool_choice"):
        validate_request(request, max_n=8)


def test_encoder_is_the_json_form() -> None:
    events = generation([[text("a")]])
    encoded = [
        item for event in events for item in API.encoder(chat_pb2.ChatRequest()).encode(event)
    ]
    assert [item.event for item in encoded] == [json_form.event_name(event) for event in events]
    assert (
        json_form.events_from_sse([(item.event or "", str(item.data)) for item in encoded])
        == events
    )


def test_document_and_error_shape() -> None:
    completion = Completion()
    for event in generation([[text("a"), text("b")], [text("c")]]):
        completion.add(event)
    document = API.document(completion, chat_pb2.ChatRequest())
    assert [sequence["text"] for sequence in document["sequences"]] == ["ab", "c"]
    assert document["sequences"][0]["finish_reason"] == "FINISH_REASON_STOP"
    assert document["generation_finish"]["usage"]["completion_tokens"] == 3
    error = API.error_body(ModelNotFound.for_model("x", ["m"]))
    assert error["error"]["code"] == "model_not_found"
    assert error["error"]["available_models"] == ["m"]
