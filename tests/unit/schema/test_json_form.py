"""Round trips of the canonical schema through its JSON form (DESIGN.md, "JSON on the edge")."""

from __future__ import annotations

import json

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from plumbing import json_form


def _struct(value: dict[str, object]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _full_request() -> chat_pb2.ChatRequest:
    """A request that sets every field of the request schema at least once."""
    signature = _struct({"gemini": {"thoughtSignature": "c2lnbmF0dXJl"}})
    return chat_pb2.ChatRequest(
        model="smollm2-135m",
        messages=[
            chat_pb2.Message(
                role=chat_pb2.ROLE_SYSTEM, content=[chat_pb2.ContentPart(text="Be brief.")]
            ),
            chat_pb2.Message(
                role=chat_pb2.ROLE_USER,
                name="ada",
                content=[
                    chat_pb2.ContentPart(text="What is in these images?"),
                    chat_pb2.ContentPart(image=chat_pb2.Image(url="https://example.test/a.png")),
                    chat_pb2.ContentPart(
                        image=chat_pb2.Image(data=b"\x89PNG\r\n\x1a\n\x00", mime_type="image/png")
                    ),
                ],
            ),
            chat_pb2.Message(
                role=chat_pb2.ROLE_ASSISTANT,
                content=[
                    chat_pb2.ContentPart(
                        reasoning=chat_pb2.Reasoning(text="Look it up.", signature="sig=="),
                        provider_metadata=signature,
                    )
                ],
                tool_calls=[
                    chat_pb2.ToolCall(
                        id="call_1",
                        name="get_weather",
                        arguments='{"city": "Paris"}',
                        provider_metadata=signature,
                    )
                ],
            ),
            chat_pb2.Message(
                role=chat_pb2.ROLE_TOOL,
                tool_call_id="call_1",
                name="get_weather",
                content=[chat_pb2.ContentPart(text='{"celsius": 21}')],
            ),
        ],
        generation_parameters=chat_pb2.GenerationParameters(
            temperature=0.0,
            top_p=0.5,
            top_k=40,
            max_tokens=64,
            n=3,
            seed=2**40,
            stop=["\n\n", "END"],
            presence_penalty=0.25,
            frequency_penalty=-0.5,
            logprobs=True,
            top_logprobs=0,
            beam_search=chat_pb2.BeamSearch(beam_width=4, length_penalty=1.5, early_stopping=True),
            structured_output=chat_pb2.StructuredOutput(
                json_schema=chat_pb2.JsonSchemaConstraint(
                    name="weather",
                    schema=_struct({"type": "object", "required": ["city"]}),
                    strict=True,
                )
            ),
            ignore_eos=False,
            provider_extensions={"openai": _struct({"user": "u-1", "service_tier": "flex"})},
        ),
        tools=[
            chat_pb2.Tool(
                name="get_weather",
                description="Current weather for a city.",
                parameters=_struct({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict=False,
            )
        ],
        tool_choice=chat_pb2.ToolChoice(function_name="get_weather"),
        priority=chat_pb2.PRIORITY_BATCH,
        timeout=duration_pb2.Duration(seconds=30, nanos=500_000_000),
        metadata={"client_request_id": "abc-123"},
        include_reasoning=True,
        include_usage=False,
    )


def test_request_with_every_field_round_trips() -> None:
    request = _full_request()
    # Every field of the top-level request and of the generation parameters is set.
    for message in (request, request.generation_parameters):
        for field in message.DESCRIPTOR.fields:
            if field.is_repeated:
                assert len(getattr(message, field.name)) > 0, field.name
            elif field.has_presence:
                assert message.HasField(field.name), field.name
            else:
                assert getattr(message, field.name), field.name
    body = json.loads(json.dumps(json_form.request_to_dict(request)))
    assert json_form.request_from_dict(body) == request


def test_request_json_uses_proto_names_and_keeps_zero_and_false_values() -> None:
    body = json_form.request_to_dict(_full_request())
    parameters = body["generation_parameters"]
    assert parameters["temperature"] == 0.0
    assert parameters["top_logprobs"] == 0
    assert parameters["ignore_eos"] is False
    assert parameters["max_tokens"] == 64
    assert body["include_usage"] is False
    assert body["priority"] == "PRIORITY_BATCH"
    assert body["tool_choice"] == {"function_name": "get_weather"}
    assert body["timeout"] == "30.500s"


def test_the_seed_parses_from_a_json_number() -> None:
    request = json_form.request_from_dict(
        {"model": "m", "generation_parameters": {"seed": 42, "n": 2}}
    )
    assert request.generation_parameters.seed == 42
    assert request.generation_parameters.HasField("seed")
    assert not request.generation_parameters.HasField("temperature")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "generation_parameters": {"n": "three"}}, "n"),
        ({"model": "m", "nonsense": 1}, "nonsense"),
        ({"model": "m", "priority": "PRIORITY_URGENT"}, "priority"),
        ({"model": "m", "messages": [{"role": "ROLE_USER", "content": "hi"}]}, "content"),
    ],
)
def test_a_request_that_does_not_fit_the_schema_names_the_field(
    body: dict[str, object], field: str
) -> None:
    with pytest.raises(json_form.InvalidJson, match=field):
        json_form.request_from_dict(body)


def _every_event() -> list[events_pb2.StreamEvent]:
    """One StreamEvent of each kind, and each kind of delta, with index 0 where it has one."""
    created = timestamp_pb2.Timestamp(seconds=1_790_000_000, nanos=123_000_000)
    return [
        events_pb2.StreamEvent(
            generation_start=events_pb2.GenerationStart(
                request_id="r-1",
                model="smollm2-135m",
                created=created,
                role=chat_pb2.ROLE_ASSISTANT,
                prompt_tokens=0,
            )
        ),
        events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=0)),
        events_pb2.StreamEvent(
            sequence_delta=events_pb2.SequenceDelta(
                index=0,
                text="Hello",
                token_ids=[0, 19556],
                logprobs=[
                    events_pb2.TokenLogprob(
                        token="Hello",
                        logprob=-0.25,
                        top_logprobs=[events_pb2.TopLogprob(token="Hi", logprob=-1.5)],
                    )
                ],
            )
        ),
        events_pb2.StreamEvent(
            sequence_delta=events_pb2.SequenceDelta(
                index=1, reasoning=events_pb2.ReasoningDelta(text="Hmm", signature="")
            )
        ),
        events_pb2.StreamEvent(sequence_delta=events_pb2.SequenceDelta(index=2, refusal="No.")),
        events_pb2.StreamEvent(
            sequence_delta=events_pb2.SequenceDelta(
                index=0,
                tool_call=events_pb2.ToolCallDelta(
                    tool_call_index=0,
                    id="call_1",
                    name="get_weather",
                    arguments='{"ci',
                    provider_metadata=_struct({"gemini": {"thoughtSignature": "x"}}),
                ),
            )
        ),
        events_pb2.StreamEvent(
            sequence_finish=events_pb2.SequenceFinish(
                index=0,
                reason=events_pb2.FINISH_REASON_STOP,
                stop_sequence="END",
                cumulative_logprob=-3.5,
            )
        ),
        events_pb2.StreamEvent(
            error=events_pb2.StreamError(
                code=events_pb2.ERROR_CODE_IDLE_TIMEOUT,
                message="no chunk for 30s",
                retryable=True,
                sequence_index=0,
            )
        ),
        events_pb2.StreamEvent(
            generation_finish=events_pb2.GenerationFinish(
                usage=events_pb2.Usage(prompt_tokens=12, completion_tokens=0, total_tokens=12),
                timings=events_pb2.Timings(
                    queued=duration_pb2.Duration(nanos=1_000_000),
                    time_to_first_token=duration_pb2.Duration(nanos=25_000_000),
                    total=duration_pb2.Duration(seconds=1),
                ),
            )
        ),
    ]


@pytest.mark.parametrize("event", _every_event(), ids=lambda e: json_form.event_name(e))
def test_every_event_round_trips_through_its_sse_form(event: events_pb2.StreamEvent) -> None:
    name = json_form.event_name(event)
    data = json_form.event_to_json(event)
    assert json_form.event_from_sse(name, data) == event


def test_every_event_kind_is_covered() -> None:
    kinds = {event.WhichOneof("event") for event in _every_event()}
    assert kinds == set(json_form.EVENT_NAMES)
    deltas = {
        e.sequence_delta.WhichOneof("delta") for e in _every_event() if e.HasField("sequence_delta")
    }
    assert deltas == {"text", "reasoning", "refusal", "tool_call"}


def test_index_zero_and_zero_counts_are_printed_as_numbers() -> None:
    start, sequence_start = _every_event()[:2]
    assert json.loads(json_form.event_to_json(sequence_start)) == {"index": 0}
    assert json.loads(json_form.event_to_json(start))["prompt_tokens"] == 0
    finish = json.loads(json_form.event_to_json(_every_event()[-1]))
    assert finish["usage"]["completion_tokens"] == 0
    assert isinstance(finish["usage"]["prompt_tokens"], int)
    assert finish["usage"]["cached_prompt_tokens"] == 0


def test_event_names_follow_the_design() -> None:
    names = [json_form.event_name(e) for e in _every_event()]
    assert names[0] == "generation.start"
    assert names[-1] == "generation.finish"
    assert set(names) == {
        "generation.start",
        "sequence.start",
        "sequence.delta",
        "sequence.finish",
        "generation.finish",
        "error",
    }


def test_an_unknown_event_name_is_rejected() -> None:
    with pytest.raises(json_form.InvalidJson, match=r"sequence\.middle"):
        json_form.event_from_sse("sequence.middle", "{}")
