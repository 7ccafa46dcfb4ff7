"""The node-local model cache: a verified, complete copy of a model revision, fetched once.

Layout under the cache directory (the node's persistent volume)::

    <cache>/<name>/<revision>/                the model's files (what the engine loads)
    <cache>/<name>/<revision>/<file>.partial  a download in progress (resumed, or removed)
    <cache>/<name>/<revision>.manifest.json   the revision's manifest
    <cache>/<name>/<revision>.lock            flock: one filler per revision per node
    <cache>/<name>/<revision>.complete        written last: the manifest's digest

A copy counts as complete only when the `.complete` marker holds the digest of the manifest
beside it and every file has its manifest size; such a copy is used without contacting storage.
Anything else is (re)filled under the lock: files that fail their SHA-256 are fetched again,
interrupted downloads resume from their `.partial` file, stray files are removed, each file is
renamed into place only after its checksum matched, and the marker is written after all of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

from pydantic import ValidationError

from plumbing.model_manifest import (
    LATEST,
    ManifestFile,
    ModelManifest,
    check_model_name,
    check_revision,
    hash_file,
)
from plumbing.storage_errors import PayloadCorrupt, StorageUnavailable
from plumbing.transfer import Transfer, TransferCancelled

__all__ = ["ModelSource", "ensure_local_blocking"]

logger = logging.getLogger(__name__)

_PARTIAL_SUFFIX: Final = ".partial"
_LOCK_POLL_INTERVAL: Final = 0.2


class ModelSource(Protocol):
    """Where the cache fetches revisions from (the models bucket); blocking calls."""

    def read_manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of `revision` (or of the newest one for `LATEST`); `ModelNotFound`."""
        ...

    def read_file(
        self,
        manifest: ModelManifest,
        file: ManifestFile,
        offset: int,
        sink: Callable[[bytes], None],
    ) -> None:
        """Streams `file`'s bytes from `offset` on into `sink`, chunk by chunk."""
        ...


def ensure_local_blocking(
    source: ModelSource,
    name: str,
    revision: str,
    cache_dir: Path,
    transfer: Transfer,
    *,
    parallel_downloads: int,
    lock_timeout: float,
) -> Path:
    """The directory of a complete, verified local copy of `name` at `revision` (or `LATEST`).

    A complete copy of an explicit revision is used without contacting `source`. `LATEST` asks
    `source` which revision is newest; when storage is unavailable it falls back to the newest
    complete local copy. Raises `StorageUnavailable`, `ModelNotFound`, `PayloadCorrupt` (a file
    still mismatches after a fresh download), `TimeoutError` (another process held the lock for
    `lock_timeout` seconds) or `TransferCancelled`.
    """
    check_model_name(name)
    model_root = cache_dir / name
    if revision == LATEST:
        try:
            manifest = source.read_manifest(name, LATEST)
        except StorageUnavailable:
            fallback = _newest_complete_copy(model_root)
            if fallback is None:
                raise
            logger.warning("storage unavailable; serving cached %s from %s", name, fallback)
            return fallback
        revision = manifest.revision
        if (local := _complete_copy(model_root, revision, manifest.digest())) is not None:
            return local
    else:
        check_revision(revision)
        if (local := _complete_copy(model_root, revision)) is not None:
            return local
        manifest = source.read_manifest(name, revision)
    model_root.mkdir(parents=True, exist_ok=True)
    with _locked(model_root / f"{revision}.lock", lock_timeout, transfer):
        # Another process may have filled it while we waited for the lock.
        if (local := _complete_copy(model_root, revision, manifest.digest())) is not None:
            return local
        return _fill(source, manifest, model_root, transfer, parallel_downloads)


def _marker(model_root: Path, revision: str) -> Path:
    return model_root / f"{revision}.complete"


def _manifest_copy(model_root: Path, revision: str) -> Path:
    return model_root / f"{revision}.manifest.json"


def _complete_copy(
    model_root: Path, revision: str, expected_digest: str | None = None
) -> Path | None:
    """The revision's directory if its marker matches its manifest (and `expected_digest`, when
    given) and every file has its manifest size; else None."""
    try:
        digest = _marker(model_root, revision).read_text()
        manifest = ModelManifest.from_json(_manifest_copy(model_root, revision).read_bytes())
    except (OSError, ValidationError):
        return None
    directory = model_root / revision
    if digest != manifest.digest():
        logger.warning("cached %s: marker does not match its manifest", directory)
        return None
    if expected_digest is not None and digest != expected_digest:
        logger.warning("cached %s: stored revision has other contents", directory)
        return None
    for file in manifest.files:
        try:
            size = (directory / file.path).stat().st_size
        except OSError:
            size = -1
        if size != file.size:
            logger.warning("cached %s: %s is damaged or missing", directory, file.path)
            return None
    return directory


def _newest_complete_copy(model_root: Path) -> Path | None:
    """The complete cached revision with the newest manifest, if any."""
    newest: tuple[ModelManifest, Path] | None = None
    for marker in model_root.glob("*.complete"):
        revision = marker.name.removesuffix(".complete")
        directory = _complete_copy(model_root, revision)
        if directory is None:
            continue
        manifest = ModelManifest.from_json(_manifest_copy(model_root, revision).read_bytes())
        if newest is None or (manifest.created, manifest.revision) > (
            newest[0].created,
            newest[0].revision,
        ):
            newest = (manifest, directory)
    return newest[1] if newest else None


@contextmanager
def _locked(path: Path, timeout: float, transfer: Transfer) -> Iterator[None]:
    """Holds an exclusive flock on `path` (released when the process dies, too)."""
    with path.open("a") as lock_file:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for {timeout} s") from None
                # flock has no timed wait: poll, which also lets a cancel through.
                if transfer.wait_cancelled(_LOCK_POLL_INTERVAL):
                    transfer.check()
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _fill(
    source: ModelSource,
    manifest: ModelManifest,
    model_root: Path,
    transfer: Transfer,
    parallel_downloads: int,
) -> Path:
    """Brings the revision's directory to exactly the manifest's files, then marks it complete."""
    directory = model_root / manifest.revision
    _marker(model_root, manifest.revision).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    for own_file in (
        _marker(model_root, manifest.revision),
        _manifest_copy(model_root, manifest.revision),
    ):
        for leftover in model_root.glob(f".{own_file.name}.*"):
            # Temporary files of an interrupted _write_atomically.
            leftover.unlink()
    _write_atomically(_manifest_copy(model_root, manifest.revision), manifest.to_json())
    _remove_strays(directory, manifest)
    transfer.set_total(manifest.total_size)
    pool = ThreadPoolExecutor(parallel_downloads, thread_name_prefix="model-pull")
    try:
        futures = [
            pool.submit(_fetch_file, source, manifest, file, directory, transfer)
            for file in manifest.files
        ]
        wait(futures, return_when=FIRST_EXCEPTION)
        failures = [error for future in futures if (error := _failure(future)) is not None]
        if failures:
            # Stop the other files at their next chunk; their .partial files stay for a resume.
            transfer.cancel()
            # Report the cause, not the cancellations it triggered.
            failures.sort(key=lambda error: isinstance(error, TransferCancelled))
            raise failures[0]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _sync_tree(directory)
    _write_atomically(_marker(model_root, manifest.revision), manifest.digest().encode())
    logger.info("cached %s %s in %s", manifest.name, manifest.revision, directory)
    return directory


def _failure(future: Future[None]) -> BaseException | None:
    return future.exception() if future.done() and not future.cancelled() else None


def _fetch_file(
    source: ModelSource,
    manifest: ModelManifest,
    file: ManifestFile,
    directory: Path,
    transfer: Transfer,
) -> None:
    """Verifies `file` in place, or downloads it (resuming a partial download) and renames it in."""
    transfer.check()
    target = directory / file.path
    if target.is_file() and target.stat().st_size == file.size:
        if hash_file(target) == file.sha256:
            transfer.advance(file.path, file.size, cached=True)
            return
        logger.warning("cached %s: checksum mismatch, fetching it again", target)
    target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + _PARTIAL_SUFFIX)
    if not _download(source, manifest, file, partial, transfer, resume=True):
        # A resumed file can hold bytes from an older upload or a torn write: start over once.
        logger.warning("download of %s did not match its checksum; retrying from scratch", target)
        if not _download(source, manifest, file, partial, transfer, resume=False):
            partial.unlink(missing_ok=True)
            raise PayloadCorrupt(
                f"model {manifest.name} {manifest.revision}: {file.path} does not match its "
                "manifest's sha256 after a fresh download"
            )
    os.replace(partial, target)


def _download(
    source: ModelSource,
    manifest: ModelManifest,
    file: ManifestFile,
    partial: Path,
    transfer: Transfer,
    *,
    resume: bool,
) -> bool:
    """Completes `partial` (continuing after its bytes if `resume`); whether it matches `file`."""
    digest = hashlib.sha256()
    offset = 0
    if resume and partial.is_file() and partial.stat().st_size <= file.size:
        with partial.open("rb") as existing:
            while chunk := existing.read(1024 * 1024):
                digest.update(chunk)
                offset += len(chunk)
        transfer.advance(file.path, offset, cached=True)
    else:
        partial.unlink(missing_ok=True)
    with partial.open("ab") as out:

        def sink(chunk: bytes) -> None:
            out.write(chunk)
            digest.update(chunk)
            transfer.advance(file.path, len(chunk))

        if offset < file.size:
            source.read_file(manifest, file, offset, sink)
        out.flush()
        os.fsync(out.fileno())
    return partial.stat().st_size == file.size and digest.hexdigest() == file.sha256


def _remove_strays(directory: Path, manifest: ModelManifest) -> None:
    """Deletes files the manifest does not list (keeping partial downloads of listed files)."""
    expected = {file.path for file in manifest.files}
    expected |= {path + _PARTIAL_SUFFIX for path in expected}
    for path in sorted(directory.rglob("*"), reverse=True):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif relative not in expected:
            logger.info("removing stray file %s", path)
            path.unlink()


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes `path` via a temporary file and a rename, so readers see all or nothing."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)
    _sync_directory(path.parent)


def _sync_tree(directory: Path) -> None:
    """fsyncs `directory` and its subdirectories, so the renames in them are durable."""
    for sub in [directory, *(path for path in directory.rglob("*") if path.is_dir())]:
        _sync_directory(sub)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
