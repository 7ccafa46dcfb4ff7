"""The keystore's schema: the API keys table and the usage ledger, one SQLAlchemy Core
schema for SQLite and PostgreSQL. Every stored datetime is UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

__all__ = ["api_keys", "as_utc", "metadata", "usage_ledger"]

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
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

usage_ledger = sa.Table(
    "usage_ledger",
    metadata,
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


def as_utc(value: datetime) -> datetime:
    """A stored datetime as an aware UTC one (SQLite returns naive datetimes)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
