"""The service processes of `llm-mesh up`: started, watched, logged and stopped by process group.

Each service is an `llm-mesh <command>` subprocess in its own session, so its process group is
its whole process tree (vLLM's engine-core child included) and a terminal's Ctrl-C reaches only
`llm-mesh up`, which then stops the services. Every line a service writes, on stdout or
stderr, is copied to one sink prefixed with the service's name (`[worker] ...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TextIO

__all__ = ["ServiceExited", "ServiceProcess", "Supervisor"]

logger = logging.getLogger(__name__)

#: The longest line a service may print before it is split (vLLM prints long config lines).
_LINE_LIMIT: Final = 1024 * 1024
#: How long an ended service's exit status is waited for (its pipes may stay open).
_REAP_TIMEOUT: Final = 1.0
#: How long the log pumps may take to drain once every process of a group is gone.
_DRAIN_TIMEOUT: Final = 5.0


class ServiceExited(Exception):
    """A service process ended on its own (not stopped by the supervisor)."""

    def __init__(self, name: str, returncode: int | None) -> None:
        if returncode is None:  # not reaped yet
            how = "exited"
        elif returncode < 0:
            how = f"was killed by signal {-returncode}"
        else:
            how = f"exited ({returncode})"
        super().__init__(f"the {name} {how}")
        self.name = name
        self.returncode = returncode


class ServiceProcess:
    """One running service: its process (the leader of its process group) and its ready line."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self._ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        #: Whether the process (the group's leader) has ended.
        self.exited = False

    @property
    def pid(self) -> int:
        """The process id, also its process group id."""
        return self.process.pid

    async def ready(self) -> str:
        """The line announcing the service serves; `ServiceExited` if it ended before."""
        return await asyncio.shield(self._ready)

    def _announce(self, line: str) -> None:
        if not self._ready.done():
            self._ready.set_result(line)

    def _ended(self, returncode: int | None) -> None:
        self.exited = True
        if not self._ready.done():
            self._ready.set_exception(ServiceExited(self.name, returncode))
            self._ready.exception()  # retrieved here: nobody may be waiting for it any more


class Supervisor:
    """Starts services and stops them all, last started first, when the context exits.

    `program` is the command that runs `llm-mesh` (its arguments follow). `watch` raises
    `ServiceExited` as soon as any service ends while the supervisor is not stopping them.
    Stopping sends SIGTERM to each service process (the group's leader, not its children: a
    service stops its own children in its own order, as the worker does vLLM's engine core,
    which would otherwise die under it mid-shutdown), gives them `grace` seconds together, then
    SIGKILLs what is left of every group (also members that outlived their leader). `kill`
    skips the rest of the grace period.
    """

    def __init__(self, program: Sequence[str], *, sink: TextIO, grace: float) -> None:
        self._program = list(program)
        self._sink = sink
        self._grace = grace
        self._services: list[ServiceProcess] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._exited = asyncio.Event()
        self._killing = asyncio.Event()
        self.stopping = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(
        self, name: str, arguments: Sequence[str], *, environment: Mapping[str, str], ready: str
    ) -> ServiceProcess:
        """Starts `llm-mesh ARGUMENTS`; its first stdout line starting with `ready` is the
        service's ready line."""
        if self.stopping:
            raise RuntimeError("the supervisor is stopping")
        process = await asyncio.create_subprocess_exec(
            *self._program,
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(environment),
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        service = ServiceProcess(name, process)
        self._services.append(service)
        assert process.stdout is not None and process.stderr is not None
        self._spawn(self._pump(service, process.stdout, ready))
        self._spawn(self._pump(service, process.stderr, None))
        self._spawn(self._await_exit(service))
        return service

    async def watch(self) -> None:
        """Returns never; raises `ServiceExited` when a service ends unasked."""
        while True:
            await self._exited.wait()
            self._exited.clear()
            for service in self._services:
                if service.exited and not self.stopping:
                    exited = ServiceExited(service.name, service.process.returncode)
                    logger.error("%s: stopping the mesh", exited)
                    raise exited

    def kill(self) -> None:
        """Ends the grace period of a stop now (a second Ctrl-C)."""
        self._killing.set()

    async def stop(self) -> None:
        """Stops every service (see the class); idempotent."""
        self.stopping = True
        running = [service for service in self._services if service.process.returncode is None]
        for service in reversed(running):
            logger.debug("SIGTERM to the %s (pid %d)", service.name, service.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
        if running:
            all_exited = asyncio.gather(*(service.process.wait() for service in running))
            killing = asyncio.create_task(self._killing.wait())
            waiters: list[asyncio.Future[Any]] = [all_exited, killing]
            try:
                await asyncio.wait(
                    waiters, timeout=self._grace, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                killing.cancel()
                all_exited.cancel()
        for service in self._services:
            if service.process.returncode is None:
                logger.warning("the %s did not stop in time; killing it", service.name)
            # Also when the leader is gone: its children (vLLM's engine core) may not be.
            _signal_group(service.pid, signal.SIGKILL)
        for service in self._services:
            await service.process.wait()
        # The pumps end at end of file, once no process of the group holds its pipes.
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=_DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, service: ServiceProcess, stream: asyncio.StreamReader, ready: str | None
    ) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over _LINE_LIMIT: the reader dropped it
                self._write(service.name, "(an over-long line was dropped)")
                continue
            if not raw:
                return
            # A progress bar redraws its line after each carriage return: keep what a
            # terminal would end up showing.
            line = raw.decode(errors="replace").rstrip("\r\n").rpartition("\r")[2]
            if ready is not None and line.startswith(ready):
                service._announce(line)
            self._write(service.name, line)

    async def _await_exit(self, service: ServiceProcess) -> None:
        await _leader_exit(service.process)
        if service.process.returncode is None:
            # Reaped and its pipes closed in a moment, unless a child holds them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_TIMEOUT):
                    await service.process.wait()
        service._ended(service.process.returncode)
        if self.stopping:
            logger.info("the %s stopped (exit status %s)", service.name, service.process.returncode)
        else:
            self._exited.set()

    def _write(self, name: str, line: str) -> None:
        self._sink.write(f"[{name}] {line}\n")
        self._sink.flush()


async def _leader_exit(process: asyncio.subprocess.Process) -> None:
    """Returns when the process itself has ended.

    `Process.wait()` also waits until its pipes close, which a child that outlives it (vLLM's
    engine core) can delay indefinitely; a pidfd turns readable as soon as the process ends.
    """
    try:
        descriptor = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd (not Linux), or the process is already gone
        if process.returncode is None:
            await process.wait()
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(descriptor, readable)
    try:
        await ended
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
