"""The stress gate, short: `bench/stress.py` for ~20 s against a synthetic worker must pass.

The script starts its own mesh (scheduler, synthetic worker, gateway subprocesses under a
private broker prefix) and exits 0 only without any error and without a service's RSS growing
by more than 5% and 50 MB after the warm-up. Longer runs: `bench/stress.py --duration 600`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

STRESS = Path(__file__).parents[2] / "bench" / "stress.py"


async def test_short_stress_run_passes(tmp_path: Path) -> None:
    report = tmp_path / "stress.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STRESS),
        "--duration",
        "12",
        "--warmup",
        "4",
        "--concurrency",
        "24",
        "--max-tokens",
        "16",
        "--json",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(120):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    print(text)
    assert process.returncode == 0, text
    summary = json.loads(report.read_text())
    assert summary["errors"] == 0
    assert summary["requests"] > 0
    assert set(summary["memory"]) == {"scheduler", "worker", "gateway"}
