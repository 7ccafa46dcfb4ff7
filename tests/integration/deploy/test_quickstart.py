"""The README's quickstart as CI runs it: `llm-mesh up`, a real streamed request, Ctrl-C, nothing
left.

`llm-mesh up` runs as the user runs it, with the default engine (vLLM's CPU build serving the
packaged smollm2-135m), from the venv the suite runs in, on any free gateway port, with its own
data directory and broker prefix. Its `models/` directory is the session's model cache
(`model_data_dir`), so the model converted once per checkout is reused and a warm start only
loads vLLM. The test streams one completion through the official `openai` SDK with the key
`up` printed, sends SIGINT, and checks that `up` exits in time with status 0 and that nothing
of the run is left: no process of its process groups, no process carrying its broker prefix
(`llm-mesh` services, SeaweedFS, vLLM's `VLLM::EngineCore`, even orphaned), no queue or
exchange with its prefix.

The test brings its own engine (the `vllm` marker without the shared worker), so
`tests/integration/conftest.py` runs this directory before the session's shared vLLM worker
starts: two engines never run at once. The README's other examples run against a synthetic
`up` in `test_readme.py`.
"""

from __future__ import annotations

import signal
from pathlib import Path

import openai
import pytest
from broker_inspector import BrokerInspector
from up_process import (
    MODEL,
    SERVICES_STOPPED_CLEANLY,
    VLLM_START_TIMEOUT,
    UpProcess,
    live_members,
    processes_of_run,
)

from bench.process_mesh import assert_no_vllm_engine, vllm_engines

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.vllm]


async def test_up_serves_the_real_model_and_stops_cleanly(
    tmp_path: Path, model_data_dir: Path
) -> None:
    assert_no_vllm_engine("llm-mesh up's vLLM worker")
    up = await UpProcess.start(
        tmp_path, ["--port", "0"], model_cache=model_data_dir, start_timeout=VLLM_START_TIMEOUT
    )
    try:
        assert f"llm-mesh is up: {MODEL} served by the vllm engine." in up.banner
        assert up.api_key.startswith("lm-")
        assert vllm_engines(), "no vLLM engine process under llm-mesh up"

        async with openai.AsyncOpenAI(
            base_url=f"{up.url}/v1", api_key=up.api_key, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hello"}],
                max_tokens=16,
                seed=7,
                stream=True,
            )
            text, finish_reasons = "", []
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
                        if choice.finish_reason is not None:
                            finish_reasons.append(choice.finish_reason)
        assert text.strip()
        assert finish_reasons in (["stop"], ["length"])

        up.process.send_signal(signal.SIGINT)
        assert await up.wait() == 0, up.tail()
        # Every service stopped gracefully: exit status 0, and nothing logged an error.
        assert up.stop_statuses() == SERVICES_STOPPED_CLEANLY, up.tail()
        assert up.stop_errors() == [], up.tail()
        assert live_members(up.groups) == [], up.tail()
        assert processes_of_run(up.prefix) == [], up.tail()
        assert vllm_engines() == []
        assert await BrokerInspector(up.prefix).names() == (set(), set())
    finally:
        await up.close()
