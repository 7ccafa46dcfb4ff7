"""Admission against a key's permissions and quotas, and the request's usage record.

`admit` checks the key, the model permission and the quotas and opens the request's ledger
row in one transaction (`plumbing.keystore`); the returned `LedgerEntry` records the request's
usage exactly once when it ends, however it ends (`close`, idempotent, shielded from the
cancellation of a disconnecting client's task).
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import anyio
import anyio.to_thread

from gateway.errors import PermissionDenied, QuotaExceeded, Unauthenticated
from plumbing.keystore import (
    Admission,
    InvalidKey,
    KeyRecord,
    Keystore,
    ModelNotAllowed,
    QuotaExhausted,
)
from plumbing.usage_meter import UsageMeter

__all__ = ["LedgerEntry", "admit"]

logger = logging.getLogger(__name__)

#: Bound of the ledger write when a request ends (it runs shielded from cancellation).
_RECORD_TIMEOUT = 30.0


class LedgerEntry:
    """An admitted request's ledger row."""

    def __init__(self, keystore: Keystore, admission: Admission) -> None:
        self._keystore = keystore
        self._admission = admission
        self._closed = False

    @property
    def key(self) -> KeyRecord:
        """The admitted key."""
        return self._admission.key

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
        finish = functools.partial(
            self._keystore.finish,
            self._admission.entry_id,
            status=status or meter.status(),
            prompt_tokens=meter.prompt_tokens,
            completion_tokens=meter.completion_tokens,
            request_id=meter.request_id,
            queued_ms=queued_ms,
            time_to_first_token_ms=first_token_ms,
            total_ms=total_ms,
        )
        with anyio.move_on_after(_RECORD_TIMEOUT, shield=True) as scope:
            await anyio.to_thread.run_sync(finish)
        if scope.cancelled_caught:
            logger.error("usage record %s not written in time", self._admission.entry_id)


async def admit(keystore: Keystore, api_key: str, model: str) -> LedgerEntry:
    """Admits one request for `model`.

    Raises `Unauthenticated`, `PermissionDenied` or `QuotaExceeded` (with `retry_after`).
    """
    admission_call = functools.partial(keystore.admit, api_key, model, source="http")
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
    return LedgerEntry(keystore, admission)
