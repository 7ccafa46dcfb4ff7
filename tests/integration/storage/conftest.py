"""A real SeaweedFS S3 server for the session (free loopback ports, generated credentials),
and, for the request-path tests with storage, a broker prefix and a `Mesh` per test module.

The `Mesh` (in-process schedulers, synthetic worker subprocesses) is the request-path tests'
harness; test directories are not packages, so its directory is put on `sys.path` here.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from minio import Minio

from plumbing.s3_client import connect_s3
from plumbing.s3_server import S3Server

sys.path.insert(0, str(Path(__file__).parents[1] / "request_path"))
from broker_inspector import BrokerInspector
from request_path_harness import Mesh


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def s3_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """One `weed mini` for the whole session; stopped (process group gone) at the end."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    async with server:
        pid = server.pid
        yield server
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


@pytest.fixture
def s3_client(s3_server: S3Server) -> Minio:
    """A client of the session server, with the default timeouts."""
    return connect_s3(s3_server.mesh_settings())


@pytest.fixture
def bucket() -> str:
    """A bucket name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small synthetic model: a few files, one of them multi-part sized (> 16 MiB)."""
    directory = tmp_path / "model-src"
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (directory / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(3 * 1024 * 1024))
    (directory / "model.safetensors").write_bytes(os.urandom(18 * 1024 * 1024))
    (directory / "generation_config.json").write_text("{}")
    return directory


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(
    broker: BrokerInspector, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    """The module's schedulers and workers, all stopped at the end."""
    mesh = Mesh(broker.prefix, tmp_path_factory.mktemp("storage-mesh"))
    try:
        yield mesh
    finally:
        await mesh.aclose()
