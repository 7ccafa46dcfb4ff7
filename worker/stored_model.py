"""A model served from S3: its revision pulled into the node's cache before the engine loads.

With `model_source=s3`, the worker asks `ModelStore.ensure_local` for `model_revision` of its
model before it builds the engine (so before it consumes or reports ready): a complete, verified
cached copy is reused without touching storage (for `latest`, storage is asked which revision is
newest, and the newest complete cached copy is used when storage is down); anything missing or
corrupt is downloaded, under a per-revision lock shared by the node's workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from plumbing.model_store import ModelStore, local_models_dir
from plumbing.s3_client import connect_s3
from plumbing.transfer import TransferProgress
from worker.settings import Settings

__all__ = ["pull_stored_model"]

logger = logging.getLogger(__name__)

#: Progress is logged at most once per this many bytes.
_LOG_EVERY_BYTES = 64 * 1024 * 1024


async def pull_stored_model(settings: Settings) -> Path:
    """The local directory of the model's revision, pulled from S3 if needed.

    Raises ValueError when no S3 endpoint is configured, and what `ModelStore.ensure_local`
    raises: `StorageUnavailable` (storage down and nothing usable cached), `ModelNotFound`,
    `PayloadCorrupt`, TimeoutError (another process holds the revision's lock too long).
    """
    if not settings.mesh.s3_endpoint:
        raise ValueError("model_source=s3 needs object storage: set LLM_MESH_S3_ENDPOINT")
    store = ModelStore(connect_s3(settings.mesh))
    logged = 0

    def report(step: TransferProgress) -> None:
        nonlocal logged
        if step.done - logged >= _LOG_EVERY_BYTES:
            logged = step.done
            logger.info("pulling %s: %d of %d bytes", settings.model, step.done, step.total)

    directory = await store.ensure_local(
        settings.model,
        settings.model_revision,
        cache_dir=local_models_dir(settings.mesh),
        progress=report,
    )
    logger.info("serving %s from %s", settings.model, directory)
    return directory
