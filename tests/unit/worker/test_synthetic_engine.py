"""The synthetic engine: deterministic text, n, max_tokens, stop strings, ignore_eos, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from llmmesh.v1 import chat_pb2, events_pb2

from worker.engine_protocol import ModelCard, RequestRejected
from worker.synthetic import SyntheticEngine


def _engine(**options: float) -> SyntheticEngine:
    card = ModelCard(name="synth", max_context=64, supports_tools=False)
    return SyntheticEngine(card, tokens=8, token_interval=0, **options)


def _request(prompt: str = "tell me a story", **parameters: object) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="synth",
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=prompt)])
        ],
        generation_parameters=chat_pb2.GenerationParameters(**parameters),  # type: ignore[arg-type]
    )


async def _run(
    engine: SyntheticEngine, request: chat_pb2.ChatRequest
) -> tuple[dict[int, str], dict[int, events_pb2.SequenceFinish], int, list[str]]:
    prepared = await engine.prepare("r", request)
    texts: dict[int, str] = {}
    finishes: dict[int, events_pb2.SequenceFinish] = {}
    kinds: list[str] = []
    completion = 0
    async for output in engine.generate(prepared):
        completion = output.completion_tokens
        for event in output.events:
            kind = event.WhichOneof("event")
            assert kind is not None
            kinds.append(kind)
            if kind == "sequence_delta":
                delta = event.sequence_delta
                texts[delta.index] = texts.get(delta.index, "") + delta.text
            elif kind == "sequence_finish":
                finishes[event.sequence_finish.index] = event.sequence_finish
    return texts, finishes, completion, kinds


async def test_the_same_request_gives_the_same_text_and_another_seed_another() -> None:
    first = await _run(_engine(), _request(seed=7, n=2))
    second = await _run(_engine(), _request(seed=7, n=2))
    other = await _run(_engine(), _request(seed=8, n=2))
    assert first[0] == second[0]
    assert first[0] != other[0]
    assert first[0][0] != first[0][1]  # Each sequence has its own stream of words.


async def test_n_sequences_each_start_and_finish_and_tokens_are_counted() -> None:
    texts, finishes, completion, kinds = await _run(_engine(), _request(n=3))
    assert set(texts) == {0, 1, 2}
    assert all(f.reason == events_pb2.FINISH_REASON_STOP for f in finishes.values())
    assert completion == 3 * 8
    assert all(len(text.split()) == 8 for text in texts.values())
    assert kinds.count("sequence_start") == 3


async def test_max_tokens_ends_with_length_and_ignore_eos_runs_to_it() -> None:
    texts, finishes, completion, _ = await _run(_engine(), _request(max_tokens=3))
    assert finishes[0].reason == events_pb2.FINISH_REASON_LENGTH
    assert completion == 3 and len(texts[0].split()) == 3
    texts, finishes, completion, _ = await _run(_engine(), _request(max_tokens=20, ignore_eos=True))
    assert finishes[0].reason == events_pb2.FINISH_REASON_LENGTH and completion == 20


async def test_a_stop_string_ends_the_sequence_without_leaking_it() -> None:
    full, _, _, _ = await _run(_engine(), _request(seed=1))
    words = full[0].split()
    stop = f"{words[3]} {words[4]}"
    texts, finishes, _, _ = await _run(_engine(), _request(seed=1, stop=[stop]))
    assert finishes[0].reason == events_pb2.FINISH_REASON_STOP
    assert finishes[0].stop_sequence == stop
    assert texts[0] == full[0][: full[0].index(stop)]


async def test_requests_over_the_context_or_with_tools_are_rejected() -> None:
    engine = _engine()
    with pytest.raises(RequestRejected) as too_long:
        await engine.prepare("r", _request("word " * 64))
    assert too_long.value.code == events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED
    assert too_long.value.field == "messages"
    with pytest.raises(RequestRejected) as too_many:
        await engine.prepare("r", _request(max_tokens=100))
    assert too_many.value.field == "generation_parameters.max_tokens"
    with_tools = _request()
    with_tools.tools.add(name="lookup")
    with pytest.raises(RequestRejected) as tools:
        await engine.prepare("r", with_tools)
    assert tools.value.field == "tools"


async def test_abort_and_close_count_as_aborted() -> None:
    engine = _engine()
    outputs = engine.generate(await engine.prepare("r", _request()))
    await anext(outputs)
    assert engine.running == 1
    await engine.abort("r")
    assert [output async for output in outputs] == []
    assert engine.running == 0 and engine.aborted_total == 1
    outputs = engine.generate(await engine.prepare("r2", _request()))
    await anext(outputs)
    await outputs.aclose()  # type: ignore[attr-defined]
    assert engine.running == 0 and engine.aborted_total == 2


async def test_a_cancelled_consumer_aborts_the_request() -> None:
    engine = SyntheticEngine(ModelCard("s", 64, False), token_interval=3600)

    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(await engine.prepare("r", _request())):
            started.set()  # The first token comes at once, the next in an hour.

    task = asyncio.create_task(consume())
    async with asyncio.timeout(1):
        await started.wait()
    assert engine.running == 1
    task.cancel()
    await asyncio.wait([task])
    assert engine.running == 0 and engine.aborted_total == 1


async def test_a_model_directory_sets_the_context_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 4}')
    card = ModelCard(name="synth", max_context=64, supports_tools=False)
    engine = SyntheticEngine(card, tokens=8, token_interval=0, model_dir=tmp_path)
    await engine.start()
    assert engine.card.max_context == 4
    with pytest.raises(RequestRejected):
        await engine.prepare("r", _request("one two three four five"))


async def test_a_model_directory_without_a_config_fails_the_start(tmp_path: Path) -> None:
    card = ModelCard(name="synth", max_context=64, supports_tools=False)
    with pytest.raises(FileNotFoundError):
        await SyntheticEngine(card, model_dir=tmp_path).start()
