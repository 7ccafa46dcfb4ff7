"""Admission: a request is let in when its key is valid, allows the model and has quota left.

Quotas (a key's own, or the caller's defaults for a key without any) are counted from the
usage ledger, so every gateway replica and scheduler sharing the database sees the same
numbers. The admission and the request's `running` ledger row are one transaction, serialised
per key by a write to the key's row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plumbing.keystore._errors import ModelNotAllowed, QuotaExhausted
from plumbing.keystore._keys import KeyRecord, verified_key
from plumbing.keystore._ledger import UsageSource, open_entry
from plumbing.keystore._quotas import Quotas
from plumbing.keystore._tables import api_keys, as_utc, usage_ledger

__all__ = ["Admission", "admit"]


@dataclass(frozen=True)
class Admission:
    """An admitted request: the key and the id of its (running) ledger row."""

    key: KeyRecord
    entry_id: int


def admit(
    connection: Connection,
    key_id: str,
    secret: str,
    model: str,
    *,
    source: UsageSource,
    request_id: str | None,
    default_quotas: Quotas | None = None,
) -> Admission:
    """Checks the key, its model permission and quotas, and opens the request's ledger row.

    A key with quotas of its own is held to those alone; a key without is held to
    `default_quotas` (None = no limit), counted from the ledger the same way.
    Raises `InvalidKey`, `ModelNotAllowed` or `QuotaExhausted`.
    """
    connection.execute(
        api_keys.update().where(api_keys.c.key_id == key_id).values(last_used_at=_now())
    )
    # Read the clock once the key's lock is held: admissions of one key are ordered.
    now = _now()
    key = verified_key(connection, key_id, secret)
    if not key.allows(model):
        raise ModelNotAllowed(key_id, model)
    quotas = key.quotas if key.has_quotas else default_quotas
    if quotas is not None:
        _check_quotas(connection, key.key_id, quotas, now)
    entry_id = open_entry(
        connection,
        key_id=key_id,
        model=model,
        source=source,
        request_id=request_id,
        started_at=now,
    )
    return Admission(key=key, entry_id=entry_id)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_quotas(connection: Connection, key_id: str, quotas: Quotas, now: datetime) -> None:
    if quotas.requests_per_minute is not None:
        window_start = now - timedelta(minutes=1)
        count, oldest = connection.execute(
            sa.select(sa.func.count(), sa.func.min(usage_ledger.c.started_at)).where(
                usage_ledger.c.key_id == key_id, usage_ledger.c.started_at > window_start
            )
        ).one()
        if count >= quotas.requests_per_minute:
            frees_at = as_utc(oldest) + timedelta(minutes=1) if oldest is not None else now
            raise QuotaExhausted(
                key_id,
                "requests per minute",
                quotas.requests_per_minute,
                max(1, math.ceil((frees_at - now).total_seconds())),
            )
    if quotas.tokens_per_day is not None:
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = connection.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(usage_ledger.c.prompt_tokens + usage_ledger.c.completion_tokens),
                    0,
                )
            ).where(usage_ledger.c.key_id == key_id, usage_ledger.c.started_at >= day_start)
        ).scalar_one()
        if used >= quotas.tokens_per_day:
            next_day = day_start + timedelta(days=1)
            raise QuotaExhausted(
                key_id,
                "tokens per day",
                quotas.tokens_per_day,
                max(1, math.ceil((next_day - now).total_seconds())),
            )
