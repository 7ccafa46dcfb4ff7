"""OpenAI Chat Completions ⇄ canonical (gateway/openai_api.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_streams import generation, text
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.completion import Completion
from gateway.errors import InvalidRequest, QuotaExceeded
from gateway.openai_api import OpenAIApi

API = OpenAIApi()


def _parse(body: dict[str, Any]) -> chat_pb2.ChatRequest:
    return API.parse(json.dumps(body).encode()).request


def _base(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_request_maps_to_canonical() -> None:
    request = _parse(
        _base(
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            n=3,
            seed=7,
            stop="END",
            max_completion_tokens=12,
            max_tokens=99,
            temperature=0.5,
            logprobs=True,
            top_logprobs=2,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": True},
            },
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            tool_choice={"type": "function", "function": {"name": "f"}},
            stream_options={"include_usage": True},
            user="u1",
            parallel_tool_calls=False,
            reasoning_effort="low",
        )
    )
    roles = [message.role for message in request.messages]
    assert roles == [
        chat_pb2.ROLE_SYSTEM,
        chat_pb2.ROLE_USER,
        chat_pb2.ROLE_ASSISTANT,
        chat_pb2.ROLE_TOOL,
    ]
    assert request.messages[2].tool_calls[0].name == "f"
    assert request.messages[3].tool_call_id == "c1"
    parameters = request.generation_parameters
    assert (parameters.n, parameters.seed, list(parameters.stop)) == (3, 7, ["END"])
    assert parameters.max_tokens == 12  # max_completion_tokens wins
    assert parameters.logprobs and parameters.top_logprobs == 2
    assert parameters.structured_output.json_schema.name == "s"
    assert parameters.structured_output.json_schema.strict
    assert request.tool_choice.function_name == "f"
    assert request.include_usage
    assert request.metadata["user"] == "u1"
    extension = parameters.provider_extensions["openai"]
    assert extension["parallel_tool_calls"] is False
    assert extension["reasoning_effort"] == "low"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1]", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps(_base(n="2")).encode(), "n"),
        (json.dumps(_base(max_tokens=-1)).encode(), "max_tokens"),
        (json.dumps(_base(temperature=2.5)).encode(), "temperature"),
        (json.dumps(_base(top_logprobs=21)).encode(), "top_logprobs"),
        (json.dumps(_base(messages=[])).encode(), "messages"),
        (json.dumps(_base(stream="yes")).encode(), "stream"),
    ],
)
def test_invalid_bodies_name_the_param(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        API.parse(body)
    assert raised.value.field == param


def test_error_shape() -> None:
    body = API.error_body(InvalidRequest("n: bad", field="generation_parameters.n"))
    assert body == {
        "error": {
            "message": "n: bad",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_request",
        }
    }
    assert API.error_body(QuotaExceeded("slow down"))["error"]["type"] == "rate_limit_error"


def _chunks(events: list[events_pb2.StreamEvent], request: chat_pb2.ChatRequest) -> list[Any]:
    encoder = API.encoder(request)
    return [
        item.data if item.data == "[DONE]" else json.loads(str(item.data))
        for event in events
        for item in encoder.encode(event)
    ]


def test_stream_n3_interleaved_with_role_finish_and_usage() -> None:
    request = chat_pb2.ChatRequest(model="m", include_usage=True)
    events = generation(
        [[text("a"), text("b")], [text("c")], [text("d"), text("e")]],
        reasons=[
            events_pb2.FINISH_REASON_STOP,
            events_pb2.FINISH_REASON_LENGTH,
            events_pb2.FINISH_REASON_STOP,
        ],
    )
    chunks = _chunks(events, request)
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5
    body = chunks[:-2]
    assert all(
        chunk["object"] == "chat.completion.chunk" and chunk["id"] == "chatcmpl-req-1"
        for chunk in body
    )
    assert all(chunk["usage"] is None for chunk in body)
    for index, expected_text, reason in [(0, "ab", "stop"), (1, "c", "length"), (2, "de", "stop")]:
        mine = [chunk["choices"][0] for chunk in body if chunk["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(choice["delta"].get("content", "") for choice in mine) == expected_text
        assert [choice["finish_reason"] for choice in mine].count(reason) == 1
        assert mine[-1]["finish_reason"] == reason
    indexes = [chunk["choices"][0]["index"] for chunk in body]
    assert indexes[:3] == [0, 1, 2]  # role chunks first, then interleaved deltas
    assert indexes[3:6] == [0, 1, 2]


def test_stream_tool_calls_refusal_logprobs_and_error() -> None:
    request = chat_pb2.ChatRequest(model="m")
    tool_first = events_pb2.SequenceDelta(
        tool_call=events_pb2.ToolCallDelta(tool_call_index=0, id="c1", name="f", arguments='{"a"')
    )
    tool_rest = events_pb2.SequenceDelta(tool_call=events_pb2.ToolCallDelta(arguments=": 1}"))
    logprob = events_pb2.SequenceDelta(
        text="x", logprobs=[events_pb2.TokenLogprob(token="x", logprob=-0.25)]
    )
    refusal = events_pb2.SequenceDelta(refusal="no")
    events = generation(
        [[tool_first, tool_rest, logprob, refusal]],
        reasons=[events_pb2.FINISH_REASON_TOOL_CALLS],
        error=events_pb2.StreamError(code=events_pb2.ERROR_CODE_IDLE_TIMEOUT, message="idle"),
    )
    chunks = _chunks(events, request)
    deltas = [
        chunk["choices"][0] for chunk in chunks if isinstance(chunk, dict) and "choices" in chunk
    ]
    first_call = deltas[1]["delta"]["tool_calls"][0]
    assert first_call == {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a"'},
    }
    assert deltas[2]["delta"]["tool_calls"][0] == {"index": 0, "function": {"arguments": ": 1}"}}
    assert deltas[3]["logprobs"]["content"][0]["logprob"] == -0.25
    assert deltas[4]["delta"] == {"refusal": "no"}
    assert deltas[5]["finish_reason"] == "tool_calls"
    error = [chunk for chunk in chunks if isinstance(chunk, dict) and "error" in chunk]
    assert error == [
        {"error": {"message": "idle", "type": "api_error", "param": None, "code": "timeout"}}
    ]
    assert chunks[-1] == "[DONE]"


def test_document_non_streamed() -> None:
    request = chat_pb2.ChatRequest(model="m")
    request.generation_parameters.logprobs = True
    completion = Completion()
    for event in generation(
        [
            [
                events_pb2.SequenceDelta(
                    text="hi", logprobs=[events_pb2.TokenLogprob(token="hi", logprob=-1)]
                )
            ],
            [text("yo")],
        ]
    ):
        completion.add(event)
    document = API.document(completion, request)
    assert document["object"] == "chat.completion"
    assert [choice["message"]["content"] for choice in document["choices"]] == ["hi", "yo"]
    assert document["choices"][0]["logprobs"]["content"][0]["token"] == "hi"
    assert document["usage"]["total_tokens"] == 7
