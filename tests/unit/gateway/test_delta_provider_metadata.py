"""`SequenceDelta.provider_metadata` at the edge: the native API prints it, in its JSON form;
the OpenAI and Anthropic APIs have no place for it and answer exactly as without it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_streams import generation, text
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.anthropic_api import AnthropicApi
from gateway.completion import Completion
from gateway.edge_api import EdgeApi
from gateway.native_api import NativeApi
from gateway.openai_api import OpenAIApi
from plumbing import json_form

_METADATA = {"gemini": {"thoughtSignature": "c2lnbmF0dXJl"}}


def _signed(value: str) -> events_pb2.SequenceDelta:
    delta = text(value)
    delta.provider_metadata.update(_METADATA)
    return delta


def _streams() -> tuple[list[events_pb2.StreamEvent], list[events_pb2.StreamEvent]]:
    """The same generation without and with metadata on its second text delta."""
    plain = generation([[text("Hello"), text(" there")]])
    signed = generation([[text("Hello"), _signed(" there")]])
    for events in (plain, signed):
        events[0].generation_start.created.seconds = 1_790_000_000  # no clock in the output
    return plain, signed


def _answer(api: EdgeApi, events: list[events_pb2.StreamEvent]) -> tuple[list[Any], Any]:
    """The streamed SSE events (name, data) and the non-streamed document of `events`."""
    request = chat_pb2.ChatRequest(model="m")
    encoder = api.encoder(request)
    streamed = [(item.event, item.data) for event in events for item in encoder.encode(event)]
    completion = Completion()
    for event in events:
        completion.add(event)
    return streamed, api.document(completion, request)


@pytest.mark.parametrize("api", [OpenAIApi(), AnthropicApi()], ids=lambda api: api.name)
def test_the_openai_and_anthropic_apis_ignore_it(api: EdgeApi) -> None:
    plain, signed = _streams()
    assert signed != plain
    assert _answer(api, signed) == _answer(api, plain)


def test_the_native_stream_prints_it_only_where_it_is_set() -> None:
    _, signed = _streams()
    deltas = [
        (name, json.loads(str(data)))
        for name, data in _answer(NativeApi(), signed)[0]
        if name == "sequence.delta"
    ]
    assert [data.get("provider_metadata") for _, data in deltas] == [None, _METADATA]
    assert deltas[1][1]["text"] == " there"


def test_the_native_json_form_round_trips_it() -> None:
    event = events_pb2.StreamEvent(sequence_delta=_signed(""))
    data = json_form.event_to_json(event)
    assert json.loads(data) == {
        "index": 0,
        "text": "",
        "token_ids": [1],
        "logprobs": [],
        "provider_metadata": _METADATA,
    }
    assert json_form.event_from_sse(json_form.event_name(event), data) == event


def test_the_native_document_keeps_it_on_the_sequence() -> None:
    plain, signed = _streams()
    (sequence,) = _answer(NativeApi(), signed)[1]["sequences"]
    assert sequence["text"] == "Hello there"
    assert sequence["provider_metadata"] == _METADATA
    (unsigned,) = _answer(NativeApi(), plain)[1]["sequences"]
    assert "provider_metadata" not in unsigned


def test_the_native_document_keeps_it_on_tool_calls() -> None:
    call = events_pb2.SequenceDelta(
        index=0,
        tool_call=events_pb2.ToolCallDelta(tool_call_index=0, id="call-1", name="f", arguments="{"),
    )
    call.tool_call.provider_metadata.update(_METADATA)
    rest = events_pb2.SequenceDelta(
        index=0, tool_call=events_pb2.ToolCallDelta(tool_call_index=0, arguments="}")
    )
    (sequence,) = _answer(NativeApi(), generation([[call, rest]]))[1]["sequences"]
    assert sequence["tool_calls"] == [
        {"id": "call-1", "name": "f", "arguments": "{}", "provider_metadata": _METADATA}
    ]
