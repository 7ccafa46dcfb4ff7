"""API keys, quotas and the usage ledger, shared by the gateway and the scheduler's interceptor.

Keys look like `lm-<key id>.<secret>` (DESIGN.md, "API keys"): the database keeps the key id
and the SHA-256 of the secret (a high-entropy secret needs a fast hash, not a password hash),
looks keys up by id and compares digests in constant time. Secrets are never stored or logged.

The ledger has one row per admitted request: `admit` inserts it (status `running`) in the same
transaction that checks the key's quotas, `finish` completes it exactly once with the tokens
and status (`ok`, `error`, `cancelled`). Each is committed before it returns, so a crash loses
no finished request's record. Quotas are counted from the ledger, so every gateway replica and
scheduler sharing the database sees the same numbers. A key without quotas needs no row while
its request runs: `record_outcomes` writes such requests' rows whole when they end, and
completes running rows, many in one transaction (one commit: the gateway's group commit).

The database is SQLite in `data_dir` by default (WAL, synchronous=FULL) or PostgreSQL when
`LLM_MESH_DATABASE_URL` is a `postgresql://` DSN (driver psycopg 3). The API is synchronous;
async callers run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from plumbing.settings import MeshSettings

__all__ = [
    "KEY_PREFIX",
    "Admission",
    "InvalidKey",
    "KeyRecord",
    "Keystore",
    "KeystoreError",
    "ModelNotAllowed",
    "QuotaExhausted",
    "UsageOutcome",
    "UsageRecord",
    "UsageStatus",
    "UsageTotal",
    "database_url",
    "parse_key",
]

#: Every API key starts with this.
KEY_PREFIX: Final = "lm-"
_SECRET_BYTES: Final = 32
_SQLITE_FILE: Final = "llm-mesh.sqlite3"

UsageStatus = Literal["running", "ok", "error", "cancelled"]
UsageSource = Literal["http", "grpc"]

_metadata = sa.MetaData()
_api_keys = sa.Table(
    "api_keys",
    _metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("allowed_models", sa.JSON, nullable=True),
    sa.Column("requests_per_minute", sa.Integer, nullable=True),
    sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
    sa.Column("service", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    # Written first in every admission: the row lock (PostgreSQL) or the write lock (SQLite)
    # serialises concurrent admissions of one key, so quota counts cannot race.
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
)
_usage = sa.Table(
    "usage_ledger",
    _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("queued_ms", sa.Float, nullable=True),
    sa.Column("time_to_first_token_ms", sa.Float, nullable=True),
    sa.Column("total_ms", sa.Float, nullable=True),
    sa.Index("ix_usage_key_started", "key_id", "started_at"),
    sa.Index("ix_usage_started", "started_at"),
)


class KeystoreError(Exception):
    """Base of the keystore's refusals."""


class InvalidKey(KeystoreError):
    """The key is missing, malformed, unknown, revoked or its secret does not match."""


class ModelNotAllowed(KeystoreError):
    """The key may not use this model."""

    def __init__(self, key_id: str, model: str) -> None:
        super().__init__(f"API key {key_id} may not use model {model!r}")
        self.key_id = key_id
        self.model = model


class QuotaExhausted(KeystoreError):
    """A quota of the key is used up; `retry_after` seconds until it frees up."""

    def __init__(self, key_id: str, quota: str, limit: int, retry_after: int) -> None:
        super().__init__(f"API key {key_id} exceeded its quota of {limit} {quota}")
        self.key_id = key_id
        self.quota = quota
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class KeyRecord:
    """An API key's stored attributes (never its secret)."""

    key_id: str
    owner: str
    allowed_models: frozenset[str] | None
    requests_per_minute: int | None
    tokens_per_day: int | None
    service: bool
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, model: str) -> bool:
        """Whether the key may use `model` (no allow-list = every model)."""
        return self.allowed_models is None or model in self.allowed_models

    @property
    def has_quotas(self) -> bool:
        """Whether admitting the key's requests needs the ledger (a quota counts from it)."""
        return self.requests_per_minute is not None or self.tokens_per_day is not None


@dataclass(frozen=True)
class Admission:
    """An admitted request: the key and the id of its (running) ledger row."""

    key: KeyRecord
    entry_id: int


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
    status: Literal["ok", "error", "cancelled"]
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


def parse_key(api_key: str) -> tuple[str, str]:
    """Splits `lm-<key id>.<secret>` into (key id, secret); raises `InvalidKey`."""
    if not api_key.startswith(KEY_PREFIX):
        raise InvalidKey("API key must start with 'lm-'")
    key_id, dot, secret = api_key[len(KEY_PREFIX) :].partition(".")
    if not dot or not key_id or not secret or len(key_id) > 32:
        raise InvalidKey("malformed API key")
    return key_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def database_url(settings: MeshSettings) -> str:
    """The SQLAlchemy URL of the keys and usage database.

    Empty `database_url` = SQLite file in `data_dir`; `postgresql://` / `postgres://` DSNs get
    the psycopg 3 driver; any other SQLAlchemy URL is taken as it is.
    """
    url = settings.database_url.strip()
    if not url:
        return f"sqlite:///{Path(settings.data_dir) / _SQLITE_FILE}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Keystore:
    """Keys, quotas and the ledger in one database. Thread-safe; every method commits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        _metadata.create_all(engine)

    @classmethod
    def open(cls, url: str) -> Keystore:
        """Opens (creating tables if needed) the database at a SQLAlchemy `url`."""
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        return cls(engine)

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> Keystore:
        """Opens the database the shared settings name."""
        return cls.open(database_url(settings))

    def close(self) -> None:
        """Closes every pooled connection."""
        self._engine.dispose()

    # --- keys -----------------------------------------------------------------------------

    def create_key(
        self,
        owner: str,
        *,
        allowed_models: Iterable[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        service: bool = False,
    ) -> tuple[str, KeyRecord]:
        """Creates a key; returns the full key (shown once, never stored) and its record."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        record = KeyRecord(
            key_id=key_id,
            owner=owner,
            allowed_models=None if allowed_models is None else frozenset(allowed_models),
            requests_per_minute=requests_per_minute,
            tokens_per_day=tokens_per_day,
            service=service,
            created_at=_now(),
            revoked_at=None,
        )
        with self._engine.begin() as connection:
            connection.execute(
                _api_keys.insert().values(
                    key_id=key_id,
                    secret_sha256=_digest(secret),
                    owner=owner,
                    allowed_models=(
                        None if record.allowed_models is None else sorted(record.allowed_models)
                    ),
                    requests_per_minute=requests_per_minute,
                    tokens_per_day=tokens_per_day,
                    service=service,
                    created_at=record.created_at,
                )
            )
        return f"{KEY_PREFIX}{key_id}.{secret}", record

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(_api_keys).order_by(_api_keys.c.created_at))
            return [_key_record(row._mapping) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revokes a key; False when no active key has this id."""
        with self._engine.begin() as connection:
            result = connection.execute(
                _api_keys.update()
                .where(_api_keys.c.key_id == key_id, _api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            return result.rowcount == 1

    def authenticate(self, api_key: str) -> KeyRecord:
        """The record of a valid, active key; raises `InvalidKey`."""
        key_id, secret = parse_key(api_key)
        with self._engine.connect() as connection:
            return self._verified(connection, key_id, secret)

    def _verified(self, connection: Connection, key_id: str, secret: str) -> KeyRecord:
        row = connection.execute(
            sa.select(_api_keys).where(_api_keys.c.key_id == key_id)
        ).one_or_none()
        # Compare even for unknown ids, so timing does not reveal which ids exist.
        stored = row._mapping["secret_sha256"] if row is not None else "0" * 64
        matches = hmac.compare_digest(stored, _digest(secret))
        if row is None or not matches or row._mapping["revoked_at"] is not None:
            raise InvalidKey("invalid API key")
        return _key_record(row._mapping)

    # --- admission and ledger ---------------------------------------------------------------

    def admit(
        self, api_key: str, model: str, *, source: UsageSource, request_id: str | None = None
    ) -> Admission:
        """Checks the key, its model permission and quotas, and opens the request's ledger row.

        Raises `InvalidKey`, `ModelNotAllowed` or `QuotaExhausted`. The caller must `finish`
        the returned entry exactly once, however the request ends.
        """
        key_id, secret = parse_key(api_key)
        with self._engine.begin() as connection:
            connection.execute(
                _api_keys.update().where(_api_keys.c.key_id == key_id).values(last_used_at=_now())
            )
            # Read the clock once the key's lock is held: admissions of one key are ordered.
            now = _now()
            key = self._verified(connection, key_id, secret)
            if not key.allows(model):
                raise ModelNotAllowed(key_id, model)
            _check_quotas(connection, key, now)
            entry_id = connection.execute(
                _usage.insert()
                .values(
                    key_id=key_id,
                    model=model,
                    source=source,
                    request_id=request_id,
                    status="running",
                    prompt_tokens=0,
                    completion_tokens=0,
                    started_at=now,
                )
                .returning(_usage.c.id)
            ).scalar_one()
        return Admission(key=key, entry_id=int(entry_id))

    def finish(
        self,
        entry_id: int,
        *,
        status: Literal["ok", "error", "cancelled"],
        prompt_tokens: int,
        completion_tokens: int,
        request_id: str | None = None,
        queued_ms: float | None = None,
        time_to_first_token_ms: float | None = None,
        total_ms: float | None = None,
    ) -> bool:
        """Completes a running ledger row; False when it was already finished (no change)."""
        values: dict[str, Any] = {
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finished_at": _now(),
            "queued_ms": queued_ms,
            "time_to_first_token_ms": time_to_first_token_ms,
            "total_ms": total_ms,
        }
        if request_id is not None:
            values["request_id"] = request_id
        with self._engine.begin() as connection:
            result = connection.execute(
                _usage.update()
                .where(_usage.c.id == entry_id, _usage.c.status == "running")
                .values(**values)
            )
            return result.rowcount == 1

    def record_outcomes(self, outcomes: Iterable[UsageOutcome]) -> None:
        """Writes the ends of many requests in one transaction (one commit).

        Running rows are completed unless already finished (no change then, as `finish`);
        outcomes without a row are inserted whole.
        """
        finished_at = _now()
        with self._engine.begin() as connection:
            inserts = []
            for outcome in outcomes:
                values: dict[str, Any] = {
                    "status": outcome.status,
                    "prompt_tokens": outcome.prompt_tokens,
                    "completion_tokens": outcome.completion_tokens,
                    "finished_at": finished_at,
                    "queued_ms": outcome.queued_ms,
                    "time_to_first_token_ms": outcome.time_to_first_token_ms,
                    "total_ms": outcome.total_ms,
                }
                if outcome.request_id is not None:
                    values["request_id"] = outcome.request_id
                if outcome.entry_id is not None:
                    connection.execute(
                        _usage.update()
                        .where(_usage.c.id == outcome.entry_id, _usage.c.status == "running")
                        .values(**values)
                    )
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
                connection.execute(_usage.insert(), inserts)

    def usage_records(
        self,
        *,
        key_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRecord]:
        """Ledger rows (optionally of one key, started in [since, until)), oldest first."""
        query = sa.select(_usage).order_by(_usage.c.id)
        if key_id is not None:
            query = query.where(_usage.c.key_id == key_id)
        query = _in_range(query, since, until)
        with self._engine.connect() as connection:
            return [_usage_record(row._mapping) for row in connection.execute(query)]

    def usage_totals(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[UsageTotal]:
        """Totals per key and model of the requests started in [since, until)."""

        def count(status: str) -> Any:
            return sa.func.sum(sa.case((_usage.c.status == status, 1), else_=0))

        query = (
            sa.select(
                _usage.c.key_id,
                _api_keys.c.owner,
                _usage.c.model,
                sa.func.count().label("requests"),
                count("ok").label("ok"),
                count("error").label("errors"),
                count("cancelled").label("cancelled"),
                sa.func.coalesce(sa.func.sum(_usage.c.prompt_tokens), 0).label("prompt"),
                sa.func.coalesce(sa.func.sum(_usage.c.completion_tokens), 0).label("completion"),
            )
            .select_from(_usage.outerjoin(_api_keys, _usage.c.key_id == _api_keys.c.key_id))
            .group_by(_usage.c.key_id, _api_keys.c.owner, _usage.c.model)
            .order_by(_usage.c.key_id, _usage.c.model)
        )
        query = _in_range(query, since, until)
        with self._engine.connect() as connection:
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
        query = query.where(_usage.c.started_at >= since.astimezone(UTC))
    if until is not None:
        query = query.where(_usage.c.started_at < until.astimezone(UTC))
    return query


def _check_quotas(connection: Connection, key: KeyRecord, now: datetime) -> None:
    if key.requests_per_minute is not None:
        window_start = now - timedelta(minutes=1)
        count, oldest = connection.execute(
            sa.select(sa.func.count(), sa.func.min(_usage.c.started_at)).where(
                _usage.c.key_id == key.key_id, _usage.c.started_at > window_start
            )
        ).one()
        if count >= key.requests_per_minute:
            frees_at = _utc(oldest) + timedelta(minutes=1) if oldest is not None else now
            raise QuotaExhausted(
                key.key_id,
                "requests per minute",
                key.requests_per_minute,
                max(1, math.ceil((frees_at - now).total_seconds())),
            )
    if key.tokens_per_day is not None:
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = connection.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(_usage.c.prompt_tokens + _usage.c.completion_tokens), 0
                )
            ).where(_usage.c.key_id == key.key_id, _usage.c.started_at >= day_start)
        ).scalar_one()
        if used >= key.tokens_per_day:
            next_day = day_start + timedelta(days=1)
            raise QuotaExhausted(
                key.key_id,
                "tokens per day",
                key.tokens_per_day,
                max(1, math.ceil((next_day - now).total_seconds())),
            )


def _key_record(row: Any) -> KeyRecord:
    allowed = row["allowed_models"]
    revoked = row["revoked_at"]
    return KeyRecord(
        key_id=row["key_id"],
        owner=row["owner"],
        allowed_models=None if allowed is None else frozenset(allowed),
        requests_per_minute=row["requests_per_minute"],
        tokens_per_day=row["tokens_per_day"],
        service=bool(row["service"]),
        created_at=_utc(row["created_at"]),
        revoked_at=None if revoked is None else _utc(revoked),
    )


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
        started_at=_utc(row["started_at"]),
        finished_at=None if finished is None else _utc(finished),
        queued_ms=row["queued_ms"],
        time_to_first_token_ms=row["time_to_first_token_ms"],
        total_ms=row["total_ms"],
    )
