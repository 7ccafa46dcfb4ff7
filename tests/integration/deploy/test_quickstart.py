"""The README's quickstart as CI runs it: `llm-mesh up`, a streamed request, Ctrl-C, nothing left.

`llm-mesh up` runs with the synthetic engine to keep CI fast (the vLLM worker has its own
tests), on any free gateway port, with its own data directory and broker prefix. The test
reads `URL:` and `API key:` from its output, streams one completion through the official
`openai` SDK, runs the curl and openai examples `up` printed, sends SIGINT, and checks that
`up` exits in time with status 0, that no process of any of its process groups is left (the
service groups and its own), and that the broker holds no queue or exchange with its prefix.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from up_process import MODEL, UpProcess, broker_names, live_members

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _example(banner: str, kind: str) -> str:
    """The example of one kind in `up`'s banner: the indented block after the line naming it."""
    lines = banner.splitlines()
    start = next(
        n for n, line in enumerate(lines) if line.startswith(("Try it", "or with")) and kind in line
    )
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


async def _run_example(kind: str, banner: str) -> str:
    """Runs the curl or openai example; returns what it printed."""
    code = _example(banner, kind)
    if kind == "curl":
        if shutil.which("curl") is None:
            pytest.skip("no curl here")
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        output, errors = await process.communicate()
    assert process.returncode == 0, f"{code}\n{errors.decode()}"
    return output.decode()


async def test_up_serves_a_streamed_completion_and_stops_cleanly(tmp_path: Path) -> None:
    up = await UpProcess.start(tmp_path, ["--engine", "synthetic", "--port", "0"])
    try:
        assert up.api_key.startswith("lm-")
        assert len(up.groups) == 5, up.groups  # up, SeaweedFS, scheduler, worker, gateway

        async with openai.AsyncOpenAI(
            base_url=f"{up.url}/v1", api_key=up.api_key, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hello"}],
                max_tokens=8,
                stream=True,
            )
            text, finish_reasons = "", []
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
                        if choice.finish_reason is not None:
                            finish_reasons.append(choice.finish_reason)
        assert text
        assert finish_reasons in (["stop"], ["length"])

        # The examples `up` prints work as printed.
        assert (await _run_example("curl", up.banner)).count("data: ") > 2
        assert await _run_example("openai", up.banner)

        up.process.send_signal(signal.SIGINT)
        assert await up.wait() == 0, up.tail()
        assert live_members(up.groups) == [], up.tail()
        assert await broker_names("queues", up.prefix) == []
        assert await broker_names("exchanges", up.prefix) == []
    finally:
        await up.close()
