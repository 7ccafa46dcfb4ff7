"""The engine watchdog: silence while generations run is a stall; idle time is not."""

from __future__ import annotations

import asyncio

from worker.watchdog import EngineWatchdog


async def test_idle_engine_is_no_stall() -> None:
    watchdog = EngineWatchdog(window=0.05)
    stalls: list[bool] = []

    async def on_stall() -> None:
        stalls.append(True)

    watching = asyncio.create_task(watchdog.watch(on_stall))
    try:
        await asyncio.sleep(0.15)  # idle three windows: nothing runs, nothing is owed
        assert not watchdog.stalled and not stalls
        watchdog.started()  # the window starts now, not when the engine last spoke
        assert watchdog.silence < 0.05
        watchdog.progressed()
        watchdog.finished()
    finally:
        watching.cancel()
        await asyncio.wait([watching])


async def test_silence_while_running_is_a_stall() -> None:
    watchdog = EngineWatchdog(window=0.05)
    stalled = asyncio.Event()

    async def on_stall() -> None:
        stalled.set()

    watchdog.started()
    async with asyncio.timeout(2):
        await watchdog.watch(on_stall)
    assert stalled.is_set() and watchdog.stalled
    assert watchdog.silence > 0.05
