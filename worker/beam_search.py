"""Beam search on top of an engine's next-token log probabilities, with optional constraints.

The search is vLLM's (`vllm/entrypoints/generate/beam_search/`, itself adapted from Hugging
Face transformers), so that its results can be checked against vLLM's own implementation:

- every step asks the engine, for each live beam, for the log probabilities of the next token:
  the `2 * beam_width` most likely ones, or, under a constraint, those of the tokens the
  constraint allows (see `NextTokenScorer`);
- a continuation ending in an end-of-sequence token finishes a candidate (whatever its rank);
  of the others, the `beam_width` with the best cumulative log probability stay live;
- a beam also finishes on a stop string (cut before it) and at `max_tokens` (LENGTH);
- candidates are ranked by `cumulative_logprob / length ** length_penalty`, where `length` is,
  as in vLLM, the prompt plus the generated tokens without a final end-of-sequence token;
- unlike vLLM, finished beams with the same text (different tokenizations of one output)
  count once, with the best score: the n results are n different texts.

The log probabilities are the model's own (raw) ones, also under a constraint: a constraint
only removes continuations, so a beam's cumulative log probability is the model's log
probability of the beam's tokens, and the search looks for the most likely valid outputs
(vLLM's offline beam search and transformers' constrained beam search score the same way).

Stopping: with `early_stopping`, the search ends as soon as `beam_width` candidates finished
among the `beam_width` best continuations of their step (transformers' `early_stopping=True`,
so that an improbable end-of-sequence token does not end the search). Without it the search
ends when no live beam can still reach the best `n` — a bound, not a heuristic: log
probabilities only decrease, so the results equal those of running every beam to
`max_tokens` (what vLLM does) — or when no beam is left.

Choice constraints (`ChoiceConstraint`) admit each choice in its canonical tokenization only,
so that with `beam_width` >= the number of choices the search ranks every choice exactly (a
grammar would also admit every other tokenization of every choice, and those would crowd the
beams).

This module knows nothing of vLLM: the engine passes a scorer, a constraint and a decoder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "Beam",
    "BeamSearchSettings",
    "ChoiceConstraint",
    "Constraint",
    "NextTokenScorer",
    "beam_score",
    "beam_search",
]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class BeamSearchSettings:
    """One search: `beam_width` live beams, `results` (n <= beam_width) returned.

    `prompt_tokens` enters the length normalisation; `eos_token_ids` end a beam unless
    `ignore_eos`; `stop` strings end a beam and are cut from its text.
    """

    beam_width: int
    results: int
    max_tokens: int
    prompt_tokens: int
    eos_token_ids: frozenset[int]
    length_penalty: float = 1.0
    early_stopping: bool = False
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.results <= self.beam_width:
            raise ValueError("results must be 1 to beam_width")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")


@dataclass(frozen=True)
class Beam:
    """A live or finished beam: the generated `token_ids` (with a final end-of-sequence token
    when it ended on one) and their cumulative log probability.

    `finish_reason` is None while live; a finished beam has its `text` (cut before the stop
    string when it ended on one, then named by `stop_sequence`).
    """

    token_ids: tuple[int, ...]
    cumulative_logprob: float
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    text: str | None = None


class NextTokenScorer(Protocol):
    """The engine side of a step."""

    async def next_token_logprobs(
        self, token_ids: Sequence[int], allowed: Sequence[int] | None
    ) -> Mapping[int, float]:
        """The model's log probabilities of candidate tokens after prompt + `token_ids`.

        Unconstrained (`allowed` None): at least the `2 * beam_width` most likely tokens.
        Constrained: every allowed token where the engine can afford it, else at least the
        most likely allowed ones; tokens outside `allowed` may appear and are ignored.
        Cancelling the call aborts the engine's work.
        """
        ...


class Constraint(Protocol):
    """A formal language every output must belong to (JSON schema, regex, choice)."""

    def allowed_tokens(self, token_ids: Sequence[int]) -> Sequence[int]:
        """The tokens allowed after `token_ids` (a valid prefix); empty once the output is
        complete and nothing, not even an end-of-sequence token, may follow."""
        ...


class ChoiceConstraint:
    """The output is one of `choices`, each given as its token ids, then an end-of-sequence
    token (`Constraint`)."""

    def __init__(self, choices: Sequence[Sequence[int]], eos_token_ids: frozenset[int]) -> None:
        self._choices = {tuple(choice) for choice in choices}
        self._eos_token_ids = sorted(eos_token_ids)

    def allowed_tokens(self, token_ids: Sequence[int]) -> Sequence[int]:
        prefix = tuple(token_ids)
        allowed = {
            choice[len(prefix)]
            for choice in self._choices
            if len(choice) > len(prefix) and choice[: len(prefix)] == prefix
        }
        if prefix in self._choices:
            allowed.update(self._eos_token_ids)
        return sorted(allowed)


def beam_score(beam: Beam, settings: BeamSearchSettings) -> float:
    """vLLM's `get_beam_search_score`: the length-normalised cumulative log probability."""
    length = settings.prompt_tokens + len(beam.token_ids)
    if beam.token_ids and beam.token_ids[-1] in settings.eos_token_ids and not settings.ignore_eos:
        length -= 1
    normaliser: float = max(length, 1) ** settings.length_penalty
    return beam.cumulative_logprob / normaliser


@dataclass(frozen=True)
class _Candidate:
    beam: Beam
    ends: bool  # on an end-of-sequence token


async def beam_search(
    settings: BeamSearchSettings,
    scorer: NextTokenScorer,
    decode: Callable[[Sequence[int]], str],
    constraint: Constraint | None = None,
) -> list[Beam]:
    """Runs the search; returns the best `settings.results` finished beams with different
    texts, best first (fewer when the constraint admits fewer outputs).

    `decode` turns generated token ids into text (without special tokens). Scorer errors
    propagate; cancelling the search cancels the steps in flight.
    """
    live = [Beam(token_ids=(), cumulative_logprob=0.0)]
    finished: list[Beam] = []
    strong_finishes = 0  # for early stopping: finishes among the best of their step
    for step in range(settings.max_tokens):
        last_step = step == settings.max_tokens - 1
        allowed = [
            None if constraint is None else constraint.allowed_tokens(beam.token_ids)
            for beam in live
        ]
        steppable = []
        for beam, tokens in zip(live, allowed, strict=True):
            if tokens is not None and not tokens:
                # The constraint is complete and admits no end-of-sequence token either.
                finished.append(_finish(beam, "stop", decode))
            else:
                steppable.append((beam, tokens))
        if not steppable:
            break
        async with asyncio.TaskGroup() as group:
            steps = [
                group.create_task(scorer.next_token_logprobs(beam.token_ids, tokens))
                for beam, tokens in steppable
            ]
        candidates: list[_Candidate] = []
        for (beam, tokens), task in zip(steppable, steps, strict=True):
            permitted = None if tokens is None else frozenset(tokens)
            for token, logprob in task.result().items():
                if permitted is not None and token not in permitted:
                    continue
                child = Beam((*beam.token_ids, token), beam.cumulative_logprob + logprob)
                ends = token in settings.eos_token_ids and not settings.ignore_eos
                candidates.append(_Candidate(child, ends))
        # Stable: ties keep the order of the beams and of the engine's candidates.
        candidates.sort(key=lambda candidate: -candidate.beam.cumulative_logprob)
        live = []
        for rank, candidate in enumerate(candidates):
            if candidate.ends:
                finished.append(_finish(candidate.beam, "stop", decode))
                strong_finishes += rank < settings.beam_width
                continue
            if len(live) == settings.beam_width:
                continue
            stopped = _stop_string(candidate.beam, settings.stop, decode)
            if stopped is not None:
                finished.append(stopped)
                strong_finishes += 1
            elif last_step:
                finished.append(_finish(candidate.beam, "length", decode))
            else:
                live.append(candidate.beam)
        if settings.early_stopping and strong_finishes >= settings.beam_width:
            break
        if not settings.early_stopping and _hopeless(live, finished, settings):
            break
    return _best(finished, settings)[: settings.results]


def _best(finished: list[Beam], settings: BeamSearchSettings) -> list[Beam]:
    """The best beam of each text, best first (ties: the earlier finished)."""
    best: list[Beam] = []
    texts: set[str | None] = set()
    for beam in sorted(finished, key=lambda beam: -beam_score(beam, settings)):
        if beam.text not in texts:
            texts.add(beam.text)
            best.append(beam)
    return best


def _finish(beam: Beam, reason: FinishReason, decode: Callable[[Sequence[int]], str]) -> Beam:
    return Beam(
        beam.token_ids,
        beam.cumulative_logprob,
        finish_reason=reason,
        text=decode(beam.token_ids),
    )


def _stop_string(
    beam: Beam, stop: Sequence[str], decode: Callable[[Sequence[int]], str]
) -> Beam | None:
    """The beam finished at its first stop string, or None."""
    if not stop:
        return None
    text = decode(beam.token_ids)
    found = [(text.find(sequence), sequence) for sequence in stop]
    matches = [(position, sequence) for position, sequence in found if position >= 0]
    if not matches:
        return None
    position, sequence = min(matches)
    return Beam(
        beam.token_ids,
        beam.cumulative_logprob,
        finish_reason="stop",
        stop_sequence=sequence,
        text=text[:position],
    )


def _hopeless(live: list[Beam], finished: list[Beam], settings: BeamSearchSettings) -> bool:
    """Whether no descendant of a live beam can enter the best `results` finished texts.

    Log probabilities are <= 0, so a descendant's cumulative log probability is at most its
    ancestor's; its length is at most prompt + max_tokens. For a length penalty >= 0 the best
    score a beam can still reach is therefore `cumulative / longest ** penalty`; for a
    negative penalty it is its score now.
    """
    if not live:
        return True
    best = _best(finished, settings)
    if len(best) < settings.results:
        return False
    threshold = beam_score(best[settings.results - 1], settings)
    longest = settings.prompt_tokens + settings.max_tokens
    for beam in live:
        if settings.length_penalty >= 0:
            bound = beam.cumulative_logprob / (longest**settings.length_penalty)
        else:
            bound = beam_score(beam, settings)
        if bound >= threshold:
            return False
    return True
