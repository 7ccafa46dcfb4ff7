"""End to end through gRPC with the real model: the session's vLLM worker (SmolLM2-135M on CPU)
behind an in-process scheduler on the worker's broker prefix.

The worker is shared by the whole session, so its counters are read as differences.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from llmmesh.v1 import events_pb2
from request_path_harness import START_TIMEOUT, Mesh, chat, kinds, status_details
from shared_worker import MISSED_HEARTBEATS, MODEL, SharedWorker
from tokenizers import Tokenizer

from plumbing.client import SchedulerClient
from scheduler.server import SchedulerServer

#: Bound of one generation (~35 tokens/s for one stream on two cores).
GENERATION_TIMEOUT = 60.0
ABORTED = "llm_mesh_worker_engine_aborted_total"
CANCELLED = 'llm_mesh_worker_tasks_aborted_total{reason="cancelled"}'
RUNNING = "llm_mesh_worker_running_tasks"
POEM = "Write a short poem about the sea."


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(
    vllm_worker: SharedWorker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    """This module's scheduler, on the shared worker's prefix (it starts no worker)."""
    mesh = Mesh(vllm_worker.prefix, tmp_path_factory.mktemp("real-model"))
    try:
        yield mesh
    finally:
        await mesh.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh, vllm_worker: SharedWorker) -> SchedulerServer:
    scheduler = await mesh.start_scheduler(missed_heartbeats=MISSED_HEARTBEATS)
    async with asyncio.timeout(START_TIMEOUT):
        await scheduler.registry.wait_for(
            lambda registry: any(
                beat.worker_id == vllm_worker.worker_id and beat.ready
                for beat in registry.workers()
            )
        )
    return scheduler


@pytest.fixture(scope="module")
def client(mesh: Mesh, scheduler: SchedulerServer) -> SchedulerClient:
    return mesh.client(scheduler)


@pytest.fixture(scope="module")
def tokenizer(model_data_dir: Path, vllm_worker: SharedWorker) -> Tokenizer:
    """The served model's own tokenizer (the worker converted the model into the cache)."""
    return Tokenizer.from_file(str(model_data_dir / "models" / MODEL / "tokenizer.json"))


async def _collect(events: AsyncIterator[events_pb2.StreamEvent]) -> list[events_pb2.StreamEvent]:
    async with asyncio.timeout(GENERATION_TIMEOUT):
        return [event async for event in events]


async def _status_before_any_event(
    events: AsyncIterator[events_pb2.StreamEvent],
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async with asyncio.timeout(GENERATION_TIMEOUT):
            await anext(aiter(events))
    return failure.value


def _bad_field(error: grpc.aio.AioRpcError) -> str:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status_details(error).details)
    field: str = bad_request.field_violations[0].field
    return field


def _texts(events: list[events_pb2.StreamEvent]) -> dict[int, str]:
    texts: dict[int, str] = defaultdict(str)
    for event in events:
        if event.HasField("sequence_delta"):
            texts[event.sequence_delta.index] += event.sequence_delta.text
    return dict(texts)


async def test_n3_streams_three_real_sequences_then_one_finish_with_usage(
    client: SchedulerClient, tokenizer: Tokenizer
) -> None:
    request = chat(POEM, model=MODEL, n=3, seed=7, temperature=1.0, max_tokens=16)
    events = await _collect(client.generate(request))
    order = kinds(events)
    assert order[0] == "generation_start" and order[-1] == "generation_finish"
    assert order.count("generation_start") == order.count("generation_finish") == 1
    assert "error" not in order
    start = events[0].generation_start
    assert start.model == MODEL and start.request_id and start.prompt_tokens > 0
    token_ids: dict[int, list[int]] = defaultdict(list)
    for index in range(3):
        mine = [
            kind
            for event, kind in zip(events, order, strict=True)
            if kind.startswith("sequence") and getattr(event, kind).index == index
        ]
        assert mine[0] == "sequence_start" and mine[-1] == "sequence_finish"
        assert mine.count("sequence_start") == mine.count("sequence_finish") == 1
        assert set(mine[1:-1]) == {"sequence_delta"}
    for event in events:
        if event.HasField("sequence_delta"):
            token_ids[event.sequence_delta.index].extend(event.sequence_delta.token_ids)
        if event.HasField("sequence_finish"):
            assert event.sequence_finish.reason in (
                events_pb2.FINISH_REASON_STOP,
                events_pb2.FINISH_REASON_LENGTH,
            )
    usage = events[-1].generation_finish.usage
    streamed = sum(len(ids) for ids in token_ids.values())
    assert usage.prompt_tokens == start.prompt_tokens
    assert usage.completion_tokens == streamed <= 3 * 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    texts = _texts(events)
    # The real model's words: its tokenizer decodes the streamed token ids to the streamed text.
    assert all(texts[index].strip() for index in range(3))
    assert {index: tokenizer.decode(ids) for index, ids in token_ids.items()} == texts
    assert len(set(texts.values())) == 3, "each sequence samples with its own seed"
    # Same seed, same texts.
    assert _texts(await _collect(client.generate(request))) == texts


async def test_a_prompt_over_the_context_is_invalid_argument_before_any_event(
    client: SchedulerClient,
) -> None:
    # ~9000 tokens: more than SmolLM2's 8192.
    error = await _status_before_any_event(client.generate(chat("hello " * 9000, model=MODEL)))
    assert _bad_field(error) == "messages"
    assert "8192" in (error.details() or "")


async def test_tools_are_invalid_argument_for_a_model_without_tool_support(
    client: SchedulerClient,
) -> None:
    request = chat("What is the weather in Paris?", model=MODEL)
    request.tools.add(name="get_weather", description="The weather in a city.")
    error = await _status_before_any_event(client.generate(request))
    assert _bad_field(error) == "tools"


async def test_a_caller_cancel_aborts_the_vllm_request(
    client: SchedulerClient, scheduler: SchedulerServer, vllm_worker: SharedWorker
) -> None:
    before = await vllm_worker.metrics()
    events = client.generate(chat(POEM, model=MODEL, max_tokens=2000, ignore_eos=True))
    deltas = 0
    async with asyncio.timeout(GENERATION_TIMEOUT):
        while deltas < 3:
            deltas += (await anext(events)).HasField("sequence_delta")
    await events.aclose()
    # Aborted in vLLM long before its 2000 tokens (a minute at ~35 tokens/s).
    await vllm_worker.wait_metric(ABORTED, lambda value: value == before.get(ABORTED, 0) + 1)
    await vllm_worker.wait_metric(RUNNING, lambda value: value == 0)
    after = await vllm_worker.metrics()
    assert after.get(CANCELLED, 0) == before.get(CANCELLED, 0) + 1
    assert len(scheduler.demux) == 0
