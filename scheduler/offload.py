"""Task bodies too large for the broker, stored by reference in object storage (issue 6).

A request whose serialized `ChatRequest` exceeds the `payload_threshold_bytes` setting is
uploaded to the payload bucket under its request id, and its `Task` carries the
`PayloadReference` (bucket, key, size, SHA-256) instead; the worker fetches and verifies it.
The request's `finally` deletes the object (`release`); `sweep_forever` removes what replicas
that crashed mid-request left behind, once older than the `payload_ttl` setting.

Failures: storage that cannot be reached (or answers too late) is `StorageUnavailable`
(retryable UNAVAILABLE); a large request with no storage configured is `InvalidRequest` — it
cannot travel at all, whatever the retries.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from llmmesh.v1 import broker_pb2, chat_pb2

from plumbing.object_store import PayloadStore
from plumbing.storage_errors import StorageError
from scheduler.errors import InvalidRequest, StorageUnavailable
from scheduler.metrics import SchedulerMetrics

__all__ = ["PayloadOffload"]

logger = logging.getLogger(__name__)


class PayloadOffload:
    """Puts a task's request inline or in storage; deletes and sweeps stored ones.

    `store` is None when no object storage is configured.
    """

    def __init__(
        self, store: PayloadStore | None, *, threshold: int, metrics: SchedulerMetrics
    ) -> None:
        self._store = store
        self._threshold = threshold
        self._metrics = metrics

    async def attach(
        self, task: broker_pb2.Task, request: chat_pb2.ChatRequest, *, deadline: float
    ) -> broker_pb2.PayloadReference | None:
        """Sets the task's body; returns the reference when it was stored (to `release`).

        `deadline` (event loop time) bounds the upload. Raises `StorageUnavailable` or
        `InvalidRequest` (see the module docstring).
        """
        size = request.ByteSize()
        if size <= self._threshold:
            task.request.CopyFrom(request)
            return None
        if self._store is None:
            raise InvalidRequest(
                f"the request ({size} bytes) is too large for the broker (limit "
                f"{self._threshold} bytes) and no object storage is configured",
                field="messages",
            )
        try:
            async with asyncio.timeout_at(deadline):
                reference = await self._store.put(request.SerializeToString(), key=task.request_id)
        except TimeoutError:
            raise StorageUnavailable(
                "object storage did not store the request body in time"
            ) from None
        except StorageError as exc:
            logger.warning("request %s: storing its body failed: %s", task.request_id, exc)
            raise StorageUnavailable(f"object storage failed: {exc}") from exc
        task.payload_reference.CopyFrom(reference)
        self._metrics.payloads_stored.inc()
        return reference

    async def release(self, reference: broker_pb2.PayloadReference) -> None:
        """Deletes a stored body once its request ended. Never raises: the sweep catches
        what could not be deleted."""
        assert self._store is not None
        try:
            await self._store.delete(reference)
        except StorageError as exc:
            logger.warning("payload %s not deleted (the sweep will): %s", reference.key, exc)

    async def sweep_forever(self, *, ttl: float, interval: float) -> None:
        """Every `interval` seconds, deletes stored bodies older than `ttl` seconds.

        Storage failures are logged and retried at the next turn; returns at once when no
        storage is configured. Cancel it to stop.
        """
        if self._store is None:
            return
        while True:
            try:
                swept = await self._store.sweep(timedelta(seconds=ttl))
            except StorageError as exc:
                logger.warning("payload sweep failed: %s", exc)
            else:
                if swept:
                    logger.info("swept %d leftover payloads", swept)
                    self._metrics.payloads_swept.inc(swept)
            await asyncio.sleep(interval)
