"""Large request/response bodies stored by reference (DESIGN.md, `Task.payload_reference`).

The broker carries small messages only. A sender stores a big body with `PayloadStore.put`, puts
the returned `PayloadReference` on the broker, and the receiver fetches it with `get`, which
checks the size and SHA-256 recorded in the reference. Payloads are deleted when their request
ends; `sweep` removes what crashed processes left behind.

Every method is a coroutine that runs minio's blocking calls in a thread; the client's
timeouts (`S3Timeouts`) bound each call, so nothing hangs when storage is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from llmmesh.v1 import broker_pb2
from minio import Minio
from minio.deleteobjects import DeleteObject

from plumbing.s3_client import ensure_bucket, translate_s3_errors
from plumbing.storage_errors import PayloadCorrupt, StorageError

__all__ = ["DEFAULT_PAYLOAD_BUCKET", "PayloadStore"]

#: The bucket payloads go to unless the store is given another.
DEFAULT_PAYLOAD_BUCKET: Final = "llm-mesh-payloads"
#: Bodies at or above this size are uploaded in parts (S3's minimum part size is 5 MiB).
_PART_SIZE: Final = 16 * 1024 * 1024


class PayloadStore:
    """Puts, gets and deletes payload objects in one bucket, created on first use.

    Raises `StorageUnavailable` (retryable) when storage cannot be reached in time,
    `ObjectMissing` when a referenced payload is gone, `PayloadCorrupt` (not retryable) when
    its bytes do not match the reference, and `StorageError` for anything else.
    """

    def __init__(self, client: Minio, bucket: str = DEFAULT_PAYLOAD_BUCKET) -> None:
        self._client = client
        self._bucket = bucket
        self._bucket_ready = False
        self._bucket_lock = asyncio.Lock()

    @property
    def bucket(self) -> str:
        """The bucket this store writes to."""
        return self._bucket

    async def put(self, data: bytes, *, key: str | None = None) -> broker_pb2.PayloadReference:
        """Stores `data` (under `key`, default a fresh random key) and returns its reference."""
        await self._ensure_bucket()
        reference = broker_pb2.PayloadReference(
            bucket=self._bucket,
            key=key or uuid.uuid4().hex,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        await asyncio.to_thread(self._put, reference, data)
        return reference

    async def get(self, reference: broker_pb2.PayloadReference) -> bytes:
        """The referenced bytes, after checking their size and SHA-256 (`PayloadCorrupt`)."""
        data = await asyncio.to_thread(self._get, reference)
        if len(data) != reference.size:
            raise PayloadCorrupt(
                f"payload {reference.bucket}/{reference.key}: "
                f"{len(data)} bytes, the reference says {reference.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != reference.sha256:
            raise PayloadCorrupt(
                f"payload {reference.bucket}/{reference.key}: sha256 {digest}, "
                f"the reference says {reference.sha256}"
            )
        return data

    async def delete(self, reference: broker_pb2.PayloadReference) -> None:
        """Deletes the referenced object; deleting a missing one is not an error."""
        await asyncio.to_thread(self._delete, reference)

    async def sweep(self, older_than: timedelta) -> int:
        """Deletes this bucket's objects last modified more than `older_than` ago; returns how many.

        Catches the payloads of requests whose process died before deleting them. Run it
        periodically from one place (e.g. every scheduler replica, a few times per TTL).
        """
        return await asyncio.to_thread(self._sweep, datetime.now(UTC) - older_than)

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        async with self._bucket_lock:
            if not self._bucket_ready:
                await asyncio.to_thread(ensure_bucket, self._client, self._bucket)
                self._bucket_ready = True

    def _put(self, reference: broker_pb2.PayloadReference, data: bytes) -> None:
        with translate_s3_errors(f"storing payload {reference.key}"):
            self._client.put_object(
                reference.bucket,
                reference.key,
                io.BytesIO(data),
                len(data),
                part_size=_PART_SIZE,
            )

    def _get(self, reference: broker_pb2.PayloadReference) -> bytes:
        with translate_s3_errors(f"fetching payload {reference.bucket}/{reference.key}"):
            response = self._client.get_object(reference.bucket, reference.key)
            try:
                # Read one byte more than expected, so an oversized object is reported as
                # such without reading all of it.
                return response.read(reference.size + 1)
            finally:
                response.close()
                response.release_conn()

    def _delete(self, reference: broker_pb2.PayloadReference) -> None:
        with translate_s3_errors(f"deleting payload {reference.bucket}/{reference.key}"):
            self._client.remove_object(reference.bucket, reference.key)

    def _sweep(self, cutoff: datetime) -> int:
        with translate_s3_errors(f"sweeping bucket {self._bucket}"):
            if not self._client.bucket_exists(self._bucket):
                return 0
            stale = [
                DeleteObject(item.object_name)
                for item in self._client.list_objects(self._bucket, recursive=True)
                if item.object_name is not None
                and item.last_modified is not None
                and item.last_modified < cutoff
            ]
            failures = list(self._client.remove_objects(self._bucket, stale))
        if failures:
            raise StorageError(
                f"sweeping bucket {self._bucket}: {len(failures)} deletions failed, "
                f"first: {failures[0].code} {failures[0].name}"
            )
        return len(stale)
