"""Beam search in the worker against independent references, on the real model.

- Unconstrained: vLLM's own beam search (`BeamSearchOnlineMixin.beam_search`, run on the same
  `AsyncLLM`) must give the same beams and cumulative log probabilities.
- Choice constraint: every choice is scored whole (its tokens and the end-of-sequence token,
  teacher-forced through vLLM's prompt log probabilities); the search must rank them exactly so.
- JSON schema and regex constraints: every beam is valid.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from llmmesh.v1 import chat_pb2, events_pb2
from quality_engine import TIMEOUT, Run, chat_request, generate, struct
from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
from vllm.inputs import tokens_input
from vllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

from worker.engine import VllmEngine
from worker.engine_protocol import RequestRejected

pytestmark = pytest.mark.vllm

_SCORE_TOLERANCE = 1e-3


def _llm(engine: VllmEngine) -> AsyncLLM:
    return engine._started()  # the reference runs on the very same vLLM engine


class _VllmBeamSearch(BeamSearchOnlineMixin):
    """vLLM's online beam search, bound to an `AsyncLLM`."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.engine_client = llm
        self.renderer = llm.renderer


async def _reference(
    llm: AsyncLLM, prompt: list[int], width: int, max_tokens: int
) -> list[tuple[str, float, str]]:
    """vLLM's results (text, cumulative logprob, finish reason), deduplicated by text as ours."""
    outputs: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        async for output in _VllmBeamSearch(llm).beam_search(
            tokens_input(prompt),
            f"reference-{uuid.uuid4().hex[:8]}",
            BeamSearchParams(beam_width=width, max_tokens=max_tokens),
        ):
            outputs = list(output.outputs)
    results: list[tuple[str, float, str]] = []
    for output in outputs:
        if output.text not in {text for text, _, _ in results}:
            results.append((output.text, output.cumulative_logprob, output.finish_reason))
    return results


def _results(run: Run) -> list[tuple[str, float, str]]:
    names = {events_pb2.FINISH_REASON_STOP: "stop", events_pb2.FINISH_REASON_LENGTH: "length"}
    texts, finishes = run.texts(), run.finishes()
    return [
        (texts.get(index, ""), finishes[index].cumulative_logprob, names[finishes[index].reason])
        for index in sorted(finishes)
    ]


def _assert_same_beams(
    ours: list[tuple[str, float, str]], reference: list[tuple[str, float, str]]
) -> None:
    """Same scores in the same order; same texts, except that beams whose scores tie (bf16
    logits are coarse: exact ties happen) may come in either order."""
    assert len(ours) >= len(reference) > 0
    ours = ours[: len(reference)]
    for (_, mine, _), (_, theirs, _) in zip(ours, reference, strict=True):
        assert mine == pytest.approx(theirs, abs=_SCORE_TOLERANCE)

    def groups(results: list[tuple[str, float, str]]) -> list[set[tuple[str, str]]]:
        tied: list[set[tuple[str, str]]] = []
        previous: float | None = None
        for text, score, reason in results:
            if previous is None or abs(score - previous) > _SCORE_TOLERANCE:
                tied.append(set())
            tied[-1].add((text, reason))
            previous = score
        return tied

    assert groups(ours) == groups(reference)


@pytest.mark.parametrize(
    "prompt",
    ["What is the capital of France?", "Name three colors."],
)
async def test_unconstrained_beams_match_vllms_own_beam_search(
    engine: VllmEngine, prompt: str
) -> None:
    request = chat_request(prompt, max_tokens=8, n=3, beam_search=chat_pb2.BeamSearch(beam_width=3))
    prepared = await engine.prepare(f"beam-{uuid.uuid4().hex[:8]}", request)
    run = await generate(engine, request)
    reference = await _reference(
        _llm(engine), prepared.engine_input.prompt_token_ids, width=3, max_tokens=8
    )
    _assert_same_beams(_results(run), reference)
    # The stream: every result started, given its text once, finished once, in rank order.
    kinds = [
        (event.WhichOneof("event"), getattr(event, event.WhichOneof("event")).index)
        for event in run.events
    ]
    expected = []
    for index in range(len(run.finishes())):
        expected += [("sequence_start", index), ("sequence_delta", index)]
        expected += [("sequence_finish", index)]
    assert kinds == expected
    assert run.completion_tokens == sum(len(tokens) for tokens in run.token_ids().values())


async def _scored(llm: AsyncLLM, prompt: list[int], continuation: list[int]) -> float:
    """log P(continuation | prompt), teacher-forced: vLLM's prompt log probabilities."""
    params = SamplingParams(
        max_tokens=1, prompt_logprobs=0, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY
    )
    logprobs: Any = None
    async for output in llm.generate(
        tokens_input(prompt + continuation), params, f"score-{uuid.uuid4().hex[:8]}"
    ):
        logprobs = output.prompt_logprobs
    assert logprobs is not None
    total = 0.0
    for position, token in enumerate(continuation):
        total += logprobs[len(prompt) + position][token].logprob
    return total


@pytest.mark.parametrize(
    ("question", "choices"),
    [
        (
            "What is the capital of Spain? Answer with one city.",
            ["Paris", "London", "Berlin", "Madrid", "Rome"],
        ),
        ("Is the sky green? Answer yes or no.", ["yes", "no", "Yes", "No"]),
    ],
)
async def test_choice_constraint_finds_the_exact_best_option(
    engine: VllmEngine, question: str, choices: list[str]
) -> None:
    width = len(choices)
    request = chat_request(
        question,
        max_tokens=8,
        n=width,
        beam_search=chat_pb2.BeamSearch(beam_width=width),
        structured_output=chat_pb2.StructuredOutput(
            choice=chat_pb2.ChoiceConstraint(choices=choices)
        ),
    )
    prepared = await engine.prepare(f"beam-{uuid.uuid4().hex[:8]}", request)
    run = await generate(engine, request)
    llm = _llm(engine)
    tokenizer = llm.get_tokenizer()
    prompt: list[int] = prepared.engine_input.prompt_token_ids
    exact = {}
    for choice in choices:
        tokens = tokenizer.encode(choice, add_special_tokens=False)
        logprob = await _scored(llm, prompt, [*tokens, tokenizer.eos_token_id])
        exact[choice] = (logprob, logprob / (len(prompt) + len(tokens)))
    ranked = sorted(choices, key=lambda choice: -exact[choice][1])
    results = _results(run)
    assert [text for text, _, _ in results] == ranked
    assert results[0][0] == max(choices, key=lambda choice: exact[choice][1])
    for text, cumulative, reason in results:
        assert cumulative == pytest.approx(exact[text][0], abs=_SCORE_TOLERANCE)
        assert reason == "stop"


async def test_json_schema_and_regex_beams_are_all_valid(engine: VllmEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "sure": {"type": "boolean"},
        },
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    constraint = chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="answer", schema=struct(schema))
    )
    run = await generate(
        engine,
        chat_request(
            "Is water wet? Answer as JSON.",
            max_tokens=32,
            n=3,
            beam_search=chat_pb2.BeamSearch(beam_width=3),
            structured_output=constraint,
        ),
    )
    texts = run.texts()
    assert len(texts) == 3
    for index, text in texts.items():
        assert run.finishes()[index].reason == events_pb2.FINISH_REASON_STOP
        jsonschema.validate(json.loads(text), schema)
    pattern = r"(red|green|blue)-[0-9]"
    run = await generate(
        engine,
        chat_request(
            "Pick a colour and a digit.",
            max_tokens=8,
            n=2,
            beam_search=chat_pb2.BeamSearch(beam_width=2),
            structured_output=chat_pb2.StructuredOutput(regex=pattern),
        ),
    )
    assert len(run.texts()) == 2
    for text in run.texts().values():
        assert re.fullmatch(pattern, text), text


async def test_abort_finishes_every_beam_as_cancelled(engine: VllmEngine) -> None:
    aborted = engine.aborted_total
    request = chat_request(
        "Tell me a long story.",
        max_tokens=500,
        ignore_eos=True,
        n=2,
        beam_search=chat_pb2.BeamSearch(beam_width=2),
    )
    prepared = await engine.prepare("beam-abort", request)
    run = Run()

    async def consume() -> None:
        async for output in engine.generate(prepared):
            run.events.extend(output.events)

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(TIMEOUT):
        # Nothing is streamed while beams are searched, and the engine has no event for
        # "running": poll.
        while engine.running == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await engine.abort("beam-abort")
        await consumer
    assert {index: finish.reason for index, finish in run.finishes().items()} == {
        0: events_pb2.FINISH_REASON_CANCELLED,
        1: events_pb2.FINISH_REASON_CANCELLED,
    }
    assert engine.aborted_total == aborted + 1
    assert engine.running == 0


async def test_closing_a_beam_search_aborts_it(engine: VllmEngine) -> None:
    aborted = engine.aborted_total
    request = chat_request(
        "Tell me a long story.",
        max_tokens=500,
        ignore_eos=True,
        beam_search=chat_pb2.BeamSearch(beam_width=2),
    )
    consumer = asyncio.create_task(generate(engine, request))
    async with asyncio.timeout(TIMEOUT):
        while engine.running == 0:  # noqa: ASYNC110  (no event for "running")
            await asyncio.sleep(0.01)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert engine.aborted_total == aborted + 1
    assert engine.running == 0
    after = await generate(engine, chat_request("Hi.", max_tokens=2, ignore_eos=True))
    assert after.completion_tokens == 2


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": 0.7}, "generation_parameters.temperature"),
        ({"seed": 1}, "generation_parameters.seed"),
        ({"logprobs": True}, "generation_parameters.logprobs"),
        ({"n": 3}, "generation_parameters.n"),
        (
            {"beam_search": chat_pb2.BeamSearch(beam_width=11)},
            "generation_parameters.beam_search.beam_width",
        ),
    ],
)
async def test_what_beam_search_cannot_honour_is_rejected(
    engine: VllmEngine, parameters: dict[str, Any], field: str
) -> None:
    request = chat_request(
        "Hi.", **{"beam_search": chat_pb2.BeamSearch(beam_width=2), **parameters}
    )
    with pytest.raises(RequestRejected) as rejected:
        await engine.prepare("beam-invalid", request)
    assert rejected.value.field == field
    assert rejected.value.code == events_pb2.ERROR_CODE_INVALID_REQUEST
