"""Sampling profiles of the services while a load runs: py-spy, collapsed stacks, top functions.

`record` runs `py-spy record --format raw` on each process for a fixed time (the load runs
meanwhile); `hot_functions` reads one collapsed-stack file and ranks functions by self time
(the leaf frame of each sample) and by inclusive time (anywhere on the stack), as shares of
the process's non-idle samples. Frames are grouped by function and file, lines ignored.

`thread` keeps only the samples of one thread, named by a frame on its stacks: the event
loop's (`EVENT_LOOP`) is where a service's requests are handled. py-spy counts a thread
blocked in a system call (the ledger's fsync, a pool thread waiting for work) as busy, which
psutil's CPU times do not: the other threads' shares overstate their CPU.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["EVENT_LOOP", "HotFunction", "hot_functions", "hot_paths", "py_spy", "record"]

#: The frame every service's event-loop thread runs under (`plumbing.event_loop.run`).
EVENT_LOOP: Final = "(plumbing/event_loop.py"

_RATE: Final = 250
_FRAME_LINE: Final = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy executable (the venv's first), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


async def record(pids: dict[str, int], directory: Path, duration: float) -> dict[str, Path]:
    """Profiles every process for `duration` seconds at once; returns name → collapsed stacks.

    Raises `FileNotFoundError` without py-spy, `RuntimeError` when a recording failed.
    """
    executable = py_spy()
    if executable is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    outputs = {name: directory / f"{name}.txt" for name in pids}
    processes = [
        await asyncio.create_subprocess_exec(
            executable,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(_RATE),
            "--duration",
            str(max(1, round(duration))),
            "--nonblocking",
            "--output",
            str(outputs[name]),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for name, pid in pids.items()
    ]
    results = await asyncio.gather(*(process.communicate() for process in processes))
    for (name, _), process, (_, stderr) in zip(pids.items(), processes, results, strict=True):
        if process.returncode != 0 or not outputs[name].exists():
            raise RuntimeError(f"py-spy on {name} failed: {stderr.decode()[-500:]}")
    return outputs


@dataclass(frozen=True)
class HotFunction:
    """A function's share of a process's samples."""

    function: str
    self_share: float
    inclusive_share: float


def _function(frame: str) -> str:
    return _FRAME_LINE.sub(")", frame.strip())


def _samples(path: Path, thread: str | None) -> Iterator[tuple[list[str], int]]:
    """(frames, count) of every sample; with `thread`, of the stacks holding that frame."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if thread is not None and thread not in stack:
            continue
        frames = [_function(frame) for frame in stack.split(";") if frame]
        if frames:
            yield frames, int(count_text)


def hot_functions(
    path: Path, limit: int = 12, *, thread: str | None = None
) -> tuple[int, list[HotFunction]]:
    """The sample count and the `limit` functions with the most self time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(path, thread):
        total += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    if total == 0:
        return 0, []
    return total, [
        HotFunction(function, count / total, inclusive[function] / total)
        for function, count in own.most_common(limit)
    ]


def hot_paths(
    path: Path, markers: list[str], limit: int = 12, *, thread: str | None = None
) -> list[tuple[str, float]]:
    """Inclusive shares of the functions whose name contains one of `markers` (e.g. a
    package path), most expensive first: where the project's own code spends its time."""
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(path, thread):
        total += count
        for function in set(frames):
            if any(marker in function for marker in markers):
                inclusive[function] += count
    if total == 0:
        return []
    return [(function, count / total) for function, count in inclusive.most_common(limit)]
