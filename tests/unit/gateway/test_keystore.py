"""The keystore on SQLite: key format, permissions, quotas, the ledger (plumbing/keystore.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from plumbing.keystore import (
    InvalidKey,
    Keystore,
    ModelNotAllowed,
    QuotaExhausted,
    database_url,
    parse_key,
)
from plumbing.settings import MeshSettings


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


def test_key_format_and_storage(keystore: Keystore, tmp_path: Path) -> None:
    api_key, record = keystore.create_key("alice")
    key_id, secret = parse_key(api_key)
    assert api_key == f"lm-{key_id}.{secret}"
    assert key_id == record.key_id
    assert len(secret) >= 43  # 32 random bytes, base64url
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT * FROM api_keys")).one()._mapping
    engine.dispose()
    assert secret not in {str(value) for value in stored.values()}
    assert stored["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize("api_key", ["", "sk-abc", "lm-", "lm-abc", "lm-.secret", "lm-abc."])
def test_malformed_keys_are_invalid(keystore: Keystore, api_key: str) -> None:
    with pytest.raises(InvalidKey):
        keystore.authenticate(api_key)


def test_wrong_secret_unknown_id_and_revoked_key_are_invalid(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("alice")
    assert keystore.authenticate(api_key).owner == "alice"
    key_id, secret = parse_key(api_key)
    with pytest.raises(InvalidKey):
        keystore.authenticate(f"lm-{key_id}.{secret}x")
    with pytest.raises(InvalidKey):
        keystore.authenticate(f"lm-0000000000000000.{secret}")
    assert keystore.revoke_key(record.key_id)
    assert not keystore.revoke_key(record.key_id)
    with pytest.raises(InvalidKey):
        keystore.authenticate(api_key)
    assert keystore.list_keys()[0].revoked_at is not None


def test_allowed_models(keystore: Keystore) -> None:
    api_key, _ = keystore.create_key("bob", allowed_models=["a"])
    keystore.admit(api_key, "a", source="http")
    with pytest.raises(ModelNotAllowed):
        keystore.admit(api_key, "b", source="http")


def test_requests_per_minute_holds_under_concurrency(keystore: Keystore) -> None:
    api_key, _ = keystore.create_key("carol", requests_per_minute=3)

    def attempt(_: int) -> int | None:
        try:
            keystore.admit(api_key, "m", source="http")
        except QuotaExhausted as exc:
            assert exc.quota == "requests per minute"
            return exc.retry_after
        return None

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(attempt, range(10)))
    assert outcomes.count(None) == 3
    assert all(0 < retry <= 60 for retry in outcomes if retry is not None)


def test_tokens_per_day_counts_finished_usage(keystore: Keystore) -> None:
    api_key, _ = keystore.create_key("dave", tokens_per_day=100)
    first = keystore.admit(api_key, "m", source="http")
    keystore.finish(first.entry_id, status="ok", prompt_tokens=60, completion_tokens=40)
    with pytest.raises(QuotaExhausted) as refused:
        keystore.admit(api_key, "m", source="http")
    assert refused.value.quota == "tokens per day"
    assert 0 < refused.value.retry_after <= 86_400


def test_finish_records_exactly_once_and_totals(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("erin")
    entries = [keystore.admit(api_key, "m", source="http") for _ in range(3)]
    assert keystore.finish(entries[0].entry_id, status="ok", prompt_tokens=5, completion_tokens=7)
    assert not keystore.finish(
        entries[0].entry_id, status="error", prompt_tokens=0, completion_tokens=0
    )
    keystore.finish(entries[1].entry_id, status="cancelled", prompt_tokens=5, completion_tokens=2)
    keystore.finish(
        entries[2].entry_id,
        status="error",
        prompt_tokens=5,
        completion_tokens=0,
        request_id="req-1",
        total_ms=12.5,
    )
    records = keystore.usage_records(key_id=record.key_id)
    assert [r.status for r in records] == ["ok", "cancelled", "error"]
    assert records[2].request_id == "req-1" and records[2].total_ms == 12.5
    (total,) = keystore.usage_totals()
    assert (total.requests, total.ok, total.cancelled, total.errors) == (3, 1, 1, 1)
    assert (total.prompt_tokens, total.completion_tokens) == (15, 9)
    later = records[-1].started_at.replace(year=records[-1].started_at.year + 1)
    assert keystore.usage_totals(since=later) == []


def test_database_url_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    assert database_url(MeshSettings(data_dir=tmp_path)) == (
        f"sqlite:///{tmp_path / 'llm-mesh.sqlite3'}"
    )
    assert database_url(MeshSettings(database_url="postgresql://u@h/db")) == (
        "postgresql+psycopg://u@h/db"
    )
