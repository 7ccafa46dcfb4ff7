"""vLLM's side of beam search (`worker.beam_search`): steps on `AsyncLLM`, grammars replayed here.

Part of the vLLM engine: only `worker.engine` imports this module (it imports vLLM).

Steps. For each live beam, one vLLM request of one greedy token whose prompt is the request's
prompt plus the beam's tokens (vLLM's prefix cache keeps that cheap), asking for log
probabilities: the `2 * beam_width` most likely tokens when unconstrained, as vLLM's own beam
search does; under a constraint, those of every allowed token (`logprob_token_ids`, in
requests of at most 128 ids, while at most 1024 tokens are allowed), else the `max_logprobs`
most likely tokens, of which the allowed ones count. That last case is best-effort: inside a
free-form JSON string nearly every token is allowed and the most likely ones are among them.

Constraints. A choice constraint becomes `worker.beam_search.ChoiceConstraint` (each choice in
its canonical tokenization). JSON schemas and regular expressions stay vLLM's grammars, but
vLLM applies a request's grammar from its first generated token, so a step request (whose
generation starts after the beam's tokens) cannot carry it: the grammar would restart at every
step. Instead this process compiles the grammar with the very backend vLLM chose when it
validated the request (xgrammar, or guidance for schemas xgrammar lacks) and replays each
beam's tokens through it to learn the allowed next tokens, as vLLM's offline
`LLM.beam_search` does (compiled once per request, reset for every beam). The step requests
themselves run unconstrained, so the log probabilities are the model's own (see
`worker.beam_search`).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import math
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np
import torch
from llmmesh.v1 import chat_pb2, events_pb2
from vllm.config import VllmConfig
from vllm.inputs import tokens_input
from vllm.sampling_params import (
    MAX_LOGPROB_TOKEN_IDS,
    RequestOutputKind,
    SamplingParams,
    StructuredOutputsParams,
)
from vllm.tokenizers import TokenizerLike
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.structured_output.backend_types import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
)
from vllm.v1.structured_output.request import get_structured_output_key

from worker.beam_search import (
    Beam,
    BeamSearchSettings,
    ChoiceConstraint,
    Constraint,
    beam_search,
)
from worker.engine_protocol import EngineOutput, PreparedRequest, RequestRejected

__all__ = [
    "BeamSearchInput",
    "GrammarBackends",
    "VllmBeamSearch",
    "beam_search_input",
    "beam_validation_params",
    "check_beam_parameters",
]

_INVALID = events_pb2.ERROR_CODE_INVALID_REQUEST
# Above this many allowed tokens, asking for each one's log probability costs more requests
# than it is worth (vLLM caps `allowed_token_ids` at the same size).
_MAX_QUERIED_TOKENS = 1024
# Sampling parameters beam search does not use: it samples nothing, and it returns the
# cumulative log probability of each sequence instead of per-token ones.
_NOT_WITH_BEAM_SEARCH = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
)
_BACKENDS = {
    "xgrammar": ("vllm.v1.structured_output.backend_xgrammar", "XgrammarBackend"),
    "guidance": ("vllm.v1.structured_output.backend_guidance", "GuidanceBackend"),
    "outlines": ("vllm.v1.structured_output.backend_outlines", "OutlinesBackend"),
}
_FINISH_REASONS = {"stop": events_pb2.FINISH_REASON_STOP, "length": events_pb2.FINISH_REASON_LENGTH}


class BeamSearchAborted(Exception):
    """`VllmBeamSearch.abort()` was called, or vLLM aborted a step (ends `run` as CANCELLED)."""


@dataclass(frozen=True)
class BeamSearchInput:
    """`PreparedRequest.engine_input` of a beam-search request."""

    prompt_token_ids: list[int]
    settings: BeamSearchSettings
    # The choices of a choice constraint, else a grammar validated by vLLM (which resolved
    # its backend, and turned choices into a grammar), else None.
    choices: tuple[str, ...] | None
    structured_outputs: StructuredOutputsParams | None


def check_beam_parameters(parameters: chat_pb2.GenerationParameters, max_logprobs: int) -> None:
    """Rejects (`RequestRejected`, naming the field) what beam search cannot honour."""
    prefix = "generation_parameters."
    for name in _NOT_WITH_BEAM_SEARCH:
        if parameters.HasField(name):
            raise RequestRejected(
                _INVALID, f"{name} does not apply to beam search", field=prefix + name
            )
    if parameters.provider_extensions:
        raise RequestRejected(
            _INVALID,
            "provider_extensions do not apply to beam search",
            field=prefix + "provider_extensions",
        )
    beam = parameters.beam_search
    # Each step asks vLLM for the 2 * beam_width most likely tokens.
    widest = max_logprobs // 2
    if not 1 <= beam.beam_width <= widest:
        raise RequestRejected(
            _INVALID,
            f"beam_width must be 1 to {widest}",
            field=prefix + "beam_search.beam_width",
        )
    if parameters.HasField("n") and not 1 <= parameters.n <= beam.beam_width:
        raise RequestRejected(_INVALID, "n must be 1 to beam_search.beam_width", field=prefix + "n")
    if beam.HasField("length_penalty") and not math.isfinite(beam.length_penalty):
        raise RequestRejected(
            _INVALID,
            "length_penalty must be a finite number",
            field=prefix + "beam_search.length_penalty",
        )


def beam_validation_params(
    parameters: chat_pb2.GenerationParameters,
    max_tokens: int,
    structured_outputs: StructuredOutputsParams | None,
) -> SamplingParams:
    """What vLLM validates of a beam search (`InputProcessor.process_inputs`): the limits and
    the constraint, whose backend vLLM resolves there (the search compiles it with that one)."""
    return SamplingParams.from_optional(
        max_tokens=max_tokens,
        stop=list(parameters.stop) or None,
        logprobs=2 * parameters.beam_search.beam_width,
        ignore_eos=bool(parameters.ignore_eos),
        structured_outputs=structured_outputs,
    )


def beam_search_input(
    parameters: chat_pb2.GenerationParameters,
    prompt_token_ids: list[int],
    max_tokens: int,
    validated: SamplingParams,
    tokenizer: TokenizerLike,
) -> BeamSearchInput:
    """The search of a request checked by `check_beam_parameters` and validated by vLLM."""
    beam = parameters.beam_search
    eos = tokenizer.eos_token_id
    settings = BeamSearchSettings(
        beam_width=beam.beam_width,
        results=parameters.n if parameters.HasField("n") else 1,
        max_tokens=max_tokens,
        prompt_tokens=len(prompt_token_ids),
        # As vLLM's beam search: the tokenizer's end-of-sequence token ends a beam.
        eos_token_ids=frozenset() if eos is None else frozenset({eos}),
        length_penalty=beam.length_penalty if beam.HasField("length_penalty") else 1.0,
        early_stopping=beam.early_stopping,
        ignore_eos=bool(parameters.ignore_eos),
        stop=tuple(parameters.stop),
    )
    constraint = parameters.structured_output
    choices = constraint.choice.choices if constraint.WhichOneof("constraint") == "choice" else None
    return BeamSearchInput(
        prompt_token_ids=prompt_token_ids,
        settings=settings,
        choices=None if choices is None else tuple(choices),
        structured_outputs=None if choices is not None else validated.structured_outputs,
    )


class GrammarBackends:
    """vLLM's structured-output backends, one per name, created on first use; `destroy()`."""

    def __init__(self, vllm_config: VllmConfig, tokenizer: TokenizerLike) -> None:
        self._vllm_config = vllm_config
        self._tokenizer = tokenizer
        self._backends: dict[str, StructuredOutputBackend] = {}

    def grammar(self, params: StructuredOutputsParams, stop_token_ids: set[int]) -> _Grammar:
        """Compiles the constraint (blocking: a large JSON schema can take a while)."""
        name = params._backend or "xgrammar"  # resolved by vLLM's validation of the request
        backend = self._backends.get(name)
        if backend is None:
            module, class_name = _BACKENDS[name]
            backend_class = getattr(importlib.import_module(module), class_name)
            backend = backend_class(
                vllm_config=self._vllm_config,
                tokenizer=self._tokenizer,
                vocab_size=self._vllm_config.model_config.get_vocab_size(),
            )
            self._backends[name] = backend
        request_type, spec = get_structured_output_key(params)
        return _Grammar(
            backend.compile_grammar(request_type, spec, stop_token_ids),
            backend.allocate_token_bitmask(1),
            backend.vocab_size,
        )

    def destroy(self) -> None:
        for backend in self._backends.values():
            backend.destroy()  # type: ignore[no-untyped-call]
        self._backends.clear()


class _Grammar:
    """`worker.beam_search.Constraint` from one compiled vLLM grammar, reset and replayed for
    every beam (vLLM's grammars cannot be copied)."""

    def __init__(self, grammar: StructuredOutputGrammar, bitmask: torch.Tensor, vocab_size: int):
        self._grammar = grammar
        self._bitmask = bitmask
        self._vocab_size = vocab_size

    def allowed_tokens(self, token_ids: Sequence[int]) -> Sequence[int]:
        grammar = self._grammar
        grammar.reset()  # type: ignore[no-untyped-call]
        if token_ids and not grammar.accept_tokens("beam-search", list(token_ids)):
            return []  # not a prefix of the language: cannot happen with allowed tokens
        if grammar.is_terminated():
            return []
        grammar.fill_bitmask(self._bitmask, 0)
        row: torch.Tensor = self._bitmask[0]
        bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[: self._vocab_size]
        allowed: list[int] = np.flatnonzero(bits).tolist()
        return allowed


class VllmBeamSearch:
    """One beam-search request on `llm`: `run()` yields its outputs, `abort()` stops it."""

    def __init__(
        self,
        llm: AsyncLLM,
        prepared: PreparedRequest,
        engine_input: BeamSearchInput,
        grammars: GrammarBackends,
    ) -> None:
        self._llm = llm
        self._request_id = prepared.request_id
        self._sequences = prepared.sequences
        self._input = engine_input
        self._grammars = grammars
        self._step_ids = itertools.count()
        self._in_flight: set[str] = set()
        self._aborted = False
        self.completed = False
        """Whether the search ran to its end (not aborted, cancelled or failed)."""
        settings = engine_input.settings
        self._top = 2 * settings.beam_width
        self._widest = llm.model_config.max_logprobs

    async def run(self) -> AsyncGenerator[EngineOutput, None]:
        """Yields one output when the search ends: every result (at most n: fewer when the
        constraint admits fewer outputs), best first, each started, given its whole text at
        once and finished with its cumulative log probability.

        After `abort()`, the n sequences start and finish as CANCELLED instead. Closing or
        cancelling the iterator aborts the steps in flight; vLLM failures propagate.
        """
        try:
            output = await self._search()
        except* BeamSearchAborted:  # raised in the task groups of the steps
            output = EngineOutput(events=_cancelled_events(self._sequences), completion_tokens=0)
        else:
            self.completed = True
        yield output

    async def _search(self) -> EngineOutput:
        settings = self._input.settings
        tokenizer = self._llm.get_tokenizer()
        constraint: Constraint | None = None
        structured_outputs = self._input.structured_outputs
        if self._input.choices is not None:
            choices = [
                tokenizer.encode(choice, add_special_tokens=False) for choice in self._input.choices
            ]
            constraint = ChoiceConstraint(choices, settings.eos_token_ids)
        elif structured_outputs is not None:
            constraint = await asyncio.to_thread(
                self._grammars.grammar, structured_outputs, set(settings.eos_token_ids)
            )

        def decode(token_ids: Sequence[int]) -> str:
            return tokenizer.decode(list(token_ids), skip_special_tokens=True)

        results = await beam_search(settings, self, decode, constraint)
        events: list[events_pb2.StreamEvent] = []
        for index, beam in enumerate(results):
            events.extend(_beam_events(index, beam, decode))
        completion_tokens = sum(len(beam.token_ids) for beam in results)
        return EngineOutput(events=events, completion_tokens=completion_tokens)

    async def abort(self) -> None:
        """Stops the search: the steps in flight are aborted, `run()` raises."""
        self._aborted = True
        if self._in_flight and not self._llm.errored:
            await self._llm.abort(list(self._in_flight))

    async def next_token_logprobs(
        self, token_ids: Sequence[int], allowed: Sequence[int] | None
    ) -> Mapping[int, float]:
        """`worker.beam_search.NextTokenScorer` (see the module docstring)."""
        if allowed is None or len(allowed) > _MAX_QUERIED_TOKENS:
            top = self._top if allowed is None else self._widest
            queries = [_step_params(logprobs=top)]
        else:
            queries = [
                _step_params(logprob_token_ids=list(allowed[start : start + MAX_LOGPROB_TOKEN_IDS]))
                for start in range(0, len(allowed), MAX_LOGPROB_TOKEN_IDS)
            ]
        prompt = [*self._input.prompt_token_ids, *token_ids]
        async with asyncio.TaskGroup() as group:
            steps = [group.create_task(self._step(prompt, params)) for params in queries]
        logprobs: dict[int, float] = {}
        for step in steps:
            logprobs.update(step.result())
        return logprobs

    async def _step(self, prompt: list[int], params: SamplingParams) -> dict[int, float]:
        if self._aborted:
            raise BeamSearchAborted(self._request_id)
        step_id = f"{self._request_id}-beam-{next(self._step_ids)}"
        self._in_flight.add(step_id)
        try:
            final = None
            async with aclosing(self._llm.generate(tokens_input(prompt), params, step_id)) as out:
                async for output in out:
                    final = output  # FINAL_ONLY: the one output
        finally:
            self._in_flight.discard(step_id)
        if final is None or not final.outputs:
            raise RuntimeError(f"vLLM returned no output for beam step {step_id}")
        completion = final.outputs[0]
        if completion.finish_reason == "abort":
            raise BeamSearchAborted(self._request_id)
        if completion.finish_reason == "error" or not completion.logprobs:
            raise RuntimeError(f"beam step {step_id} failed ({completion.finish_reason})")
        return {token: entry.logprob for token, entry in completion.logprobs[0].items()}


def _step_params(
    *, logprobs: int | None = None, logprob_token_ids: list[int] | None = None
) -> SamplingParams:
    # Greedy: the sampled token only adds to the log probabilities, which are raw (vLLM's
    # default `logprobs_mode`: before temperature, penalties and masks).
    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=logprobs,
        logprob_token_ids=logprob_token_ids,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _cancelled_events(sequences: int) -> list[events_pb2.StreamEvent]:
    events: list[events_pb2.StreamEvent] = []
    for index in range(sequences):
        events.append(events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=index)))
        finish = events_pb2.SequenceFinish(index=index, reason=events_pb2.FINISH_REASON_CANCELLED)
        events.append(events_pb2.StreamEvent(sequence_finish=finish))
    return events


def _beam_events(
    index: int, beam: Beam, decode: Callable[[Sequence[int]], str]
) -> list[events_pb2.StreamEvent]:
    text = beam.text if beam.text is not None else decode(beam.token_ids)
    finish = events_pb2.SequenceFinish(
        index=index,
        reason=_FINISH_REASONS[beam.finish_reason or "length"],
        cumulative_logprob=beam.cumulative_logprob,
    )
    if beam.stop_sequence is not None:
        finish.stop_sequence = beam.stop_sequence
    events = [events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=index))]
    if beam.token_ids:
        events.append(
            events_pb2.StreamEvent(
                sequence_delta=events_pb2.SequenceDelta(
                    index=index, text=text, token_ids=list(beam.token_ids)
                )
            )
        )
    events.append(events_pb2.StreamEvent(sequence_finish=finish))
    return events
