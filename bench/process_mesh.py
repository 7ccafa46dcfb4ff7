"""The processes of a mesh under test: servers started, watched and stopped as process groups.

The benchmarks (`bench/stack.py`, `bench/stress.py`) and the tests' harnesses (`tests/faults`,
`tests/integration`) all start `llm-mesh` services — and the benchmarks other servers (the
fake upstream, LiteLLM, vLLM's own server) — the same way:

- `start_process` runs a program as the leader of a new process group (vLLM's engine core and
  LiteLLM's workers are its descendants), copies its stdout and stderr line by line into the
  service's own log file for its whole life, and returns once it printed its ready line — or
  at once for a server that prints none, whose health URL `ServiceProcess.wait_http_ok` then
  polls. The copy runs in a thread of its own: a test that blocks the event loop (a
  synchronous HTTP client) must not leave the pipe full and the service stuck on a log line;
- `ServiceProcess.metrics` scrapes its Prometheus `/metrics` (`sample_sum` selects samples),
  `rss` and `pids` measure it with its descendants;
- `ServiceProcess.stop` signals the group (SIGTERM), SIGKILLs it after a grace period, and
  raises `OrphanedProcesses` when a member or a descendant outlives it. Zombies do not count:
  this machine's init never reaps orphans, and a zombie is gone.

Another process's state (its metrics, its readiness, the broker's queues) offers no event to
await: `wait_until` polls it, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "LLM_MESH",
    "OrphanedProcesses",
    "ServiceExited",
    "ServiceProcess",
    "assert_no_vllm_engine",
    "sample_sum",
    "scrape_metrics",
    "start_process",
    "vllm_engines",
    "wait_until",
]

#: The `llm-mesh` command of this interpreter's environment.
LLM_MESH: Final = str(Path(sys.executable).with_name("llm-mesh"))
#: Default bounds: a start (imports, broker connection), a wait on another process's state, a
#: graceful stop, and the exit of a stopped group's last members.
START_TIMEOUT: Final = 60.0
WAIT_TIMEOUT: Final = 15.0
STOP_GRACE: Final = 20.0
GONE_TIMEOUT: Final = 10.0
_POLL_INTERVAL: Final = 0.05


class ServiceExited(RuntimeError):
    """The process ended before it was ready."""


class OrphanedProcesses(AssertionError):
    """Processes outlived their stopped group (they were killed then)."""


async def wait_until(predicate: Callable[[], Any], *, within: float = WAIT_TIMEOUT) -> None:
    """Polls until `predicate` (sync or async) holds; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            value = predicate()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return
            await asyncio.sleep(_POLL_INTERVAL)


async def scrape_metrics(url: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint: `name{label="value",...}` (sorted labels) →
    value."""
    async with httpx.AsyncClient() as http:
        response = await http.get(url, timeout=5)
    response.raise_for_status()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def sample_sum(samples: Mapping[str, float], selector: str) -> float:
    """The sum of the samples a selector names (0 when none): `name` alone sums every label
    set, `name{label="value",...}` those that have these labels (and maybe others)."""
    base, _, wanted_labels = selector.partition("{")
    wanted = set(_LABEL.findall(wanted_labels))
    total = 0.0
    for sample, value in samples.items():
        name, _, labels = sample.partition("{")
        if name == base and wanted <= set(_LABEL.findall(labels)):
            total += value
    return total


_LABEL: Final = re.compile(r'\w+="[^"]*"')


@dataclass
class ServiceProcess:
    """A running process, leader of its own process group, and the line it announced."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    ready_line: str = ""
    _copier: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def fields(self) -> dict[str, str]:
        """The `key=value` pairs of the ready line."""
        return dict(re.findall(r"(\w+)=(\S+)", self.ready_line))

    @property
    def http_url(self) -> str:
        """The base URL of its HTTP listener: the ready line's `http=`, or else what follows
        `ready:` (the gateway announces its URL alone)."""
        value = self.fields.get("http") or self.ready_line.split("ready:", 1)[1].strip()
        return (value if value.startswith("http") else f"http://{value}").rstrip("/")

    @property
    def grpc_target(self) -> str:
        """The ready line's `grpc=` (a scheduler's gRPC address)."""
        return self.fields["grpc"]

    async def metrics(self) -> dict[str, float]:
        """Every sample of its `/metrics` (see `scrape_metrics`)."""
        return await scrape_metrics(f"{self.http_url}/metrics")

    async def metric(self, selector: str) -> float:
        """The sum of the samples `selector` names (see `sample_sum`)."""
        return sample_sum(await self.metrics(), selector)

    async def wait_metric(
        self, selector: str, predicate: Callable[[float], bool], *, within: float = WAIT_TIMEOUT
    ) -> float:
        """Polls `metric(selector)` until `predicate` holds; returns its value."""
        value = 0.0

        async def holds() -> bool:
            nonlocal value
            value = await self.metric(selector)
            return predicate(value)

        await wait_until(holds, within=within)
        return value

    async def probe(self, path: str) -> int:
        """The status of `GET <http_url><path>` (e.g. `/readyz`)."""
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.http_url}{path}", timeout=5)).status_code

    async def wait_http_ok(
        self, url: str, *, within: float = START_TIMEOUT, verify: ssl.SSLContext | bool = True
    ) -> None:
        """Polls `url` until it answers 200; `ServiceExited` if the process ends first."""
        async with httpx.AsyncClient(timeout=5, verify=verify) as http:

            async def answers() -> bool:
                if self.process.returncode is not None:
                    raise ServiceExited(
                        f"{self.name} exited ({self.process.returncode}); see {self.log}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(url)).status_code == 200
                return False

            await wait_until(answers, within=within)

    def members(self) -> list[psutil.Process]:
        """The live members of its process group, and its live descendants (which may have
        left the group)."""
        found = {process.pid: process for process in _live_group(self.pid)}
        for process in _descendants(self.pid):
            if _alive(process):
                found.setdefault(process.pid, process)
        return list(found.values())

    def pids(self) -> list[int]:
        return [process.pid for process in self.members()]

    def rss(self) -> int:
        """Resident memory of `members`, in bytes."""
        total = 0
        for member in self.members():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        return total

    def listening(self) -> list[tuple[str, int]]:
        """The (address, port) of every socket its `members` listen on."""
        bound = []
        for member in self.members():
            with contextlib.suppress(psutil.NoSuchProcess):
                for connection in member.net_connections(kind="inet"):
                    if connection.status == psutil.CONN_LISTEN:
                        bound.append((connection.laddr.ip, connection.laddr.port))
        return bound

    def signal_group(self, signum: int) -> None:
        """Sends `signum` to the whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crash, no goodbye."""
        self.signal_group(signal.SIGKILL)

    async def wait(self, within: float) -> int:
        """Waits up to `within` seconds for the leader to exit; returns its exit status."""
        async with asyncio.timeout(within):
            return await self.process.wait()

    async def stop(self, signum: int = signal.SIGTERM, *, grace: float = STOP_GRACE) -> int:
        """Sends `signum` to the group, SIGKILL after `grace` seconds; returns the leader's
        exit status once no member or descendant is left (`OrphanedProcesses` names and
        kills those still alive `GONE_TIMEOUT` seconds after the leader's exit)."""
        # Taken while it runs: descendants that left the group must go too.
        descendants = _descendants(self.pid)
        if self.process.returncode is None:
            self.signal_group(signum)
            try:
                await self.wait(grace)
            except TimeoutError:
                self.kill()
                await self.process.wait()
        survivors = await _survivors(self.pid, descendants)
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if self._copier is not None:
            # Its output ends when the last process holding the pipe is gone.
            await asyncio.to_thread(self._copier.join, GONE_TIMEOUT)
        if survivors:
            raise OrphanedProcesses(
                f"{self.name} (group {self.pid}) left {sorted(p.pid for p in survivors)}"
            )
        status = self.process.returncode
        assert status is not None
        return status


async def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    environment: Mapping[str, str] | None = None,
    ready: str | None = None,
    start_timeout: float = START_TIMEOUT,
) -> ServiceProcess:
    """Starts `argv` as the leader of a new process group with `environment` (default: this
    process's), its stdout and stderr appended to `log` for its whole life.

    With `ready`, returns once it printed a line starting with it (`ready_line`), within
    `start_timeout` seconds, or raises (`ServiceExited` if it ended first) after killing its
    group; without, returns at once.
    """
    reader, writer = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(os.environ if environment is None else environment),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=writer,
            stderr=writer,
            start_new_session=True,
        )
    except BaseException:
        os.close(reader)
        raise
    finally:
        os.close(writer)
    service = ServiceProcess(name, process, log)
    loop = asyncio.get_running_loop()
    announced: asyncio.Future[str] = loop.create_future()
    exited = ServiceExited(f"{name} exited before it was ready; see {log}")
    service._copier = threading.Thread(
        target=_copy_output,
        args=(reader, log, ready, lambda line: _settle(loop, announced, line, exited)),
        name=f"{name} output",
        daemon=True,
    )
    service._copier.start()
    if ready is None:
        return service
    try:
        async with asyncio.timeout(start_timeout):
            service.ready_line = await announced
    except BaseException:
        service.kill()
        await process.wait()
        await asyncio.to_thread(service._copier.join, GONE_TIMEOUT)
        raise
    return service


def _copy_output(
    reader: int, log: Path, ready: str | None, settle: Callable[[str | None], None]
) -> None:
    """In a thread: appends every line read from the `reader` pipe to `log`; `settle`s the line
    that starts with `ready` when it comes, and None when the output ends before it."""
    with open(reader, "rb") as output, log.open("ab") as copy:
        for line in output:
            copy.write(line)
            copy.flush()
            if ready is not None:
                text = line.decode(errors="replace")
                if text.startswith(ready):
                    settle(text.strip())
                    ready = None
    if ready is not None:
        settle(None)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[str],
    line: str | None,
    exited: ServiceExited,
) -> None:
    """From the copying thread: resolves `future` with the ready line, or fails it with
    `exited` (None: the output ended first)."""

    def resolve() -> None:
        if future.done():
            return
        if line is None:
            future.set_exception(exited)
        else:
            future.set_result(line)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits anymore
        loop.call_soon_threadsafe(resolve)


def vllm_engines() -> list[psutil.Process]:
    """Live vLLM engine processes descended from this one (an in-process engine's children,
    or a worker subprocess's). vLLM titles them `VLLM::EngineCore`, `VLLM::Worker`."""
    engines = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and any(
                part.startswith("VLLM::") for part in process.cmdline()
            ):
                engines.append(process)
        except psutil.NoSuchProcess:
            continue
    return engines


def assert_no_vllm_engine(starting: str) -> None:
    """Fails when a vLLM engine already runs below this process: two do not fit two cores."""
    running = vllm_engines()
    assert not running, (
        f"{starting} would be a second vLLM engine beside {[p.pid for p in running]}"
    )


def _live_group(group: int) -> list[psutil.Process]:
    """The non-zombie processes of a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _survivors(group: int, descendants: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Waits up to `GONE_TIMEOUT` for the group's members and `descendants` to be gone;
    returns those still alive then."""
    snapshot = list(descendants)
    left: list[psutil.Process] = []

    def gone() -> bool:
        nonlocal left
        left = [*_live_group(group), *(p for p in snapshot if _alive(p))]
        return not left

    with contextlib.suppress(TimeoutError):
        await wait_until(gone, within=GONE_TIMEOUT)
    return list({process.pid: process for process in left}.values())
