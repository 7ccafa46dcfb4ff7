"""Model weights in S3-compatible storage, and their delivery to a node's cache.

Layout in the models bucket (one prefix per immutable revision)::

    models/<name>/<revision>/<file path>      the model directory's files
    models/<name>/<revision>/manifest.json    written last: the revision exists once it does

`ModelStore.push` uploads a directory (multipart for big files), `list` and `rm` manage what is
stored, and `ensure_local` gives a worker a verified local copy (`plumbing.model_cache`).
Every method is a coroutine running minio's blocking calls in threads; cancelling one stops
its transfer at the next chunk.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, cast

from minio import Minio
from minio.deleteobjects import DeleteObject
from pydantic import ValidationError

from plumbing.model_cache import ensure_local_blocking
from plumbing.model_manifest import (
    LATEST,
    MANIFEST_NAME,
    ManifestFile,
    ModelManifest,
    check_model_name,
    check_revision,
    content_revision,
    detect_format,
    scan_directory,
)
from plumbing.s3_client import ensure_bucket, translate_s3_errors
from plumbing.settings import MeshSettings
from plumbing.storage_errors import (
    ModelNotFound,
    ModelRevisionExists,
    ObjectMissing,
    PayloadCorrupt,
    StorageError,
)
from plumbing.transfer import ProgressCallback, Transfer, run_in_thread

__all__ = ["DEFAULT_MODELS_BUCKET", "ModelStore", "local_models_dir"]

logger = logging.getLogger(__name__)

#: The bucket models go to unless the store is given another.
DEFAULT_MODELS_BUCKET: Final = "llm-mesh-models"
_PREFIX: Final = "models/"
#: Files at or above this size are uploaded in parts of this size, three at a time.
_PART_SIZE: Final = 16 * 1024 * 1024
_PARALLEL_PART_UPLOADS: Final = 3
_DOWNLOAD_CHUNK: Final = 1024 * 1024


def local_models_dir(settings: MeshSettings) -> Path:
    """The node's cache of models pulled from storage: `<data_dir>/models/_s3/`.

    The `_s3` level keeps pulled revisions (`<name>/<revision>/`) apart from models prepared
    locally in `<data_dir>/models/<name>/`; no model name starts with `_`.
    """
    return settings.data_dir / "models" / "_s3"


class ModelStore:
    """Pushes, lists, removes and pulls model revisions in one bucket (created on first push).

    Storage failures raise `StorageUnavailable` (retryable) or another `StorageError`; see
    `plumbing.storage_errors`.
    """

    def __init__(self, client: Minio, bucket: str = DEFAULT_MODELS_BUCKET) -> None:
        self._models = _S3Models(client, bucket)

    async def push(
        self,
        directory: Path,
        name: str,
        revision: str | None = None,
        *,
        engine: str = "vllm",
        progress: ProgressCallback | None = None,
    ) -> ModelManifest:
        """Uploads every file under `directory` as `name` at `revision`; returns the manifest.

        The default revision is derived from the contents, so pushing the same files twice
        uploads nothing the second time. Pushing different files under an existing revision
        raises `ModelRevisionExists`; a file that changes while it is uploaded raises
        `PayloadCorrupt`; a bad name or directory raises ValueError.
        """
        return await run_in_thread(
            lambda transfer: self._models.push(directory, name, revision, engine, transfer),
            Transfer(progress),
        )

    async def list(self, name: str | None = None) -> list[ModelManifest]:
        """The manifests of every stored revision (of `name`), by name then creation time."""
        return await run_in_thread(lambda _: self._models.list_manifests(name), Transfer())

    async def manifest(self, name: str, revision: str = LATEST) -> ModelManifest:
        """The manifest of one revision (default: the newest); raises `ModelNotFound`."""
        return await run_in_thread(lambda _: self._models.read_manifest(name, revision), Transfer())

    async def rm(self, name: str, revision: str | None = None) -> builtins.list[str]:
        """Deletes one revision (default: all of them); returns the revisions deleted.

        Raises `ModelNotFound` if there was nothing to delete. Nodes keep their cached copies.
        """
        return await run_in_thread(lambda _: self._models.rm(name, revision), Transfer())

    async def ensure_local(
        self,
        name: str,
        revision: str = LATEST,
        *,
        cache_dir: Path,
        progress: ProgressCallback | None = None,
        parallel_downloads: int = 4,
        lock_timeout: float = 3600.0,
    ) -> Path:
        """The directory of a complete, verified copy of the model under `cache_dir`.

        Reuses a complete cached copy of an explicit revision without contacting storage; for
        `LATEST` asks storage and, if it is unavailable, falls back to the newest complete
        cached revision. Otherwise downloads what is missing or corrupt (`parallel_downloads`
        files at a time) under a per-revision file lock, so processes sharing `cache_dir`
        fetch each file once; waits at most `lock_timeout` seconds for that lock (TimeoutError).
        Raises `StorageUnavailable`, `ModelNotFound`, or `PayloadCorrupt` if a file does not
        match the manifest even after a fresh download. See `plumbing.model_cache`.
        """
        return await run_in_thread(
            lambda transfer: ensure_local_blocking(
                self._models,
                name,
                revision,
                cache_dir,
                transfer,
                parallel_downloads=parallel_downloads,
                lock_timeout=lock_timeout,
            ),
            Transfer(progress),
        )


class _S3Models:
    """The blocking implementation; also the cache's `ModelSource`."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    def push(
        self,
        directory: Path,
        name: str,
        revision: str | None,
        engine: str,
        transfer: Transfer,
    ) -> ModelManifest:
        check_model_name(name)
        files = scan_directory(directory)
        manifest = ModelManifest(
            name=name,
            revision=check_revision(revision or content_revision(files)),
            created=datetime.now(UTC).replace(microsecond=0),
            format=detect_format(files),
            engine=engine,
            files=tuple(files),
        )
        ensure_bucket(self._client, self._bucket)
        try:
            existing = self.read_manifest(name, manifest.revision)
        except ModelNotFound:
            pass
        else:
            if existing.files == manifest.files:
                logger.info("%s %s is already stored", name, manifest.revision)
                return existing
            raise ModelRevisionExists(
                f"{name} {manifest.revision} is stored with other files; push a new revision"
            )
        transfer.set_total(manifest.total_size)
        for file in manifest.files:
            self._upload(directory, manifest, file, transfer)
        with translate_s3_errors(f"storing the manifest of {name} {manifest.revision}"):
            manifest_bytes = manifest.to_json()
            self._client.put_object(
                self._bucket,
                _key(name, manifest.revision, MANIFEST_NAME),
                io.BytesIO(manifest_bytes),
                len(manifest_bytes),
                content_type="application/json",
            )
        logger.info("pushed %s %s (%d files)", name, manifest.revision, len(manifest.files))
        return manifest

    def _upload(
        self, directory: Path, manifest: ModelManifest, file: ManifestFile, transfer: Transfer
    ) -> None:
        with (directory / file.path).open("rb") as source:
            reader = _HashingReader(source, file.path, transfer)
            with translate_s3_errors(f"uploading {file.path}"):
                self._client.put_object(
                    self._bucket,
                    _key(manifest.name, manifest.revision, file.path),
                    # minio only calls read() on it.
                    cast(BinaryIO, reader),
                    file.size,
                    part_size=_PART_SIZE,
                    num_parallel_uploads=_PARALLEL_PART_UPLOADS,
                )
        if reader.sha256() != file.sha256:
            raise PayloadCorrupt(f"{directory / file.path} changed while it was being pushed")

    def list_manifests(self, name: str | None) -> list[ModelManifest]:
        names = [check_model_name(name)] if name else self._children(_PREFIX)
        manifests = []
        for model in names:
            for revision in self._children(f"{_PREFIX}{model}/"):
                try:
                    manifests.append(self._read_manifest(model, revision))
                except ObjectMissing:
                    # A push in progress or interrupted: not a revision (yet).
                    continue
        return sorted(manifests, key=lambda manifest: (manifest.name, manifest.created))

    def read_manifest(self, name: str, revision: str) -> ModelManifest:
        check_model_name(name)
        if revision != LATEST:
            try:
                return self._read_manifest(name, check_revision(revision))
            except ObjectMissing as exc:
                raise ModelNotFound(f"no model {name} at revision {revision}") from exc
        manifests = self.list_manifests(name)
        if not manifests:
            raise ModelNotFound(f"no model {name}")
        return max(manifests, key=lambda manifest: (manifest.created, manifest.revision))

    def read_file(
        self,
        manifest: ModelManifest,
        file: ManifestFile,
        offset: int,
        sink: Callable[[bytes], None],
    ) -> None:
        key = _key(manifest.name, manifest.revision, file.path)
        with translate_s3_errors(f"downloading {manifest.name} {manifest.revision} {file.path}"):
            response = self._client.get_object(self._bucket, key, offset=offset)
            try:
                for chunk in response.stream(_DOWNLOAD_CHUNK):
                    sink(chunk)
            finally:
                response.close()
                response.release_conn()

    def rm(self, name: str, revision: str | None) -> list[str]:
        check_model_name(name)
        revisions = [check_revision(revision)] if revision else self._children(f"{_PREFIX}{name}/")
        deleted = []
        for stored in revisions:
            prefix = f"{_PREFIX}{name}/{stored}/"
            with translate_s3_errors(f"deleting {name} {stored}"):
                keys = [
                    item.object_name
                    for item in self._client.list_objects(self._bucket, prefix, recursive=True)
                    if item.object_name is not None
                ]
                # The manifest first: the revision disappears before its files do.
                keys.sort(key=lambda key: not key.endswith(f"/{MANIFEST_NAME}"))
                if keys:
                    self._client.remove_object(self._bucket, keys[0])
                failures = list(
                    self._client.remove_objects(self._bucket, [DeleteObject(k) for k in keys[1:]])
                )
            if failures:
                raise StorageError(f"deleting {name} {stored}: {len(failures)} objects remain")
            if keys:
                deleted.append(stored)
        if not deleted:
            raise ModelNotFound(
                f"no model {name}" + (f" at revision {revision}" if revision else "")
            )
        return deleted

    def _read_manifest(self, name: str, revision: str) -> ModelManifest:
        key = _key(name, revision, MANIFEST_NAME)
        with translate_s3_errors(f"reading the manifest of {name} {revision}"):
            response = self._client.get_object(self._bucket, key)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
        try:
            manifest = ModelManifest.from_json(data)
        except ValidationError as exc:
            raise PayloadCorrupt(f"{self._bucket}/{key} is not a valid manifest: {exc}") from exc
        if (manifest.name, manifest.revision) != (name, revision):
            raise PayloadCorrupt(
                f"{self._bucket}/{key} describes {manifest.name} {manifest.revision}"
            )
        return manifest

    def _children(self, prefix: str) -> list[str]:
        """The next path segments under `prefix` ("directories" only)."""
        with translate_s3_errors(f"listing {self._bucket}/{prefix}"):
            if not self._client.bucket_exists(self._bucket):
                return []
            return sorted(
                item.object_name.removeprefix(prefix).rstrip("/")
                for item in self._client.list_objects(self._bucket, prefix, recursive=False)
                if item.object_name is not None and item.is_dir
            )


def _key(name: str, revision: str, path: str) -> str:
    return f"{_PREFIX}{name}/{revision}/{path}"


class _HashingReader:
    """A file wrapper for minio's uploads that hashes and reports what is read."""

    def __init__(self, source: BinaryIO, path: str, transfer: Transfer) -> None:
        self._source = source
        self._path = path
        self._transfer = transfer
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._digest.update(data)
        self._transfer.advance(self._path, len(data))
        return data

    def sha256(self) -> str:
        return self._digest.hexdigest()
