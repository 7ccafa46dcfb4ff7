"""ModelStore against a real SeaweedFS: push, list, rm, and the node-local cache."""

from __future__ import annotations

import asyncio
import filecmp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from threading import Barrier

import pytest
from minio import Minio

from plumbing.model_manifest import ModelManifest
from plumbing.model_store import ModelStore
from plumbing.object_store import PayloadStore
from plumbing.s3_client import S3Timeouts, connect_s3
from plumbing.s3_server import S3Server
from plumbing.settings import MeshSettings
from plumbing.storage_errors import (
    ModelNotFound,
    ModelRevisionExists,
    StorageUnavailable,
)
from plumbing.transfer import TransferProgress

#: Bounds every wait on a thread or a child process in these tests.
WAIT_SECONDS = 60.0


class Recorder:
    """Collects progress steps (called from transfer threads)."""

    def __init__(self) -> None:
        self.steps: list[TransferProgress] = []

    def __call__(self, step: TransferProgress) -> None:
        self.steps.append(step)

    def downloaded(self) -> dict[str, int]:
        """Bytes fetched over the network per file."""
        fetched: dict[str, int] = {}
        for step in self.steps:
            if not step.cached:
                fetched[step.path] = fetched.get(step.path, 0) + step.nbytes
        return fetched


def assert_same_tree(local: Path, source: Path) -> None:
    source_files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    local_files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert local_files == source_files
    _, mismatch, errors = filecmp.cmpfiles(source, local, source_files, shallow=False)
    assert (mismatch, errors) == ([], [])


def sizes(manifest: ModelManifest) -> dict[str, int]:
    return {file.path: file.size for file in manifest.files}


async def test_push_list_pull_rm(
    s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    pushed = Recorder()

    manifest = await store.push(model_dir, "tiny", progress=pushed)

    assert manifest.format == "safetensors"
    assert sizes(manifest)["model.safetensors"] == 18 * 1024 * 1024
    assert pushed.steps[-1].done == pushed.steps[-1].total == manifest.total_size
    assert [(m.name, m.revision) for m in await store.list()] == [("tiny", manifest.revision)]
    assert await store.manifest("tiny") == manifest

    pulled = Recorder()
    local = await store.ensure_local("tiny", cache_dir=tmp_path / "cache", progress=pulled)

    assert local == tmp_path / "cache" / "tiny" / manifest.revision
    assert_same_tree(local, model_dir)
    assert pulled.downloaded() == sizes(manifest)

    assert await store.rm("tiny") == [manifest.revision]
    assert await store.list() == []
    with pytest.raises(ModelNotFound):
        await store.rm("tiny")
    with pytest.raises(ModelNotFound):
        await store.ensure_local("tiny", cache_dir=tmp_path / "other-cache")


async def test_revisions_are_immutable_and_pushes_idempotent(
    s3_client: Minio, bucket: str, model_dir: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    first = await store.push(model_dir, "tiny", "v1")
    again = Recorder()

    assert await store.push(model_dir, "tiny", "v1", progress=again) == first
    assert again.steps == []  # nothing uploaded the second time

    (model_dir / "config.json").write_text('{"changed": true}')
    with pytest.raises(ModelRevisionExists):
        await store.push(model_dir, "tiny", "v1")
    second = await store.push(model_dir, "tiny", "v2")

    assert [m.revision for m in await store.list("tiny")] == ["v1", "v2"]
    assert (await store.manifest("tiny")).revision in {"v1", "v2"}
    assert await store.rm("tiny", "v1") == ["v1"]
    assert await store.list("tiny") == [second]
    with pytest.raises(ValueError):
        await store.push(model_dir, "tiny", "latest")
    with pytest.raises(ValueError):
        await store.push(model_dir, "../escape")


async def test_damaged_cache_is_repaired_and_resumed(
    s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    manifest = await store.push(model_dir, "tiny")
    cache = tmp_path / "cache"
    local = await store.ensure_local("tiny", manifest.revision, cache_dir=cache)
    # A crash mid-download: no marker, half a weights file as .partial, a torn write in
    # another file, a stray file, and a leftover temporary marker.
    (cache / "tiny" / f"{manifest.revision}.complete").unlink()
    weights = (local / "model.safetensors").read_bytes()
    half = len(weights) // 2
    (local / "model.safetensors").unlink()
    (local / "model.safetensors.partial").write_bytes(weights[:half])
    tokenizer = local / "tokenizer" / "tokenizer.json"
    with tokenizer.open("r+b") as file:
        file.seek(1000)
        file.write(b"\0" * 64)
    (local / "stray.bin").write_bytes(b"junk")
    (cache / "tiny" / f".{manifest.revision}.complete.abc123").write_bytes(b"")
    repair = Recorder()

    assert (
        await store.ensure_local("tiny", manifest.revision, cache_dir=cache, progress=repair)
        == local
    )

    assert_same_tree(local, model_dir)
    # Only the missing half and the damaged file came over the network.
    assert repair.downloaded() == {
        "model.safetensors": len(weights) - half,
        "tokenizer/tokenizer.json": sizes(manifest)["tokenizer/tokenizer.json"],
    }
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == sorted(
        [
            manifest.revision,
            *(f"{manifest.revision}.{s}" for s in ("complete", "lock", "manifest.json")),
        ]
    )


async def test_garbage_partial_file_is_downloaded_again(
    s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    manifest = await store.push(model_dir, "tiny")
    cache = tmp_path / "cache"
    local = cache / "tiny" / manifest.revision
    local.mkdir(parents=True)
    (local / "model.safetensors.partial").write_bytes(os.urandom(1024 * 1024))
    pulled = Recorder()

    await store.ensure_local("tiny", manifest.revision, cache_dir=cache, progress=pulled)

    assert_same_tree(local, model_dir)
    # The resume fetched the rest, failed its checksum, and the file was fetched whole.
    expected = 2 * sizes(manifest)["model.safetensors"] - 1024 * 1024
    assert pulled.downloaded()["model.safetensors"] == expected


async def test_cancelled_pull_leaves_no_complete_copy_and_resumes(
    s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    manifest = await store.push(model_dir, "tiny")
    cache = tmp_path / "cache"
    loop = asyncio.get_running_loop()
    first_chunk = asyncio.Event()
    release = threading.Event()

    def stall_on_first_chunk(step: TransferProgress) -> None:
        if not step.cached and not first_chunk.is_set():
            loop.call_soon_threadsafe(first_chunk.set)
            release.wait(WAIT_SECONDS)

    pull = asyncio.create_task(
        store.ensure_local(
            "tiny", manifest.revision, cache_dir=cache, progress=stall_on_first_chunk
        )
    )
    async with asyncio.timeout(WAIT_SECONDS):
        await first_chunk.wait()
    pull.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT_SECONDS):
            await pull

    assert not (cache / "tiny" / f"{manifest.revision}.complete").exists()
    local = await store.ensure_local("tiny", manifest.revision, cache_dir=cache)
    assert_same_tree(local, model_dir)


async def test_cache_serves_without_storage(model_dir: Path, tmp_path: Path) -> None:
    """Push to a private server, pull, stop the server: the cache still serves the model."""
    cache = tmp_path / "cache"
    async with S3Server(tmp_path / "seaweedfs") as server:
        pid = server.pid
        settings = server.mesh_settings()
        store = ModelStore(connect_s3(settings))
        manifest = await store.push(model_dir, "tiny")
        await store.push(model_dir / "tokenizer", "other")
        local = await store.ensure_local("tiny", cache_dir=cache)
        reference = await PayloadStore(connect_s3(settings)).put(b"payload")
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no orphan weed process
    # The same endpoint, now closed; short timeouts so that a hang would show.
    offline_client = connect_s3(settings, S3Timeouts(connect=0.5, read=1.0, retries=0))
    store = ModelStore(offline_client)

    offline = Recorder()
    assert (
        await store.ensure_local("tiny", manifest.revision, cache_dir=cache, progress=offline)
        == local
    )
    assert offline.steps == []
    # "latest" cannot be resolved: the newest complete cached revision is used.
    assert await store.ensure_local("tiny", cache_dir=cache) == local
    assert_same_tree(local, model_dir)

    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await store.ensure_local("other", cache_dir=cache)
    with pytest.raises(StorageUnavailable):
        await PayloadStore(offline_client).get(reference)
    assert time.monotonic() - started < 5.0


def pull_in_process(
    s3_environment: dict[str, str], bucket: str, revision: str, cache: Path, start: Barrier
) -> list[str]:
    """Runs in a child process: pulls the model, returns the files it downloaded itself."""
    os.environ.update(s3_environment)
    store = ModelStore(connect_s3(MeshSettings()), bucket)
    recorder = Recorder()
    start.wait()
    asyncio.run(store.ensure_local("tiny", revision, cache_dir=cache, progress=recorder))
    return sorted(recorder.downloaded())


async def test_concurrent_pulls_download_each_file_once(
    s3_server: S3Server, s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    manifest = await ModelStore(s3_client, bucket).push(model_dir, "tiny")
    cache = tmp_path / "cache"
    loop = asyncio.get_running_loop()
    spawn = get_context("spawn")
    with spawn.Manager() as manager, ProcessPoolExecutor(2, mp_context=spawn) as pool:
        # Both processes enter ensure_local together.
        start = manager.Barrier(2, timeout=WAIT_SECONDS)
        pulls = [
            loop.run_in_executor(
                pool,
                pull_in_process,
                s3_server.environment(),
                bucket,
                manifest.revision,
                cache,
                start,
            )
            for _ in range(2)
        ]
        async with asyncio.timeout(WAIT_SECONDS):
            downloaded = await asyncio.gather(*pulls)

    # One process fetched everything; the other waited for the lock and found it complete.
    assert sorted(downloaded, key=len) == [[], sorted(sizes(manifest))]
    assert_same_tree(tmp_path / "cache" / "tiny" / manifest.revision, model_dir)


async def test_a_revision_pushed_again_after_rm_refreshes_the_cache(
    s3_client: Minio, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)
    cache = tmp_path / "cache"
    await store.push(model_dir, "tiny", "v1")
    local = await store.ensure_local("tiny", cache_dir=cache)
    await store.rm("tiny", "v1")
    (model_dir / "config.json").write_text('{"changed": true}')
    await store.push(model_dir, "tiny", "v1")
    refreshed = Recorder()

    assert await store.ensure_local("tiny", cache_dir=cache, progress=refreshed) == local

    assert refreshed.downloaded() == {"config.json": len('{"changed": true}')}
    assert_same_tree(local, model_dir)
