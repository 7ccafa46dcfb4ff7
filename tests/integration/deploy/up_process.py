"""`llm-mesh up` as a subprocess, for the tests of this directory (a unique module name: test
directories are not packages).

`UpProcess.start` runs `llm-mesh up` in its own session with its own data directory and broker
prefix, its stderr in a log file, and returns once it printed `URL:` and `API key:`. The
process helpers read `/proc` to find `up`'s service groups and what is left of them, and every
process of one run wherever it went (they all inherit its broker prefix).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshctl._local_broker import delete_stack
from plumbing.topology import Topology

LLM_MESH = str(Path(sys.executable).with_name("llm-mesh"))
MODEL = "smollm2-135m"
#: Bounds: the synthetic mesh is up in a few seconds (the vLLM one: `VLLM_START_TIMEOUT`);
#: stopping is bounded by `up` itself.
START_TIMEOUT = 120.0
#: A cold start converts the packaged model (~20-40 s) and loads vLLM (~20 s) on busy cores.
VLLM_START_TIMEOUT = 600.0
_GRPC_LINE = "gRPC (scheduler, same key): "
#: What `up` logs when a signal starts its stop, and when it saw a service end meanwhile.
_STOPPING_LINE = "meshctl.up: stopping (Ctrl-C again"
_STOPPED_SERVICE = re.compile(r"the (\w+) stopped \(exit status (-?\d+)\)")
#: A log record at level ERROR, in the services' format and in vLLM's.
_ERROR_RECORD = re.compile(r"\bERROR\b")
STOP_TIMEOUT = 40.0
#: `UpProcess.stop_statuses()` of a run whose services all stopped gracefully when asked.
SERVICES_STOPPED_CLEANLY = {"scheduler": 0, "worker": 0, "gateway": 0}


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live or zombie process, None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces: split after the last one.
    state, parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(parent), int(group)


def processes() -> dict[int, tuple[str, int, int]]:
    """Every process: pid → (state, parent pid, process group)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def command_line(pid: int) -> list[str]:
    """The arguments a process was started with (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def live_members(groups: set[int]) -> list[int]:
    """Processes of `groups` that still run (zombies, reaped by nobody here, do not count)."""
    return [
        pid
        for pid, (state, _parent, group) in processes().items()
        if group in groups and state != "Z"
    ]


def processes_of_run(prefix: str) -> list[str]:
    """The live processes (pid and command) whose environment holds the run's broker prefix:
    `up`, its services, their children (vLLM's engine core) and SeaweedFS, even orphaned."""
    marker = f"LLM_MESH_BROKER_PREFIX={prefix}".encode()
    found = []
    for pid, (state, _parent, _group) in processes().items():
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and marker in environment:
            found.append(f"{pid} {' '.join(command_line(pid))}")
    return found


@dataclass
class UpProcess:
    """A running `llm-mesh up`, what it printed, and every process group it made."""

    process: asyncio.subprocess.Process
    log: Path
    prefix: str
    environment: dict[str, str]
    url: str = ""
    api_key: str = ""
    grpc_target: str = ""
    #: Everything `up` printed on stdout once it was ready.
    banner: str = ""
    groups: set[int] = field(default_factory=set)

    @classmethod
    async def start(
        cls,
        directory: Path,
        arguments: Sequence[str],
        *,
        settings: Mapping[str, str] | None = None,
        model_cache: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> UpProcess:
        """Starts `llm-mesh up ARGUMENTS` with extra environment `settings`; returns once it
        printed its URL and key (within `start_timeout` seconds).

        `model_cache`: a data directory whose `models/` (the converted model) `up` shares,
        so a converted model is reused; everything else stays in `directory`. The caller must
        `close()` it; when this raises, it has closed it.
        """
        prefix = f"test-{uuid.uuid4().hex[:8]}."
        data_dir = directory / "data"
        if model_cache is not None:
            (model_cache / "models").mkdir(parents=True, exist_ok=True)
            data_dir.mkdir(parents=True)
            (data_dir / "models").symlink_to(model_cache / "models", target_is_directory=True)
        environment = {
            **os.environ,
            **(settings or {}),
            "LLM_MESH_DATA_DIR": str(data_dir),
            "LLM_MESH_BROKER_PREFIX": prefix,
        }
        log = directory / "up.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                LLM_MESH,
                "up",
                *arguments,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=environment,
                start_new_session=True,
            )
        up = cls(process, log, prefix, environment, groups={process.pid})
        try:
            await up._read_banner(start_timeout)
        except BaseException:
            await up.close()
            raise
        up._collect_groups()
        return up

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self) -> str:
        """The end of `up`'s log, for failure messages."""
        return self.log.read_text(errors="replace")[-6000:]

    def stop_phase(self) -> str:
        """`up`'s log from the line saying it stops on a signal (empty when it never did)."""
        log = self.log.read_text(errors="replace")
        start = log.find(_STOPPING_LINE)
        return "" if start < 0 else log[log.rfind("\n", 0, start) + 1 :]

    def stop_statuses(self) -> dict[str, int]:
        """The exit status of each service that `up` saw stop, by service name."""
        return {name: int(status) for name, status in _STOPPED_SERVICE.findall(self.stop_phase())}

    def stop_errors(self) -> list[str]:
        """The lines of the stop phase that report an error: `ERROR` log records (the
        services' and vLLM's) and tracebacks."""
        return [
            line
            for line in self.stop_phase().splitlines()
            if _ERROR_RECORD.search(line) or "Traceback (most recent call last)" in line
        ]

    def service_pid(self, command: str) -> int:
        """The pid of the `llm-mesh COMMAND` service (`scheduler`, `worker`, `gateway`)."""
        for pid, (_state, parent, _group) in processes().items():
            if parent == self.pid and command in command_line(pid):
                return pid
        raise LookupError(f"no {command} among the children of {self.pid}")

    async def wait(self) -> int:
        """Waits (bounded) until `up` ended; its exit status."""
        async with asyncio.timeout(STOP_TIMEOUT):
            return await self.process.wait()

    async def close(self) -> None:
        """Kills whatever is left (after a failed test) and deletes the prefix's broker objects."""
        self._collect_groups()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.returncode is None:
            await self.process.wait()
        await delete_stack(
            self.environment.get("LLM_MESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            Topology(self.prefix),
            [MODEL],
        )

    def _collect_groups(self) -> None:
        """Adds the groups of `up`'s children: SeaweedFS, scheduler, worker and gateway."""
        self.groups |= {
            group for _state, parent, group in processes().values() if parent == self.pid
        }

    async def _read_banner(self, limit: float) -> None:
        assert self.process.stdout is not None
        async with asyncio.timeout(limit):
            while "Press Ctrl-C to stop." not in self.banner:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    pytest.fail(f"llm-mesh up ended before it printed the key:\n{self.tail()}")
                self.banner += line
                if line.startswith("URL: "):
                    self.url = line.removeprefix("URL: ").strip()
                elif line.startswith("API key: "):
                    self.api_key = line.removeprefix("API key: ").strip()
                elif line.startswith(_GRPC_LINE):
                    self.grpc_target = line.removeprefix(_GRPC_LINE).strip()
