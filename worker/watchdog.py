"""The engine watchdog: while requests generate, tokens must keep coming.

A hung engine (a stuck kernel, a dead engine-core process) produces nothing and raises
nothing: the worker would keep taking tasks that never end. The watchdog notices without a
probe generation (which would queue behind real load): the consumer reports every engine
output (`progressed`) and every generation it starts and ends; when generations are running
and no output came for `window` seconds, the engine has stalled. The worker then stops
taking tasks, reports not ready (probe and heartbeat) and ends its in-flight requests with
a retryable error, so that their clients can retry elsewhere.

The window bounds the slowest legitimate gap between two outputs of the whole engine,
including the first token of a long prompt under load: set it well above the worst prefill.
A stall is final: no traffic reaches the engine afterwards to prove it recovered, so the
worker stays not ready until it is restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["EngineWatchdog"]


class EngineWatchdog:
    """Tracks the engine's running generations and its last output (event loop clock)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._running = 0
        self._last_progress = 0.0
        self._stalled = False

    @property
    def stalled(self) -> bool:
        """Whether a stall was detected (final)."""
        return self._stalled

    @property
    def silence(self) -> float:
        """Seconds since the engine last produced an output while generations run (0 when
        none runs)."""
        if self._running == 0:
            return 0.0
        return asyncio.get_running_loop().time() - self._last_progress

    def started(self) -> None:
        """A generation starts: the engine owes outputs from now on."""
        if self._running == 0:
            # Idle time is no stall: the window starts with the first running generation.
            self._last_progress = asyncio.get_running_loop().time()
        self._running += 1

    def progressed(self) -> None:
        """The engine produced an output."""
        self._last_progress = asyncio.get_running_loop().time()

    def finished(self) -> None:
        """A generation ended (however it ended)."""
        self._running -= 1

    async def watch(self, on_stall: Callable[[], Awaitable[None]]) -> None:
        """Checks the engine until it stalls, then awaits `on_stall()` once and returns.

        Checks every quarter window (at most every second); cancel to stop watching.
        """
        # Silence is the passing of time, not an event: it is checked periodically.
        interval = min(self.window / 4, 1.0)
        while True:
            await asyncio.sleep(interval)
            if self.silence > self.window:
                break
        self._stalled = True
        await on_stall()
