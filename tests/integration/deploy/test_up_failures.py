"""`llm-mesh up` across runs and when things go wrong: a service dies, the port is taken."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest
from broker_inspector import BrokerInspector
from up_process import (
    LLM_MESH,
    SERVICES_STOPPED_CLEANLY,
    UpProcess,
    live_members,
)

from plumbing.keystore import Keystore

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_dying_service_stops_the_mesh_with_an_error(tmp_path: Path) -> None:
    up = await UpProcess.start(tmp_path, ["--engine", "synthetic", "--port", "0"])
    try:
        os.killpg(up.service_pid("worker"), signal.SIGKILL)
        assert await up.wait() == 1, up.tail()
        assert "llm-mesh up failed: the worker was killed by signal 9" in up.tail()
        assert live_members(up.groups) == [], up.tail()
        assert await BrokerInspector(up.prefix).queue_names() == set()
    finally:
        await up.close()


async def test_the_dev_key_is_created_once_and_reused(tmp_path: Path) -> None:
    """(A revoked or unknown stored key is replaced: tests/unit/meshctl/test_stored_keys.py.)"""
    first = await UpProcess.start(tmp_path, ["--engine", "synthetic", "--port", "0"])
    try:
        first.process.send_signal(signal.SIGTERM)
        assert await first.wait() == 0, first.tail()
        assert first.stop_statuses() == SERVICES_STOPPED_CLEANLY, first.tail()
        assert first.stop_errors() == [], first.tail()
    finally:
        await first.close()
    second = await UpProcess.start(tmp_path, ["--engine", "synthetic", "--port", "0"])
    try:
        assert second.api_key == first.api_key
        second.process.send_signal(signal.SIGINT)
        assert await second.wait() == 0, second.tail()
    finally:
        await second.close()
    keystore = Keystore.open(f"sqlite:///{tmp_path / 'data' / 'llm-mesh.sqlite3'}")
    try:
        owners = sorted((key.owner, key.service) for key in keystore.list_keys())
    finally:
        keystore.close()
    assert owners == [("dev", False), ("llm-mesh-up-gateway", True)]
    assert (tmp_path / "data" / "dev-api-key").stat().st_mode & 0o777 == 0o600


async def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            LLM_MESH,
            "up",
            "--port",
            str(port),
            env={**os.environ, "LLM_MESH_DATA_DIR": str(tmp_path / "data")},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    assert process.returncode == 1
    assert stdout == b""
    assert f"127.0.0.1:{port} is already in use" in stderr.decode()
    assert "--port 0" in stderr.decode()
    assert not (tmp_path / "data").exists()
