"""A task's request: inline, or fetched from object storage and verified (issue 6).

The scheduler stores a request too large for the broker in the payload bucket and publishes a
`PayloadReference`; the worker fetches it, checks its size and SHA-256, and decodes it. The
scheduler deletes the object when the request ends, so the worker never does.

Failures become the task's rejection (chunk 0), whose code the scheduler maps to a status:

- storage unreachable, the object gone, or no storage configured on this worker →
  UNAVAILABLE (retryable: the scheduler stores the body afresh for a new attempt);
- size or SHA-256 mismatch, or bytes that do not decode → INTERNAL (the scheduler's
  non-retryable DATA_LOSS).
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from llmmesh.v1 import broker_pb2, chat_pb2, events_pb2

from plumbing.object_store import PayloadStore
from plumbing.storage_errors import PayloadCorrupt, StorageError
from worker.engine_protocol import RequestRejected

__all__ = ["PayloadFetcher"]

logger = logging.getLogger(__name__)


class PayloadFetcher:
    """Returns tasks' requests; `store` is None when no object storage is configured."""

    def __init__(self, store: PayloadStore | None) -> None:
        self._store = store

    async def request(self, task: broker_pb2.Task) -> chat_pb2.ChatRequest:
        """The task's request; raises `RequestRejected` (see the module docstring)."""
        body = task.WhichOneof("body")
        if body == "request":
            return task.request
        if body != "payload_reference":
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST, "the task carries no request", "request"
            )
        reference = task.payload_reference
        if self._store is None:
            raise RequestRejected(
                events_pb2.ERROR_CODE_UNAVAILABLE,
                "the request was stored in object storage, which this worker is not "
                "configured to reach (LLM_MESH_S3_ENDPOINT)",
            )
        try:
            data = await self._store.get(reference)
        except PayloadCorrupt as exc:
            logger.error("task %s: stored request is corrupt: %s", task.request_id, exc)
            raise RequestRejected(
                events_pb2.ERROR_CODE_INTERNAL,
                "the request body in object storage failed its integrity check",
            ) from exc
        except StorageError as exc:
            logger.warning("task %s: stored request not fetched: %s", task.request_id, exc)
            raise RequestRejected(
                events_pb2.ERROR_CODE_UNAVAILABLE,
                "the request body could not be fetched from object storage",
            ) from exc
        try:
            return chat_pb2.ChatRequest.FromString(data)
        except DecodeError as exc:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INTERNAL,
                "the request body in object storage is not a ChatRequest",
            ) from exc
