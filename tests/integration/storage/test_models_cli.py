"""`llm-mesh models push|list|pull|rm` as a user runs it, against the session's SeaweedFS."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from plumbing.s3_server import S3Server

LLM_MESH = Path(sys.executable).with_name("llm-mesh")
CLI_TIMEOUT_SECONDS = 60.0


def run_cli(server: S3Server, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **server.environment(), "LLM_MESH_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(LLM_MESH), "models", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def test_push_list_pull_rm(s3_server: S3Server, model_dir: Path, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"

    pushed = run_cli(
        s3_server, data_dir, "push", str(model_dir), "--name", name, "--revision", "r1"
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"{name} r1: 4 files" in pushed.stdout

    listed = run_cli(s3_server, data_dir, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(row for row in map(str.split, listed.stdout.splitlines()) if row[:1] == [name])
    assert row[:2] == [name, "r1"]
    assert "safetensors" in row

    pulled = run_cli(s3_server, data_dir, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    local = Path(pulled.stdout.strip())
    assert local == data_dir / "models" / "_s3" / name / "r1"
    for source in model_dir.rglob("*"):
        if source.is_file():
            assert (local / source.relative_to(model_dir)).read_bytes() == source.read_bytes()

    removed = run_cli(s3_server, data_dir, "rm", name, "--revision", "r1")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"deleted {name} r1"
    assert name not in run_cli(s3_server, data_dir, "list", name).stdout


def test_errors_are_one_line_and_exit_1(s3_server: S3Server, tmp_path: Path) -> None:
    missing = run_cli(s3_server, tmp_path, "pull", f"missing-{uuid.uuid4().hex[:8]}")
    assert missing.returncode == 1
    assert missing.stderr.startswith("llm-mesh models pull: no model missing-")
    assert missing.stderr.count("\n") == 1

    not_a_dir = run_cli(s3_server, tmp_path, "push", str(tmp_path / "nothing"), "--name", "x")
    assert not_a_dir.returncode == 1
    assert "is not a directory" in not_a_dir.stderr
