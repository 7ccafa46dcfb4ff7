"""Beam search (worker/beam_search.py) on a toy language model, against brute force and against
a transcription of vLLM's own loop (which runs every beam to `max_tokens`, without pruning)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence

import pytest

from worker.beam_search import (
    Beam,
    BeamSearchSettings,
    ChoiceConstraint,
    beam_score,
    beam_search,
)

_EOS = 0
_LETTERS = "_abcdefg"  # token i decodes to _LETTERS[i]; the end-of-sequence token to nothing
_VOCABULARY = range(len(_LETTERS))


def _decode(token_ids: Sequence[int]) -> str:
    return "".join(_LETTERS[token] for token in token_ids if token != _EOS)


class _ToyModel:
    """Log probabilities of the next token: a fixed pseudo-random function of the prefix,
    normalised over the vocabulary (`seed` picks the model)."""

    def __init__(self, seed: int, top: int) -> None:
        self.seed = seed
        self.top = top
        self.calls = 0

    def distribution(self, token_ids: Sequence[int]) -> dict[int, float]:
        logits = []
        for token in _VOCABULARY:
            digest = hashlib.sha256(f"{self.seed}:{list(token_ids)}:{token}".encode()).digest()
            logits.append(4.0 * digest[0] / 255.0)
        total = math.log(sum(math.exp(logit) for logit in logits))
        return {token: logit - total for token, logit in zip(_VOCABULARY, logits, strict=True)}

    async def next_token_logprobs(
        self, token_ids: Sequence[int], allowed: Sequence[int] | None
    ) -> Mapping[int, float]:
        self.calls += 1
        await asyncio.sleep(0)
        distribution = self.distribution(token_ids)
        if allowed is not None:
            return {token: distribution[token] for token in allowed}
        ranked = sorted(distribution.items(), key=lambda item: -item[1])
        return dict(ranked[: self.top])


def _settings(**overrides: object) -> BeamSearchSettings:
    values: dict[str, object] = {
        "beam_width": 3,
        "results": 3,
        "max_tokens": 5,
        "prompt_tokens": 4,
        "eos_token_ids": frozenset({_EOS}),
    }
    values.update(overrides)
    return BeamSearchSettings(**values)  # type: ignore[arg-type]


async def _vllm_reference(model: _ToyModel, settings: BeamSearchSettings) -> list[Beam]:
    """vLLM's online loop (`BeamSearchOnlineMixin.beam_search`): every EOS continuation
    completes, the best `beam_width` others stay, all beams run to `max_tokens`; the results
    are then deduplicated by text as ours are."""
    live = [Beam((), 0.0)]
    completed: list[Beam] = []
    for _ in range(settings.max_tokens):
        candidates = []
        for beam in live:
            for token, logprob in (await model.next_token_logprobs(beam.token_ids, None)).items():
                child = Beam((*beam.token_ids, token), beam.cumulative_logprob + logprob)
                if token == _EOS:
                    completed.append(Beam(child.token_ids, child.cumulative_logprob, "stop"))
                else:
                    candidates.append(child)
        candidates.sort(key=lambda beam: -beam.cumulative_logprob)
        live = candidates[: settings.beam_width]
    completed += [Beam(beam.token_ids, beam.cumulative_logprob, "length") for beam in live]
    completed.sort(key=lambda beam: -beam_score(beam, settings))
    results: list[Beam] = []
    for beam in completed:
        if _decode(beam.token_ids) not in {_decode(result.token_ids) for result in results}:
            results.append(beam)
    return results[: settings.results]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, -1.0, 2.0])
async def test_same_results_as_running_every_beam_to_max_tokens(
    seed: int, length_penalty: float
) -> None:
    """The pruning bound never changes the results, only the work."""
    settings = _settings(length_penalty=length_penalty, max_tokens=6)
    ours = await beam_search(settings, _ToyModel(seed, 2 * 3), _decode)
    reference = await _vllm_reference(_ToyModel(seed, 2 * 3), settings)
    assert [(beam.token_ids, beam.finish_reason) for beam in ours] == [
        (beam.token_ids, beam.finish_reason) for beam in reference
    ]
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.cumulative_logprob == pytest.approx(theirs.cumulative_logprob)
        assert mine.text == _decode(mine.token_ids)


async def test_pruning_stops_early_when_no_live_beam_can_win() -> None:
    """With length penalty 0 the score is the cumulative log probability: once the finished
    beams beat every live one, nothing can catch up."""
    settings = _settings(length_penalty=0.0, max_tokens=40, results=1)
    calls = []
    for seed in range(5):
        model = _ToyModel(seed, 6)
        await beam_search(settings, model, _decode)
        calls.append(model.calls)
    assert min(calls) < 3 * 40


def _all_sequences(max_tokens: int) -> list[tuple[int, ...]]:
    sequences = []
    for length in range(1, max_tokens + 1):
        for body in itertools.product(range(1, len(_LETTERS)), repeat=length - 1):
            sequences.append((*body, _EOS))
        if length == max_tokens:
            sequences.extend(itertools.product(range(1, len(_LETTERS)), repeat=length))
    return sequences


def _logprob(model: _ToyModel, tokens: Sequence[int]) -> float:
    return sum(
        model.distribution(tokens[:position])[tokens[position]] for position in range(len(tokens))
    )


@pytest.mark.parametrize("seed", range(6))
async def test_choice_constraint_ranks_every_choice_exactly(seed: int) -> None:
    """With beam_width >= the number of choices every choice is scored whole: the ranking is
    brute force's (each choice and its end-of-sequence token, by length-normalised score)."""
    choices = [(1, 2, 3), (1, 2), (4,), (4, 5, 6, 1), (2, 2, 2)]
    settings = _settings(beam_width=5, results=5, max_tokens=6)
    model = _ToyModel(seed, 10)
    results = await beam_search(
        settings, model, _decode, ChoiceConstraint(choices, frozenset({_EOS}))
    )
    expected = sorted(
        ((choice, _logprob(model, (*choice, _EOS))) for choice in choices),
        key=lambda item: -item[1] / (settings.prompt_tokens + len(item[0])),
    )
    assert [beam.token_ids for beam in results] == [(*choice, _EOS) for choice, _ in expected]
    for beam, (_, logprob) in zip(results, expected, strict=True):
        assert beam.cumulative_logprob == pytest.approx(logprob)
        assert beam.finish_reason == "stop"


async def test_width_one_is_greedy_and_a_wide_search_is_exhaustive() -> None:
    model = _ToyModel(3, 20)
    settings = _settings(beam_width=1, results=1, max_tokens=4, ignore_eos=True)
    (greedy,) = await beam_search(settings, model, _decode)
    tokens: tuple[int, ...] = ()
    for _ in range(4):
        distribution = model.distribution(tokens)
        tokens = (*tokens, max(distribution, key=lambda token: distribution[token]))
    assert greedy.token_ids == tokens
    # Width >= the number of sequences: the search is exhaustive.
    settings = _settings(beam_width=7**3, results=1, max_tokens=3, length_penalty=0.0)
    (best,) = await beam_search(settings, _ToyModel(3, 2 * 7**3), _decode)
    exhaustive = max(_all_sequences(3), key=lambda sequence: _logprob(model, sequence))
    assert best.token_ids == exhaustive


async def test_stop_strings_cut_the_text() -> None:
    settings = _settings(stop=("c",), max_tokens=8, ignore_eos=True)
    results = await beam_search(settings, _ToyModel(1, 6), _decode)
    for beam in results:
        assert beam.text is not None and "c" not in beam.text
        if beam.finish_reason == "stop":
            assert beam.stop_sequence == "c"
            assert _decode(beam.token_ids) == beam.text + "c"
        else:
            assert beam.finish_reason == "length" and len(beam.token_ids) == 8


async def test_ignore_eos_runs_every_beam_to_max_tokens() -> None:
    results = await beam_search(_settings(ignore_eos=True), _ToyModel(2, 6), _decode)
    assert {(beam.finish_reason, len(beam.token_ids)) for beam in results} == {("length", 5)}


async def test_early_stopping_ends_at_beam_width_strong_finishes() -> None:
    """Early stopping ends the search long before no live beam can win any more."""
    eager = _ToyModel(5, 6)
    patient = _ToyModel(5, 6)
    settings = _settings(max_tokens=30)
    early = await beam_search(
        BeamSearchSettings(**{**settings.__dict__, "early_stopping": True}), eager, _decode
    )
    await beam_search(settings, patient, _decode)
    assert len(early) == 3
    assert all(beam.finish_reason == "stop" for beam in early)
    assert eager.calls < patient.calls


async def test_results_are_distinct_texts() -> None:
    """Two tokenizations of one text (`_decode` drops token 7 here) count once."""

    def decode(token_ids: Sequence[int]) -> str:
        return _decode([token for token in token_ids if token != 7])

    class _Twins(_ToyModel):
        def distribution(self, token_ids: Sequence[int]) -> dict[int, float]:
            base = super().distribution(token_ids)
            base[7] = base[1]  # token 7: an invisible twin, as likely as "a"
            total = math.log(sum(math.exp(value) for value in base.values()))
            return {token: value - total for token, value in base.items()}

    results = await beam_search(_settings(results=3), _Twins(4, 6), decode)
    texts = [beam.text for beam in results]
    assert len(texts) == len(set(texts)) == 3


async def test_cancelling_the_search_cancels_the_steps_in_flight() -> None:
    started = asyncio.Event()
    cancelled = 0

    class _Stuck:
        async def next_token_logprobs(
            self, token_ids: Sequence[int], allowed: Sequence[int] | None
        ) -> Mapping[int, float]:
            nonlocal cancelled
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return {}

    search = asyncio.create_task(beam_search(_settings(), _Stuck(), _decode))
    async with asyncio.timeout(5):
        await started.wait()
    search.cancel()
    with pytest.raises(asyncio.CancelledError):
        await search
    assert cancelled == 1


async def test_a_completed_constraint_finishes_the_beam() -> None:
    class _Once:
        def allowed_tokens(self, token_ids: Sequence[int]) -> Sequence[int]:
            return [2] if not token_ids else []

    results = await beam_search(_settings(results=1), _ToyModel(0, 6), _decode, _Once())
    assert [(beam.token_ids, beam.finish_reason, beam.text) for beam in results] == [
        ((2,), "stop", "b")
    ]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="results"):
        _settings(results=4)
    with pytest.raises(ValueError, match="max_tokens"):
        _settings(max_tokens=0)
