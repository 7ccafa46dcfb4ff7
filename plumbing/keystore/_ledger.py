"""The usage ledger: one row per request, opened while it runs or written whole when it ends.

A row opened by an admission has status `running` until it is completed exactly once with the
tokens and status (`ok`, `error`, `cancelled`); a request whose key has no quotas gets its row
only when it ends. Totals are counted per key and model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plumbing.keystore._tables import api_keys, as_utc, usage_ledger

__all__ = [
    "EndStatus",
    "UsageOutcome",
    "UsageRecord",
    "UsageSource",
    "UsageStatus",
    "UsageTotal",
    "complete_entry",
    "ending",
    "open_entry",
    "select_records",
    "select_totals",
    "write_outcomes",
]

UsageStatus = Literal["running", "ok", "error", "cancelled"]
EndStatus = Literal["ok", "error", "cancelled"]
UsageSource = Literal["http", "grpc"]


@dataclass(frozen=True)
class UsageOutcome:
    """How one request ended, for `record_outcomes`.

    With `entry_id` it completes that running row (admitted by `admit`); without, it is the
    whole row of a request whose key has no quotas (so it was admitted without one).
    """

    key_id: str
    model: str
    source: UsageSource
    started_at: datetime
    status: EndStatus
    prompt_tokens: int
    completion_tokens: int
    entry_id: int | None = None
    request_id: str | None = None
    queued_ms: float | None = None
    time_to_first_token_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True)
class UsageRecord:
    """One ledger row."""

    entry_id: int
    key_id: str
    model: str
    source: str
    request_id: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    started_at: datetime
    finished_at: datetime | None
    queued_ms: float | None
    time_to_first_token_ms: float | None
    total_ms: float | None


@dataclass(frozen=True)
class UsageTotal:
    """Totals of one key and model over a time range."""

    key_id: str
    owner: str
    model: str
    requests: int
    ok: int
    errors: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int


def open_entry(
    connection: Connection,
    *,
    key_id: str,
    model: str,
    source: UsageSource,
    request_id: str | None,
    started_at: datetime,
) -> int:
    """Inserts a `running` row for a request that starts now; returns its id."""
    entry_id = connection.execute(
        usage_ledger.insert()
        .values(
            key_id=key_id,
            model=model,
            source=source,
            request_id=request_id,
            status="running",
            prompt_tokens=0,
            completion_tokens=0,
            started_at=started_at,
        )
        .returning(usage_ledger.c.id)
    ).scalar_one()
    return int(entry_id)


def complete_entry(connection: Connection, entry_id: int, values: dict[str, Any]) -> bool:
    """Completes a running row with `ending(...)` values; False when it was already finished."""
    result = connection.execute(
        usage_ledger.update()
        .where(usage_ledger.c.id == entry_id, usage_ledger.c.status == "running")
        .values(**values)
    )
    return result.rowcount == 1


def ending(
    *,
    status: EndStatus,
    prompt_tokens: int,
    completion_tokens: int,
    finished_at: datetime,
    request_id: str | None,
    queued_ms: float | None,
    time_to_first_token_ms: float | None,
    total_ms: float | None,
) -> dict[str, Any]:
    """The column values that end a request (a known `request_id` is kept when None)."""
    values: dict[str, Any] = {
        "status": status,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finished_at": finished_at,
        "queued_ms": queued_ms,
        "time_to_first_token_ms": time_to_first_token_ms,
        "total_ms": total_ms,
    }
    if request_id is not None:
        values["request_id"] = request_id
    return values


def write_outcomes(connection: Connection, outcomes: Iterable[UsageOutcome]) -> None:
    """Completes the running rows of `outcomes` and inserts the others whole."""
    finished_at = datetime.now(UTC)
    inserts = []
    for outcome in outcomes:
        values = ending(
            status=outcome.status,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            finished_at=finished_at,
            request_id=outcome.request_id,
            queued_ms=outcome.queued_ms,
            time_to_first_token_ms=outcome.time_to_first_token_ms,
            total_ms=outcome.total_ms,
        )
        if outcome.entry_id is not None:
            complete_entry(connection, outcome.entry_id, values)
            continue
        inserts.append(
            {
                "request_id": None,
                **values,
                "key_id": outcome.key_id,
                "model": outcome.model,
                "source": outcome.source,
                "started_at": outcome.started_at,
            }
        )
    if inserts:
        connection.execute(usage_ledger.insert(), inserts)


def select_records(
    connection: Connection,
    *,
    key_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[UsageRecord]:
    """Rows (optionally of one key, started in [since, until)), oldest first."""
    query = sa.select(usage_ledger).order_by(usage_ledger.c.id)
    if key_id is not None:
        query = query.where(usage_ledger.c.key_id == key_id)
    query = _in_range(query, since, until)
    return [_usage_record(row._mapping) for row in connection.execute(query)]


def select_totals(
    connection: Connection, *, since: datetime | None, until: datetime | None
) -> list[UsageTotal]:
    """Totals per key and model of the requests started in [since, until)."""

    def count(status: str) -> Any:
        return sa.func.sum(sa.case((usage_ledger.c.status == status, 1), else_=0))

    query = (
        sa.select(
            usage_ledger.c.key_id,
            api_keys.c.owner,
            usage_ledger.c.model,
            sa.func.count().label("requests"),
            count("ok").label("ok"),
            count("error").label("errors"),
            count("cancelled").label("cancelled"),
            sa.func.coalesce(sa.func.sum(usage_ledger.c.prompt_tokens), 0).label("prompt"),
            sa.func.coalesce(sa.func.sum(usage_ledger.c.completion_tokens), 0).label("completion"),
        )
        .select_from(usage_ledger.outerjoin(api_keys, usage_ledger.c.key_id == api_keys.c.key_id))
        .group_by(usage_ledger.c.key_id, api_keys.c.owner, usage_ledger.c.model)
        .order_by(usage_ledger.c.key_id, usage_ledger.c.model)
    )
    query = _in_range(query, since, until)
    return [
        UsageTotal(
            key_id=row.key_id,
            owner=row.owner or "",
            model=row.model,
            requests=int(row.requests),
            ok=int(row.ok or 0),
            errors=int(row.errors or 0),
            cancelled=int(row.cancelled or 0),
            prompt_tokens=int(row.prompt),
            completion_tokens=int(row.completion),
        )
        for row in connection.execute(query)
    ]


def _in_range(query: Any, since: datetime | None, until: datetime | None) -> Any:
    if since is not None:
        query = query.where(usage_ledger.c.started_at >= since.astimezone(UTC))
    if until is not None:
        query = query.where(usage_ledger.c.started_at < until.astimezone(UTC))
    return query


def _usage_record(row: Any) -> UsageRecord:
    finished = row["finished_at"]
    return UsageRecord(
        entry_id=int(row["id"]),
        key_id=row["key_id"],
        model=row["model"],
        source=row["source"],
        request_id=row["request_id"],
        status=row["status"],
        prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]),
        started_at=as_utc(row["started_at"]),
        finished_at=None if finished is None else as_utc(finished),
        queued_ms=row["queued_ms"],
        time_to_first_token_ms=row["time_to_first_token_ms"],
        total_ms=row["total_ms"],
    )
