"""The real engine behind the quality gates, and how the gates drive it.

`conftest.py` registers the fixtures; tests import the helpers from here (a unique module
name: test directories are not packages).

One in-process `VllmEngine` (SmolLM2-135M, the production defaults: bf16 on CPUs with
AVX-512 BF16) per test module (loading takes ~20 s on two cores), closed at the module's end
so that it never runs beside the integration suite's shared worker. `EngineHost.restart()`
closes it and loads a fresh one — sequentially, never two at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from bench.process_mesh import assert_no_vllm_engine, vllm_engines
from worker.model_source import prepare_packaged_model

# Importing vLLM imports torch's inductor, whose modules warn about their own deprecated
# APIs at import time (pytest turns warnings into errors; these are not ours to fix).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from worker.engine import VllmEngine

MODEL = "smollm2-135m"
#: Bound of any one generation (beam searches included).
TIMEOUT = 120.0


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def chat_request(text: str, **parameters: Any) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model=MODEL,
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ],
        generation_parameters=chat_pb2.GenerationParameters(**parameters),
    )


@dataclass
class Run:
    """Everything one generation yielded, in order."""

    events: list[events_pb2.StreamEvent] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0

    def of(self, kind: str) -> list[Any]:
        return [getattr(event, kind) for event in self.events if event.WhichOneof("event") == kind]

    def texts(self) -> dict[int, str]:
        texts: dict[int, str] = defaultdict(str)
        for delta in self.of("sequence_delta"):
            texts[delta.index] += delta.text
        return dict(texts)

    def token_ids(self) -> dict[int, list[int]]:
        tokens: dict[int, list[int]] = defaultdict(list)
        for delta in self.of("sequence_delta"):
            tokens[delta.index].extend(delta.token_ids)
        return dict(tokens)

    def finishes(self) -> dict[int, events_pb2.SequenceFinish]:
        return {finish.index: finish for finish in self.of("sequence_finish")}

    def outputs(self) -> dict[int, tuple[str, list[int]]]:
        """Per sequence: text and token ids (what byte-identical output compares)."""
        tokens = self.token_ids()
        return {index: (text, tokens.get(index, [])) for index, text in self.texts().items()}


async def generate(engine: VllmEngine, request: chat_pb2.ChatRequest) -> Run:
    prepared = await engine.prepare(f"quality-{uuid.uuid4().hex[:8]}", request)
    run = Run(prompt_tokens=prepared.prompt_tokens)
    async with asyncio.timeout(TIMEOUT):
        async for output in engine.generate(prepared):
            run.events.extend(output.events)
            run.completion_tokens = output.completion_tokens
    return run


class EngineHost:
    """The module's engine; `restart()` replaces it by a freshly loaded one."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._engine: VllmEngine | None = None
        self.loads = 0

    @property
    def engine(self) -> VllmEngine:
        assert self._engine is not None, "not started"
        return self._engine

    async def start(self) -> None:
        assert_no_vllm_engine("the quality gates' engine")
        engine = VllmEngine(self.model_dir, MODEL, max_num_seqs=8)
        began = time.monotonic()
        await engine.start()
        print(f"\nengine loaded in {time.monotonic() - began:.1f} s")
        self._engine = engine
        self.loads += 1

    async def restart(self) -> None:
        await self.aclose()
        await self.start()

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            processes = vllm_engines()
            await engine.aclose()
            _, alive = await asyncio.to_thread(psutil.wait_procs, processes, 10.0)
            assert alive == [], f"engine processes outlived the engine: {alive}"


@pytest.fixture(scope="package")
def quality_model_dir(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The converted model, in pytest's cache (shared with the integration suites)."""
    cache: pytest.Cache | None = getattr(pytestconfig, "cache", None)
    data_dir = (
        Path(cache.mkdir("llm-mesh-data"))
        if cache is not None
        else tmp_path_factory.mktemp("llm-mesh-data")
    )
    return prepare_packaged_model(data_dir)


# Module scope: tests/quality is a directory, not a package, and pytest keeps "package"
# fixtures of a plain directory until the session ends, which would leave this engine running
# beside the integration suite's shared vLLM worker.
@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine_host(quality_model_dir: Path) -> AsyncIterator[EngineHost]:
    host = EngineHost(quality_model_dir)
    await host.start()
    try:
        yield host
    finally:
        await host.aclose()


@pytest.fixture
def engine(engine_host: EngineHost) -> VllmEngine:
    """The module's engine as it is now (after any restart)."""
    return engine_host.engine
