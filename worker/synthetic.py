"""A deterministic, fixed-rate synthetic engine behind the `Engine` interface.

For benchmarks (the model's speed must not hide the mesh's) and fault tests (many workers,
kills, stalls), never as the default. It is a stand-in, clearly named as one: prompts are
"tokenized" into whitespace-separated words, and every sequence is a string of words drawn
from a fixed vocabulary by a PRNG seeded with (seed, sequence index, prompt), so the same
request gives the same text in every process.

Timing: `prepare` takes `prepare_delay`; the first token of every sequence comes
`first_token_delay` after `generate` starts, then one token per sequence every
`token_interval` (on an absolute schedule, so a slow consumer does not slow the engine down).
A sequence ends with STOP after `tokens` tokens (its "end-of-sequence"), with LENGTH at
`max_tokens` or the context, with STOP at a stop string (held back text never leaks), and
runs to the limit with `ignore_eos`. With `hang_after`, every request stops producing after
that many token steps and waits forever (until cancelled): a hung engine, for watchdog tests.

Given a model directory (e.g. pulled from S3), `start` reads its `config.json`, which must
exist, and takes the context length from its `max_position_embeddings`: the synthetic engine
runs no weights, but a worker serving a stored model proves the files arrived and uses them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from llmmesh.v1 import chat_pb2, events_pb2

from worker.engine_protocol import EngineOutput, ModelCard, PreparedRequest, RequestRejected

__all__ = ["SyntheticEngine"]

_VOCABULARY: Final = (
    "the a mesh token stream worker queue model broker river stone light cloud paper signal "
    "quiet rapid green amber silver north south east west over under through beside after "
    "before again always never often maybe yes no one two three four five six seven eight "
    "nine ten open close start finish send receive read write build test run wait move hold"
).split()


@dataclass
class _Plan:
    """What `prepare` decided: `engine_input` of a synthetic `PreparedRequest`."""

    seed_material: str
    sequences: int
    limit: int
    natural_length: int | None
    stop: list[str]


@dataclass
class _Sequence:
    index: int
    rng: random.Random
    text: str = ""
    emitted: int = 0
    generated: int = 0
    held_token_ids: list[int] = field(default_factory=list)
    finished: bool = False


class SyntheticEngine:
    """A deterministic fixed-rate engine (see the module docstring)."""

    def __init__(
        self,
        card: ModelCard,
        *,
        tokens: int = 16,
        token_interval: float = 0.02,
        first_token_delay: float = 0.0,
        prepare_delay: float = 0.0,
        hang_after: int | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self._card = card
        self._model_dir = model_dir
        self._tokens = tokens
        self._token_interval = token_interval
        self._first_token_delay = first_token_delay
        self._prepare_delay = prepare_delay
        self._hang_after = hang_after
        self._aborted: dict[str, bool] = {}
        self._aborted_total = 0

    @property
    def card(self) -> ModelCard:
        """The served model."""
        return self._card

    @property
    def running(self) -> int:
        """Requests generating now."""
        return len(self._aborted)

    @property
    def aborted_total(self) -> int:
        """Requests aborted (or closed) before they finished, since start."""
        return self._aborted_total

    async def start(self) -> None:
        """Reads the model directory's `config.json`, if there is a model directory.

        Raises FileNotFoundError without one, ValueError when it is not a JSON object.
        """
        if self._model_dir is None:
            return
        config = await asyncio.to_thread(_read_config, self._model_dir / "config.json")
        context = config.get("max_position_embeddings")
        if isinstance(context, int) and context > 0:
            self._card = dataclasses.replace(self._card, max_context=context)

    async def healthy(self) -> bool:
        """Always healthy."""
        return True

    async def aclose(self) -> None:
        """Aborts whatever still runs."""
        for request_id in list(self._aborted):
            await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Makes the request's generator stop at its next token."""
        if request_id in self._aborted:
            self._aborted[request_id] = True

    async def prepare(self, request_id: str, request: chat_pb2.ChatRequest) -> PreparedRequest:
        """Counts prompt words; rejects tools without support, and prompts over the context."""
        if self._prepare_delay > 0:
            await asyncio.sleep(self._prepare_delay)
        if request.tools and not self._card.supports_tools:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST,
                f"model {self._card.name!r} does not support tools",
                "tools",
            )
        parameters = request.generation_parameters
        sequences = parameters.n if parameters.HasField("n") else 1
        if sequences < 1:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST,
                "n must be at least 1",
                "generation_parameters.n",
            )
        if parameters.HasField("max_tokens") and parameters.max_tokens < 1:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST,
                "max_tokens must be at least 1",
                "generation_parameters.max_tokens",
            )
        prompt = _prompt_text(request)
        prompt_tokens = len(prompt.split())
        max_context = self._card.max_context
        if prompt_tokens >= max_context:
            raise RequestRejected(
                events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                f"the prompt has {prompt_tokens} tokens; the context of "
                f"{self._card.name!r} is {max_context}",
                "messages",
            )
        limit = max_context - prompt_tokens
        if parameters.HasField("max_tokens"):
            if parameters.max_tokens > limit:
                raise RequestRejected(
                    events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                    f"the prompt ({prompt_tokens} tokens) plus max_tokens "
                    f"({parameters.max_tokens}) exceed the context of {max_context}",
                    "generation_parameters.max_tokens",
                )
            limit = parameters.max_tokens
        seed = parameters.seed if parameters.HasField("seed") else 0
        plan = _Plan(
            seed_material=f"{seed}\x00{prompt}",
            sequences=sequences,
            limit=limit,
            natural_length=None if parameters.ignore_eos else self._tokens,
            stop=[stop for stop in parameters.stop if stop],
        )
        return PreparedRequest(request_id, prompt_tokens, sequences, plan)

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[EngineOutput]:
        """Yields one output per token step; every sequence starts and finishes."""
        plan = prepared.engine_input
        assert isinstance(plan, _Plan)
        request_id = prepared.request_id
        self._aborted[request_id] = False
        finished = False
        try:
            sequences = [
                _Sequence(index, random.Random(_seed(plan.seed_material, index)))
                for index in range(plan.sequences)
            ]
            loop = asyncio.get_running_loop()
            first_token_at = loop.time() + self._first_token_delay
            completion_tokens = 0
            step = 0
            while not all(sequence.finished for sequence in sequences):
                delay = first_token_at + step * self._token_interval - loop.time()
                await asyncio.sleep(max(delay, 0))
                if self._aborted[request_id]:
                    return
                if self._hang_after is not None and step >= self._hang_after:
                    await asyncio.Event().wait()  # Hung: only a cancellation gets out.
                events: list[events_pb2.StreamEvent] = []
                for sequence in sequences:
                    if sequence.finished:
                        continue
                    if step == 0:
                        events.append(
                            events_pb2.StreamEvent(
                                sequence_start=events_pb2.SequenceStart(index=sequence.index)
                            )
                        )
                    events.extend(_step(sequence, plan))
                    completion_tokens += 1
                step += 1
                yield EngineOutput(events, completion_tokens)
            finished = True
        finally:
            del self._aborted[request_id]
            if not finished:
                self._aborted_total += 1


def _step(sequence: _Sequence, plan: _Plan) -> list[events_pb2.StreamEvent]:
    """Generates one token of `sequence`; returns its delta and finish events."""
    token_id = sequence.rng.randrange(len(_VOCABULARY))
    word = _VOCABULARY[token_id]
    sequence.text += word if not sequence.text else f" {word}"
    sequence.generated += 1
    sequence.held_token_ids.append(token_id)
    events: list[events_pb2.StreamEvent] = []
    # Text before `emitted` never holds the start of a stop string (see the hold-back below).
    matches = [
        (at, stop) for stop in plan.stop if (at := sequence.text.find(stop, sequence.emitted)) >= 0
    ]
    if matches:
        at, stop = min(matches)
        events += _delta(sequence, at)
        events.append(_finish(sequence, events_pb2.FINISH_REASON_STOP, stop))
        return events
    if plan.natural_length is not None and sequence.generated >= plan.natural_length:
        events += _delta(sequence, len(sequence.text))
        events.append(_finish(sequence, events_pb2.FINISH_REASON_STOP))
    elif sequence.generated >= plan.limit:
        events += _delta(sequence, len(sequence.text))
        events.append(_finish(sequence, events_pb2.FINISH_REASON_LENGTH))
    else:
        # Hold back a tail that may be the start of a stop string, as real engines do.
        held = max((_overlap(sequence.text, stop) for stop in plan.stop), default=0)
        events += _delta(sequence, len(sequence.text) - held)
    return events


def _delta(sequence: _Sequence, end: int) -> list[events_pb2.StreamEvent]:
    """The delta of `sequence`'s text up to `end`, if there is new text."""
    if end <= sequence.emitted:
        return []
    delta = events_pb2.SequenceDelta(
        index=sequence.index,
        text=sequence.text[sequence.emitted : end],
        token_ids=sequence.held_token_ids,
    )
    sequence.emitted = end
    sequence.held_token_ids = []
    return [events_pb2.StreamEvent(sequence_delta=delta)]


def _finish(
    sequence: _Sequence, reason: events_pb2.FinishReason, stop: str | None = None
) -> events_pb2.StreamEvent:
    sequence.finished = True
    return events_pb2.StreamEvent(
        sequence_finish=events_pb2.SequenceFinish(
            index=sequence.index, reason=reason, stop_sequence=stop
        )
    )


def _overlap(text: str, stop: str) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0


def _seed(material: str, index: int) -> int:
    digest = hashlib.sha256(f"{index}\x00{material}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _prompt_text(request: chat_pb2.ChatRequest) -> str:
    """Every text of the conversation (and the tools' descriptions), in order."""
    parts: list[str] = []
    for message in request.messages:
        parts.extend(part.text for part in message.content if part.HasField("text"))
        parts.extend(f"{call.name} {call.arguments}" for call in message.tool_calls)
    parts.extend(f"{tool.name} {tool.description}" for tool in request.tools)
    return "\n".join(parts)


def _read_config(path: Path) -> dict[str, object]:
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config
