"""Workers serving a model from S3 (`LLM_MESH_WORKER_MODEL_SOURCE=s3`).

A small fake model is pushed to a SeaweedFS server of this module's own (so it can be
stopped); a synthetic worker on an empty cache pulls it before it reports ready and serves it
(its `config.json` sets the context), and a second start with the server stopped uses the
cache. With the vLLM engine, the converted SmolLM2-135M goes through S3 the same way.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from request_path_harness import Mesh, chat, kinds, status_details

from bench.process_mesh import assert_no_vllm_engine
from plumbing.model_manifest import ModelManifest
from plumbing.model_store import ModelStore, local_models_dir
from plumbing.s3_client import connect_s3
from plumbing.s3_server import S3Server
from plumbing.settings import MeshSettings
from scheduler.server import SchedulerServer

MODEL = "pulled-model"
CONTEXT = 64
LLM_MESH = Path(sys.executable).with_name("llm-mesh")
WAIT = 30.0
#: A vLLM worker loads its model in ~20 s on two cores; leave room for a busy machine.
VLLM_START_TIMEOUT = 240.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def storage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """This module's own S3 server; tests may stop it (stopping twice is fine)."""
    server = S3Server(tmp_path_factory.mktemp("models-s3"))
    async with server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scheduler(mesh: Mesh) -> SchedulerServer:
    return await mesh.start_scheduler()


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory as a push sees it: a config, a tokenizer and some weights."""
    directory = tmp_path_factory.mktemp("fake-model")
    (directory / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": CONTEXT})
    )
    (directory / "tokenizer.json").write_bytes(os.urandom(64 * 1024))
    (directory / "model.safetensors").write_bytes(os.urandom(2 * 1024 * 1024))
    return directory


def _worker_env(storage: dict[str, str], data_dir: Path) -> dict[str, str]:
    return {
        **storage,
        "LLM_MESH_DATA_DIR": str(data_dir),
        "LLM_MESH_WORKER_MODEL_SOURCE": "s3",
        "LLM_MESH_WORKER_MODEL_REVISION": "latest",
    }


async def _serves(mesh: Mesh, scheduler: SchedulerServer) -> None:
    """The worker answers, with the context its pulled `config.json` sets."""
    client = mesh.client(scheduler)
    async with asyncio.timeout(WAIT):
        events = [event async for event in client.generate(chat(model=MODEL, max_tokens=3))]
        models = {model.name: model for model in await client.list_models()}
    assert kinds(events)[-1] == "generation_finish" and "error" not in kinds(events)
    assert models[MODEL].max_context == CONTEXT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(WAIT):
            _ = [e async for e in client.generate(chat("word " * CONTEXT, model=MODEL))]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status_details(raised.value).details)
    assert info.reason == "CONTEXT_LENGTH_EXCEEDED"


async def test_a_worker_pulls_a_pushed_model_then_starts_from_its_cache_without_storage(
    mesh: Mesh,
    scheduler: SchedulerServer,
    storage: S3Server,
    fake_model: Path,
    tmp_path: Path,
) -> None:
    manifest = await ModelStore(connect_s3(storage.mesh_settings())).push(
        fake_model, MODEL, engine="synthetic"
    )
    data_dir = tmp_path / "node"
    env = _worker_env(storage.environment(), data_dir)

    first = await mesh.start_worker(MODEL, scheduler=scheduler, env=env)

    cached = _cached_dir(data_dir, manifest)
    names = sorted(file.path for file in manifest.files)
    assert sorted(path.name for path in cached.iterdir()) == names
    assert filecmp.cmpfiles(fake_model, cached, names, shallow=False)[1:] == ([], [])
    await _serves(mesh, scheduler)
    await first.stop()

    await storage.stop()
    second = await mesh.start_worker(MODEL, scheduler=scheduler, env=env)

    await _serves(mesh, scheduler)
    await second.stop()


async def test_a_worker_with_an_empty_cache_and_storage_down_exits_with_a_clear_error(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        # Nothing listens on port 1: storage refuses connections.
        **_worker_env({"LLM_MESH_S3_ENDPOINT": "127.0.0.1:1"}, tmp_path / "node"),
        "LLM_MESH_WORKER_HTTP_BIND": "127.0.0.1:0",
    }
    process = await asyncio.create_subprocess_exec(
        str(LLM_MESH),
        "worker",
        "--engine=synthetic",
        f"--model={MODEL}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    async with asyncio.timeout(WAIT):
        stdout, stderr = await process.communicate()
    assert process.returncode == 1
    assert stdout == b""  # Never ready.
    assert f"model {MODEL} not available" in stderr.decode()


@pytest.mark.vllm
async def test_the_default_model_pushed_to_s3_is_served_by_the_vllm_engine(
    mesh: Mesh, scheduler: SchedulerServer, model_data_dir: Path, tmp_path: Path
) -> None:
    """This module's own engine (tests/integration/conftest.py runs it before the shared one)."""
    from worker.model_source import DEFAULT_MODEL_NAME, prepare_packaged_model

    converted = await asyncio.to_thread(prepare_packaged_model, model_data_dir)
    assert_no_vllm_engine("the vLLM worker serving the model pulled from S3")
    async with S3Server(tmp_path / "s3") as server:
        manifest = await ModelStore(connect_s3(server.mesh_settings())).push(
            converted, DEFAULT_MODEL_NAME
        )
        data_dir = tmp_path / "node"
        worker = await mesh.start_worker(
            DEFAULT_MODEL_NAME,
            scheduler=scheduler,
            # vLLM logs to stdout unless told not to; nobody reads it after the ready line.
            env={**_worker_env(server.environment(), data_dir), "VLLM_CONFIGURE_LOGGING": "0"},
            engine="vllm",
            capacity=2,
            start_timeout=VLLM_START_TIMEOUT,
        )
    try:
        client = mesh.client(scheduler)
        request = chat("Name a colour.", model=DEFAULT_MODEL_NAME, max_tokens=8, seed=1)
        async with asyncio.timeout(VLLM_START_TIMEOUT):
            events = [event async for event in client.generate(request)]
        assert kinds(events)[-1] == "generation_finish" and "error" not in kinds(events)
        text = "".join(e.sequence_delta.text for e in events if e.HasField("sequence_delta"))
        assert text.strip()
        assert events[-1].generation_finish.usage.completion_tokens > 0
        assert _cached_dir(data_dir, manifest).is_dir()
    finally:
        await worker.stop()  # Asserts the engine-core process went with it.


def _cached_dir(data_dir: Path, manifest: ModelManifest) -> Path:
    return local_models_dir(MeshSettings(data_dir=data_dir)) / manifest.name / manifest.revision
