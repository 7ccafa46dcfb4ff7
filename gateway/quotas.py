"""Admission against a key's permissions and quotas, and the request's usage record.

`admit` checks the (verified) key's model permission, and for a key held to quotas checks them
and opens the request's ledger row in one transaction (`plumbing.keystore`). A key is held to
its own quotas, or, when it has none, to the routing file's `default_quotas` (counted the same
way, from the ledger); a key held to none is admitted in memory: its row is written whole when
the request ends. The returned `LedgerEntry` records the request's usage exactly once when it
ends, however it ends (`close`, idempotent, shielded from the cancellation of a disconnecting
client's task), through the gateway's group-committing `LedgerWriter`.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import Literal

import anyio
import anyio.to_thread

from gateway.errors import PermissionDenied, QuotaExceeded, Unauthenticated
from gateway.ledger import LedgerWriter
from plumbing.keystore import (
    InvalidKey,
    KeyRecord,
    Keystore,
    ModelNotAllowed,
    QuotaExhausted,
    Quotas,
    UsageOutcome,
)
from plumbing.usage_meter import UsageMeter

__all__ = ["LedgerEntry", "admit"]

logger = logging.getLogger(__name__)

#: Bound of the ledger write when a request ends (it runs shielded from cancellation).
_RECORD_TIMEOUT = 30.0


class LedgerEntry:
    """An admitted request's ledger record (a running row, or one written at the end)."""

    def __init__(
        self,
        ledger: LedgerWriter,
        key: KeyRecord,
        model: str,
        *,
        started_at: datetime,
        entry_id: int | None = None,
    ) -> None:
        self._ledger = ledger
        self._key = key
        self._model = model
        self._started_at = started_at
        self._entry_id = entry_id
        self._closed = False

    @property
    def key(self) -> KeyRecord:
        """The admitted key."""
        return self._key

    @property
    def closed(self) -> bool:
        """Whether the usage was recorded."""
        return self._closed

    async def close(
        self, meter: UsageMeter, status: Literal["ok", "error", "cancelled"] | None = None
    ) -> None:
        """Records the usage the meter saw (status: the meter's, unless given). Once only."""
        if self._closed:
            return
        self._closed = True
        queued_ms, first_token_ms, total_ms = meter.timings_ms()
        outcome = UsageOutcome(
            key_id=self._key.key_id,
            model=self._model,
            source="http",
            started_at=self._started_at,
            status=status or meter.status(),
            prompt_tokens=meter.prompt_tokens,
            completion_tokens=meter.completion_tokens,
            entry_id=self._entry_id,
            request_id=meter.request_id,
            queued_ms=queued_ms,
            time_to_first_token_ms=first_token_ms,
            total_ms=total_ms,
        )
        with anyio.move_on_after(_RECORD_TIMEOUT, shield=True) as scope:
            await self._ledger.write(outcome)
        if scope.cancelled_caught:
            logger.error("usage record of key %s not written in time", self._key.key_id)


async def admit(
    keystore: Keystore,
    ledger: LedgerWriter,
    api_key: str,
    key: KeyRecord,
    model: str,
    *,
    default_quotas: Quotas | None = None,
) -> LedgerEntry:
    """Admits one request of the verified `key` (`api_key` itself) for `model`.

    A key without quotas of its own is held to `default_quotas` (None = no limit).
    Raises `Unauthenticated`, `PermissionDenied` or `QuotaExceeded` (with `retry_after`).
    """
    if not key.allows(model):
        raise PermissionDenied(f"This API key may not use the model {model!r}.", field="model")
    if not key.has_quotas and default_quotas is None:
        return LedgerEntry(ledger, key, model, started_at=datetime.now(UTC))
    admission_call = functools.partial(
        keystore.admit, api_key, model, source="http", default_quotas=default_quotas
    )
    try:
        admission = await anyio.to_thread.run_sync(admission_call)
    except InvalidKey as exc:
        raise Unauthenticated("Invalid API key.") from exc
    except ModelNotAllowed as exc:
        raise PermissionDenied(
            f"This API key may not use the model {model!r}.", field="model"
        ) from exc
    except QuotaExhausted as exc:
        raise QuotaExceeded(
            f"Quota exceeded: {exc.limit} {exc.quota}.", retry_after=exc.retry_after
        ) from exc
    return LedgerEntry(
        ledger,
        admission.key,
        model,
        started_at=datetime.now(UTC),
        entry_id=admission.entry_id,
    )
