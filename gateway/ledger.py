"""Writing request ends to the usage ledger with group commit.

Every request's usage is committed before its response ends (DESIGN.md: usage is recorded
exactly once, however the stream ends; a killed gateway loses no finished request). One
commit per request serialises every stream on the database's write lock and its fsync, so
`LedgerWriter` batches: the outcomes that arrive while a commit runs go together in the next
one (`Keystore.record_outcomes`, one transaction), and each writer returns once its own
outcome is committed. An idle gateway commits at once; a busy one commits once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from plumbing.keystore import Keystore, UsageOutcome

__all__ = ["LedgerWriter"]

logger = logging.getLogger(__name__)

#: Most outcomes in one transaction.
_MAX_BATCH: Final = 512


class LedgerWriter:
    """Commits usage outcomes in batches; `write` returns once its outcome is committed."""

    def __init__(self, keystore: Keystore, *, max_batch: int = _MAX_BATCH) -> None:
        self._keystore = keystore
        self._max_batch = max_batch
        self._pending: list[tuple[UsageOutcome, asyncio.Future[None]]] = []
        self._committing: asyncio.Task[None] | None = None

    async def write(self, outcome: UsageOutcome) -> None:
        """Queues `outcome` for the next commit and waits for it.

        Raises the database's error when the commit failed. Cancelling the caller does not
        withdraw the outcome (shield the wait to keep waiting for it).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_pending())
        await future

    async def _commit_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await asyncio.to_thread(
                    self._keystore.record_outcomes, [outcome for outcome, _ in batch]
                )
            except Exception as exc:  # Handed to every writer of the batch.
                logger.error("usage ledger: %d outcomes not written: %r", len(batch), exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def aclose(self) -> None:
        """Waits until every queued outcome is committed (at shutdown)."""
        while self._committing is not None and not self._committing.done():
            await asyncio.wait([self._committing])
