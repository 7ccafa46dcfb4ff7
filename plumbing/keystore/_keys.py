"""API keys: their format, creation, revocation and verification.

Keys look like `lm-<key id>.<secret>` (DESIGN.md, "API keys"): the database keeps the key id
and the SHA-256 of the secret (a high-entropy secret needs a fast hash, not a password hash),
looks keys up by id and compares digests in constant time. Secrets are never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plumbing.keystore._errors import InvalidKey
from plumbing.keystore._quotas import Quotas
from plumbing.keystore._tables import api_keys, as_utc

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "insert_key",
    "parse_key",
    "revoke_key",
    "select_keys",
    "verified_key",
]

#: Every API key starts with this.
KEY_PREFIX: Final = "lm-"
_SECRET_BYTES: Final = 32
#: The length of `_SECRET_BYTES` random bytes in base64url: the shortest secret accepted from
#: outside (`insert_key(api_key=...)`).
_MIN_SECRET_CHARS: Final = 43


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
    def quotas(self) -> Quotas:
        """The key's own quotas."""
        return Quotas(
            requests_per_minute=self.requests_per_minute, tokens_per_day=self.tokens_per_day
        )

    @property
    def has_quotas(self) -> bool:
        """Whether the key has quotas of its own (admitting its requests then needs the
        ledger: a quota counts from it)."""
        return self.quotas.limited


def parse_key(api_key: str) -> tuple[str, str]:
    """Splits `lm-<key id>.<secret>` into (key id, secret); raises `InvalidKey`."""
    if not api_key.startswith(KEY_PREFIX):
        raise InvalidKey("API key must start with 'lm-'")
    key_id, dot, secret = api_key[len(KEY_PREFIX) :].partition(".")
    if not dot or not key_id or not secret or len(key_id) > 32:
        raise InvalidKey("malformed API key")
    return key_id, secret


def insert_key(
    connection: Connection,
    owner: str,
    *,
    allowed_models: Iterable[str] | None,
    requests_per_minute: int | None,
    tokens_per_day: int | None,
    service: bool,
    api_key: str | None = None,
) -> tuple[str, KeyRecord]:
    """Stores a new key; returns the full key (never stored) and its record.

    `api_key` stores a key made elsewhere (e.g. a deployment's generated service credential)
    instead of a random one; raises `InvalidKey` when it is malformed or its secret is
    shorter than 32 random bytes in base64url, and the database's integrity error when its
    key id is taken.
    """
    if api_key is None:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
    else:
        key_id, secret = parse_key(api_key)
        if len(secret) < _MIN_SECRET_CHARS:
            raise InvalidKey(
                f"the secret after the '.' must have at least {_MIN_SECRET_CHARS} characters "
                f"({_SECRET_BYTES} random bytes in base64url)"
            )
    record = KeyRecord(
        key_id=key_id,
        owner=owner,
        allowed_models=None if allowed_models is None else frozenset(allowed_models),
        requests_per_minute=requests_per_minute,
        tokens_per_day=tokens_per_day,
        service=service,
        created_at=datetime.now(UTC),
        revoked_at=None,
    )
    connection.execute(
        api_keys.insert().values(
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


def select_keys(connection: Connection) -> list[KeyRecord]:
    """Every key, revoked ones included, oldest first."""
    rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
    return [_key_record(row._mapping) for row in rows]


def revoke_key(connection: Connection, key_id: str) -> bool:
    """Revokes a key; False when no active key has this id."""
    result = connection.execute(
        api_keys.update()
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return result.rowcount == 1


def verified_key(connection: Connection, key_id: str, secret: str) -> KeyRecord:
    """The record of the active key `key_id` whose secret is `secret`; raises `InvalidKey`."""
    row = connection.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).one_or_none()
    # Compare even for unknown ids, so timing does not reveal which ids exist.
    stored = row._mapping["secret_sha256"] if row is not None else "0" * 64
    matches = hmac.compare_digest(stored, _digest(secret))
    if row is None or not matches or row._mapping["revoked_at"] is not None:
        raise InvalidKey("invalid API key")
    return _key_record(row._mapping)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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
        created_at=as_utc(row["created_at"]),
        revoked_at=None if revoked is None else as_utc(revoked),
    )
