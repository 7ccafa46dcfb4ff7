"""Structured output on the real model: every streamed sequence satisfies its constraint.

Sampled (seeded, temperature 1), n > 1, the text assembled from the streamed deltas; the JSON
ones are checked with a JSON-schema validator. (Beam search under constraints:
`test_beam_search_reference.py`; invalid schemas rejected by the gateway:
`test_parameter_grid.py` and `tests/unit/gateway/test_structured_output_validation.py`.)
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from llmmesh.v1 import chat_pb2, events_pb2
from quality_engine import Run, chat_request, generate, struct

from worker.engine import VllmEngine
from worker.engine_protocol import RequestRejected

pytestmark = pytest.mark.vllm

_PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


def _constrained(
    constraint: chat_pb2.StructuredOutput, text: str, n: int = 3, temperature: float = 1.0
) -> Any:
    return chat_request(
        text, n=n, seed=42, temperature=temperature, max_tokens=96, structured_output=constraint
    )


def _assert_streamed(run: Run, sequences: int) -> dict[int, str]:
    """Every sequence streamed (started, deltas, finished once, by the model: STOP)."""
    finishes = run.finishes()
    assert sorted(finishes) == list(range(sequences))
    assert {finish.reason for finish in finishes.values()} == {events_pb2.FINISH_REASON_STOP}
    deltas = run.of("sequence_delta")
    assert len(deltas) > sequences  # streamed in pieces, not at once
    return run.texts()


async def test_json_schema_every_sequence_validates(engine: VllmEngine) -> None:
    constraint = chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="person", schema=struct(_PERSON))
    )
    run = await generate(engine, _constrained(constraint, "Describe a person as JSON.", n=4))
    for text in _assert_streamed(run, 4).values():
        jsonschema.validate(json.loads(text), _PERSON)


async def test_json_object_regex_and_choice(engine: VllmEngine) -> None:
    run = await generate(
        engine,
        _constrained(
            chat_pb2.StructuredOutput(json_object=True),
            'Answer with the JSON object {"ok": true} and nothing else.',
            # A free-form object at temperature 1 rambles past any small max_tokens.
            temperature=0.3,
        ),
    )
    for text in _assert_streamed(run, 3).values():
        assert isinstance(json.loads(text), dict)
    pattern = r"[A-Z][a-z]{2,8} (is|was) [0-9]{1,3} years old\."
    run = await generate(
        engine, _constrained(chat_pb2.StructuredOutput(regex=pattern), "How old is someone?")
    )
    for text in _assert_streamed(run, 3).values():
        assert re.fullmatch(pattern, text), text
    choices = ["red", "green", "blue", "dark purple"]
    run = await generate(
        engine,
        _constrained(
            chat_pb2.StructuredOutput(choice=chat_pb2.ChoiceConstraint(choices=choices)),
            "Pick a colour.",
            n=4,
        ),
    )
    assert set(run.finishes()) == {0, 1, 2, 3}
    assert set(run.texts().values()) <= set(choices)


async def test_a_schema_the_grammar_compiler_rejects_is_rejected_before_generation(
    engine: VllmEngine,
) -> None:
    """A valid JSON schema (the gateway's check passes) that no backend can compile."""
    schema = {"type": "string", "pattern": "(?<=a)b"}  # look-behind: no grammar for it
    constraint = chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="x", schema=struct(schema))
    )
    with pytest.raises(RequestRejected) as rejected:
        await engine.prepare("structured-invalid", _constrained(constraint, "Hi."))
    assert rejected.value.code == events_pb2.ERROR_CODE_INVALID_REQUEST
    assert rejected.value.field.startswith("generation_parameters")
    assert engine.running == 0
