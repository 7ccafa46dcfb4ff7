"""Usage outcomes are committed in batches, each writer waiting for its own (gateway/ledger.py),
and `Keystore.record_outcomes` completes running rows and inserts whole ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.ledger import LedgerWriter
from plumbing.keystore import Keystore, UsageOutcome


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


def _outcome(key_id: str, tokens: int, entry_id: int | None = None) -> UsageOutcome:
    return UsageOutcome(
        key_id=key_id,
        model="m",
        source="http",
        started_at=datetime.now(UTC),
        status="ok",
        prompt_tokens=2,
        completion_tokens=tokens,
        entry_id=entry_id,
        request_id=f"request-{tokens}",
        total_ms=12.5,
    )


class _CountingKeystore(Keystore):
    """Records the size of every batch it commits."""

    batches: list[int]

    def record_outcomes(self, outcomes: Iterable[UsageOutcome]) -> None:
        batch = list(outcomes)
        self.batches.append(len(batch))
        super().record_outcomes(batch)


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    keystore = _CountingKeystore.open(f"sqlite:///{tmp_path / 'batched.sqlite3'}")
    assert isinstance(keystore, _CountingKeystore)
    keystore.batches = []
    try:
        _, record = keystore.create_key("alice")
        writer = LedgerWriter(keystore, max_batch=8)
        await asyncio.gather(*(writer.write(_outcome(record.key_id, n)) for n in range(20)))
        await writer.aclose()
        rows = keystore.usage_records(key_id=record.key_id)
        assert sorted(row.completion_tokens for row in rows) == list(range(20))
        assert {row.status for row in rows} == {"ok"}
        # The first write commits alone; the rest queue behind it in batches of <= 8.
        assert sum(keystore.batches) == 20 and max(keystore.batches) <= 8
        assert len(keystore.batches) < 20
    finally:
        keystore.close()


async def test_running_rows_are_completed_once(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("bob", requests_per_minute=100)
    admission = keystore.admit(api_key, "m", source="http")
    (running,) = keystore.usage_records(key_id=record.key_id)
    assert running.status == "running"
    writer = LedgerWriter(keystore)
    await writer.write(_outcome(record.key_id, 7, entry_id=admission.entry_id))
    await writer.write(_outcome(record.key_id, 9, entry_id=admission.entry_id))
    (row,) = keystore.usage_records(key_id=record.key_id)
    assert (row.status, row.completion_tokens, row.request_id) == ("ok", 7, "request-7")
    assert row.finished_at is not None and row.total_ms == 12.5


class _BrokenKeystore(Keystore):
    """A database that refuses every write of the ledger."""

    def record_outcomes(self, outcomes: Iterable[UsageOutcome]) -> None:
        raise OSError("disk full")


async def test_a_failed_commit_reaches_every_writer_of_its_batch(tmp_path: Path) -> None:
    keystore = _BrokenKeystore.open(f"sqlite:///{tmp_path / 'broken.sqlite3'}")
    try:
        writer = LedgerWriter(keystore)
        results = await asyncio.gather(
            *(writer.write(_outcome("key", tokens)) for tokens in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(result, OSError) for result in results)
        await writer.aclose()
    finally:
        keystore.close()
