"""Determinism gate: the same request with a fixed seed gives byte-identical output.

Promised (and asserted): identical text and token ids run after run, with n > 1, across
engine restarts (a fresh engine loaded after the first is closed), and whichever other
requests run concurrently, as long as the request shares its batch with some.

Named exception (README, "Determinism"): with bfloat16 weights (the default on CPUs with
AVX-512 BF16, as here) vLLM's CPU kernels round differently for a batch of one sequence and a
batch of several, so a request run alone and the same request run beside others part after a
few to a few dozen tokens (measured over 64 tokens: at token 2, 21, 23, 58 for seeded
sampling, 27 or never for greedy). Which or how many other requests run does not matter (same
outputs beside one background request or another, beside one or three); with float32 weights
no divergence was measured. The engine cannot promise more, so neither does the mesh: the test
prints the divergence it observes and asserts what is promised.
"""

from __future__ import annotations

import asyncio

import pytest
from llmmesh.v1 import chat_pb2
from quality_engine import TIMEOUT, EngineHost, chat_request, generate

from worker.engine import VllmEngine

pytestmark = pytest.mark.vllm

_REQUESTS = {
    "seeded": chat_request(
        "Tell me a story about a cat.", seed=1234, temperature=1.0, max_tokens=32, ignore_eos=True
    ),
    "greedy": chat_request("Explain how rain forms.", temperature=0.0, max_tokens=32),
    "n3": chat_request(
        "Write a poem about autumn.", n=3, seed=7, temperature=0.9, top_p=0.95, max_tokens=24
    ),
}
# Long enough to outlive any request of `_REQUESTS` (they are aborted once it finished).
_BACKGROUNDS = [
    chat_request("List ten animals and describe each.", seed=99, max_tokens=1000, ignore_eos=True),
    chat_request("Count to one hundred.", temperature=0.0, max_tokens=1000, ignore_eos=True),
]

Outputs = dict[int, tuple[str, list[int]]]


async def _outputs(engine: VllmEngine, request: chat_pb2.ChatRequest) -> Outputs:
    return (await generate(engine, request)).outputs()


def _divergence(first: list[int], second: list[int]) -> int | None:
    for position, (one, other) in enumerate(zip(first, second, strict=False)):
        if one != other:
            return position
    return None if len(first) == len(second) else min(len(first), len(second))


@pytest.fixture(scope="module")
def first_outputs() -> dict[str, Outputs]:
    """Filled by the first test, compared against after the restart."""
    return {}


async def test_same_request_same_seed_same_output_run_after_run(
    engine: VllmEngine, first_outputs: dict[str, Outputs]
) -> None:
    for name, request in _REQUESTS.items():
        first = await _outputs(engine, request)
        assert await _outputs(engine, request) == first, name
        assert all(text for text, _ in first.values())
        first_outputs[name] = first
    # n > 1: three different sequences, each reproduced.
    assert len(first_outputs["n3"]) == 3
    assert len({text for text, _ in first_outputs["n3"].values()}) == 3


async def _beside(
    engine: VllmEngine, request: chat_pb2.ChatRequest, background: chat_pb2.ChatRequest
) -> Outputs:
    """`request`'s outputs while `background` generates all along (started first, decoding
    before `request` arrives, aborted after it finished)."""
    prepared = await engine.prepare("determinism-background", background)
    decoding = asyncio.Event()

    async def run_background() -> None:
        async for output in engine.generate(prepared):
            if any(event.HasField("sequence_delta") for event in output.events):
                decoding.set()

    async with asyncio.TaskGroup() as group:
        task = group.create_task(run_background())
        async with asyncio.timeout(TIMEOUT):
            await decoding.wait()
        try:
            outputs = await _outputs(engine, request)
        finally:
            task.cancel()  # aborts the background request
    return outputs


async def test_other_requests_do_not_change_a_batched_requests_output(
    engine: VllmEngine, first_outputs: dict[str, Outputs]
) -> None:
    """Batched with one request or with another, the output is the same (bf16 too); the
    named exception is only between a batch of one and a batch of several."""
    request = _REQUESTS["seeded"]
    beside_one = await _beside(engine, request, _BACKGROUNDS[0])
    beside_other = await _beside(engine, request, _BACKGROUNDS[1])
    assert beside_other == beside_one
    assert beside_one[0][0]
    # The named exception, observed (not asserted: the engine promises nothing here).
    alone = first_outputs["seeded"][0][1]
    print(f"\nalone vs batched: first differing token {_divergence(alone, beside_one[0][1])}")


async def test_same_output_across_engine_restarts(
    engine_host: EngineHost, first_outputs: dict[str, Outputs]
) -> None:
    """Runs last in this module: replaces the package's engine by a fresh one."""
    assert set(first_outputs) == set(_REQUESTS)
    loads = engine_host.loads
    await engine_host.restart()
    assert engine_host.loads == loads + 1
    for name, request in _REQUESTS.items():
        assert await _outputs(engine_host.engine, request) == first_outputs[name], name
