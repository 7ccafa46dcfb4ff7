"""Golden outputs: the current engine must reproduce `golden/smollm2-135m.json` exactly.

Fixed prompts, each greedy and with two seeded samplings, at most 16 tokens, each request
alone (a batch of one: see `test_determinism.py` for why batching matters in bf16). An engine
upgrade (vLLM, torch, the model conversion) that changes any output fails here and must be
re-blessed deliberately:

    LLM_MESH_BLESS_GOLDEN=1 .venv/bin/pytest tests/quality/test_golden.py

which rewrites the outputs of this machine's dtype (review the diff before committing it).
Outputs depend on the weights' dtype (bf16 where the CPU has AVX-512 BF16, else float32), so
the file keeps one set per dtype.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import vllm
from llmmesh.v1 import events_pb2
from quality_engine import MODEL, chat_request, generate

from worker.engine import VllmEngine

pytestmark = pytest.mark.vllm

GOLDEN = Path(__file__).with_name("golden") / f"{MODEL}.json"
_BLESS = "LLM_MESH_BLESS_GOLDEN"
_PROMPTS = [
    "What is the capital of France?",
    "Tell me a story about a cat.",
    "Write a haiku about the sea.",
    "Explain recursion in one sentence.",
]
_MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "seed-1": {"seed": 1, "temperature": 0.8},
    "seed-2": {"seed": 2, "temperature": 1.0, "top_p": 0.9},
}


async def _current(engine: VllmEngine) -> list[dict[str, Any]]:
    outputs = []
    for prompt in _PROMPTS:
        for mode, parameters in _MODES.items():
            run = await generate(engine, chat_request(prompt, max_tokens=16, **parameters))
            (finish,) = run.finishes().values()
            outputs.append(
                {
                    "prompt": prompt,
                    "mode": mode,
                    "parameters": parameters | {"max_tokens": 16},
                    "text": run.texts().get(0, ""),
                    "token_ids": run.token_ids().get(0, []),
                    "finish_reason": events_pb2.FinishReason.Name(finish.reason),
                }
            )
    return outputs


def _dtype(engine: VllmEngine) -> str:
    return str(engine._started().model_config.dtype).removeprefix("torch.")


async def test_outputs_match_the_golden_file(engine: VllmEngine) -> None:
    dtype = _dtype(engine)
    current = await _current(engine)
    golden: dict[str, Any] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get(_BLESS) == "1":
        golden.setdefault("model", MODEL)
        golden.setdefault("engines", {})[dtype] = {"vllm": vllm.__version__, "outputs": current}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=2, ensure_ascii=False) + "\n")
    recorded = golden.get("engines", {}).get(dtype)
    assert recorded is not None, (
        f"{GOLDEN} has no outputs for dtype {dtype}: record them with {_BLESS}=1"
    )
    for expected, actual in zip(recorded["outputs"], current, strict=True):
        assert actual == expected, (
            f"{expected['prompt']!r} ({expected['mode']}) changed: the golden file was recorded "
            f"with vLLM {recorded['vllm']}, this is vLLM {vllm.__version__}. If the change is "
            f"intended, re-bless with {_BLESS}=1 and review the diff."
        )
