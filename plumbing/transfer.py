"""A bulk transfer (model push or pull) running in threads: its progress and its cancellation.

The transfer's blocking work runs in worker threads; `run_in_thread` lets a coroutine await it
and, when that coroutine is cancelled, tells the threads to stop at their next chunk and waits
for them, so that no download keeps writing after its caller is gone (and `asyncio.run` does
not hang at exit waiting for a thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["ProgressCallback", "Transfer", "TransferCancelled", "TransferProgress", "run_in_thread"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class TransferProgress:
    """One step of a transfer.

    `path` is the file (relative to the model directory) that moved `nbytes` more bytes;
    `done`/`total` count bytes over the whole transfer. `cached` marks bytes that were found
    already present and verified locally rather than transferred over the network.
    """

    path: str
    nbytes: int
    done: int
    total: int
    cached: bool = False


#: Called from transfer threads (one call at a time) after each step.
ProgressCallback = Callable[[TransferProgress], None]


class TransferCancelled(Exception):
    """The transfer's caller went away; raised inside the transfer's threads."""


class Transfer:
    """Progress accounting shared by a transfer's threads, and its stop flag."""

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._done = 0
        self._total = 0

    def set_total(self, total: int) -> None:
        """Declares how many bytes the whole transfer moves or verifies."""
        with self._lock:
            self._total = total

    def advance(self, path: str, nbytes: int, *, cached: bool = False) -> None:
        """Records `nbytes` more of `path`; raises `TransferCancelled` once cancelled."""
        self.check()
        with self._lock:
            self._done += nbytes
            if self._progress is not None:
                self._progress(TransferProgress(path, nbytes, self._done, self._total, cached))

    def check(self) -> None:
        """Raises `TransferCancelled` if the transfer was cancelled."""
        if self._cancelled.is_set():
            raise TransferCancelled

    def cancel(self) -> None:
        """Makes every thread of the transfer stop at its next `advance` or `check`."""
        self._cancelled.set()

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleeps up to `timeout` seconds unless cancelled first; returns whether cancelled."""
        return self._cancelled.wait(timeout)


async def run_in_thread(work: Callable[[Transfer], _T], transfer: Transfer) -> _T:
    """Runs `work(transfer)` in a thread; on cancellation stops it and waits before re-raising."""
    task = asyncio.ensure_future(asyncio.to_thread(work, transfer))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        transfer.cancel()
        # The thread notices within one chunk; the S3 client's read timeout bounds that.
        await asyncio.wait([task])
        if not task.cancelled():
            # Retrieve the outcome (usually TransferCancelled) so asyncio does not log it.
            task.exception()
        raise
