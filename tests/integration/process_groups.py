"""Stopping a subprocess that leads its own process group, and proving nothing outlived it.

A vLLM worker's engine-core and model-runner children exit a moment after the worker, and on
machines whose init never reaps orphans (this one's) they stay behind as zombies: a zombie is
gone, so survivors are the group's non-zombie members, polled until they are none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable

import psutil

__all__ = ["live_members", "stop_group"]

_POLL_INTERVAL = 0.05


def live_members(group: int) -> list[int]:
    """Pids of the non-zombie processes of a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


async def stop_group(
    process: asyncio.subprocess.Process,
    *,
    stop_timeout: float,
    gone_timeout: float = 10.0,
    descendants: Iterable[psutil.Process] = (),
) -> None:
    """SIGTERM to the group `process` leads (SIGKILL after `stop_timeout`), then waits up to
    `gone_timeout` for every member and every one of `descendants` (a snapshot taken while it
    ran: they may have left the group) to be gone.

    Raises AssertionError naming the survivors, after killing them.
    """
    group = process.pid
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            async with asyncio.timeout(stop_timeout):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            await process.wait()
    snapshot = list(descendants)
    left: list[int] = []
    try:
        async with asyncio.timeout(gone_timeout):
            while True:  # other processes: nothing to await but their absence
                left = sorted(set(live_members(group)) | {p.pid for p in snapshot if _alive(p)})
                if not left:
                    return
                await asyncio.sleep(_POLL_INTERVAL)
    except TimeoutError:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process group {group} left processes behind: {left}")


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
