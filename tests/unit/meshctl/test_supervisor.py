"""The supervisor of `llm-mesh up`'s services, with small Python programs standing in for them.

Each stand-in runs in its own process group like a real service; `serve` leaves behind a child
that ignores SIGTERM, as vLLM's engine core may outlive its worker.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from pathlib import Path

import pytest

from meshctl._supervisor import ServiceExited, Supervisor

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICE = """
import signal, subprocess, sys, time
mode = sys.argv[1]
if mode == "serve":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print("starting")
    print("converting 10%\\rconverting 60%\\rconverting 100%")
    print("ready: serving on 1234", flush=True)
    print("a log line", file=sys.stderr, flush=True)
    signal.sigwait([signal.SIGTERM])
elif mode == "crash":
    print("ready: crashing", flush=True)
    time.sleep(0.2)
    sys.exit(3)
elif mode == "orphaning":
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print("ready: about to die", flush=True)
    time.sleep(0.2)
    sys.exit(5)
elif mode == "early":
    sys.exit(4)
elif mode == "parent":
    # Like the worker and vLLM's engine core: the child must not be signalled under it; the
    # service stops its child itself.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time\\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('child: SIGTERM', flush=True), "
        "sys.exit(0)))\\n"
        "print('child ready', flush=True)\\n"
        "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "child ready\\n"
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    print("ready: parent", flush=True)
    signal.sigwait([signal.SIGTERM])
    child.kill()
    print(f"child killed by its parent: {child.wait() == -signal.SIGKILL}", flush=True)
    print(f"child said: {child.stdout.read()!r}", flush=True)
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready: ignoring SIGTERM", flush=True)
    time.sleep(60)
"""
PROGRAM = [sys.executable, "-c", SERVICE]
#: Bound of every wait in these tests.
TIMEOUT = 20.0


def _group_members(group: int) -> list[int]:
    """Running (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _parent, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members


async def test_lines_are_prefixed_and_the_group_is_stopped_whole() -> None:
    sink = io.StringIO()
    async with asyncio.timeout(TIMEOUT):
        async with Supervisor(PROGRAM, sink=sink, grace=0.5) as supervisor:
            service = await supervisor.start("api", ["serve"], environment={}, ready="ready:")
            assert await service.ready() == "ready: serving on 1234"
            # The leader and the child it started share the service's own group.
            assert len(_group_members(service.pid)) == 2
    lines = sink.getvalue().splitlines()
    assert "[api] starting" in lines
    assert "[api] ready: serving on 1234" in lines
    assert "[api] a log line" in lines
    assert "[api] converting 100%" in lines  # a progress bar, as a terminal ends up showing it
    assert service.process.returncode == 0
    assert _group_members(service.pid) == []


async def test_stop_signals_the_service_and_leaves_its_children_to_it() -> None:
    sink = io.StringIO()
    async with asyncio.timeout(TIMEOUT):
        async with Supervisor(PROGRAM, sink=sink, grace=5.0) as supervisor:
            service = await supervisor.start("worker", ["parent"], environment={}, ready="ready:")
            await service.ready()
    lines = sink.getvalue().splitlines()
    assert "[worker] child killed by its parent: True" in lines
    assert "[worker] child said: ''" in lines
    assert service.process.returncode == 0


async def test_watch_reports_a_service_that_exits_unasked() -> None:
    sink = io.StringIO()
    async with asyncio.timeout(TIMEOUT):
        async with Supervisor(PROGRAM, sink=sink, grace=0.5) as supervisor:
            await supervisor.start("first", ["serve"], environment={}, ready="ready:")
            crashing = await supervisor.start("second", ["crash"], environment={}, ready="ready:")
            await crashing.ready()
            with pytest.raises(ServiceExited) as exited:
                await supervisor.watch()
    assert (exited.value.name, exited.value.returncode) == ("second", 3)
    assert str(exited.value) == "the second exited (3)"


async def test_watch_sees_a_dead_leader_whose_child_holds_its_pipes() -> None:
    """`Process.wait()` would wait for the orphan to close the pipes; the watch must not."""
    async with asyncio.timeout(TIMEOUT):
        async with Supervisor(PROGRAM, sink=io.StringIO(), grace=1.0) as supervisor:
            service = await supervisor.start(
                "worker", ["orphaning"], environment={}, ready="ready:"
            )
            await service.ready()
            started = time.monotonic()
            with pytest.raises(ServiceExited, match="the worker exited"):
                await supervisor.watch()
            assert time.monotonic() - started < 3
            assert len(_group_members(service.pid)) == 1  # the orphan, until the stop
    assert _group_members(service.pid) == []


async def test_ready_fails_when_the_service_ends_first() -> None:
    async with asyncio.timeout(TIMEOUT):
        async with Supervisor(PROGRAM, sink=io.StringIO(), grace=0.5) as supervisor:
            service = await supervisor.start("early", ["early"], environment={}, ready="ready:")
            with pytest.raises(ServiceExited, match="exited \\(4\\)"):
                await service.ready()


async def test_a_service_ignoring_sigterm_is_killed_after_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(PROGRAM, sink=io.StringIO(), grace=0.5)
    service = await supervisor.start("stuck", ["stubborn"], environment={}, ready="ready:")
    await service.ready()
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT):
        await supervisor.stop()
    assert 0.5 <= time.monotonic() - started < 5
    assert service.process.returncode == -9
    assert "the stuck did not stop in time; killing it" in caplog.text
    assert supervisor.stopping
    with pytest.raises(RuntimeError):
        await supervisor.start("late", ["serve"], environment={}, ready="ready:")


async def test_kill_cuts_the_grace_period_short() -> None:
    supervisor = Supervisor(PROGRAM, sink=io.StringIO(), grace=60.0)
    service = await supervisor.start("stuck", ["stubborn"], environment={}, ready="ready:")
    await service.ready()
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT):
        stopping = asyncio.create_task(supervisor.stop())
        supervisor.kill()  # a second Ctrl-C while the stop waits
        await stopping
    assert time.monotonic() - started < 5
    assert _group_members(service.pid) == []
