"""The OpenAI encoder's per-token fast path writes the same JSON as its general path."""

from __future__ import annotations

import json

import pytest
from llmmesh.v1 import chat_pb2, events_pb2
from sse_starlette import ServerSentEvent

from gateway.openai_api import OpenAIEncoder

TEXTS = ["hello", ' "quoted"\n\tline', "ünïcödé € 😀", "\u2028separator", ""]


@pytest.mark.parametrize("include_usage", [False, True])
def test_text_deltas_match_the_general_encoding(include_usage: bool) -> None:
    request = chat_pb2.ChatRequest(model='a "model"', include_usage=include_usage)
    start = events_pb2.StreamEvent(
        generation_start=events_pb2.GenerationStart(request_id="req-1", model="módel")
    )
    start.generation_start.created.seconds = 1_700_000_000
    fast, general = OpenAIEncoder(request), OpenAIEncoder(request)
    fast.encode(start)
    general.encode(start)
    for index, text in enumerate(TEXTS):
        delta = events_pb2.SequenceDelta(index=index, text=text)
        (event,) = fast.encode(events_pb2.StreamEvent(sequence_delta=delta))
        # The document the general path builds for any delta (logprobs, tool calls, ...).
        expected = general._chunk([general._delta_choice(delta)])
        assert event.data == expected.data
        # Encoded without sse-starlette's line splitting, to the same bytes.
        assert event.encode() == ServerSentEvent(data=event.data).encode()
        assert expected.encode() == ServerSentEvent(data=expected.data).encode()
        chunk = json.loads(str(event.data))
        assert chunk["id"] == "chatcmpl-req-1" and chunk["model"] == "módel"
        assert chunk["choices"] == [
            {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        ]
        assert ("usage" in chunk) is include_usage


def test_a_new_generation_start_renews_the_envelope() -> None:
    encoder = OpenAIEncoder(chat_pb2.ChatRequest(model="m"))
    delta = events_pb2.StreamEvent(sequence_delta=events_pb2.SequenceDelta(text="x"))
    for request_id in ("first", "second"):
        encoder.encode(
            events_pb2.StreamEvent(
                generation_start=events_pb2.GenerationStart(request_id=request_id)
            )
        )
        (event,) = encoder.encode(delta)
        assert json.loads(str(event.data))["id"] == f"chatcmpl-{request_id}"
