"""Default quotas in the keystore's admission (plumbing/keystore/_admission.py): they hold a key
without quotas of its own, counted from the ledger like a key's own; a key with any quota of
its own is held to its own alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plumbing.keystore import Keystore, QuotaExhausted, Quotas


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


def _admitted(keystore: Keystore, api_key: str, attempts: int, defaults: Quotas | None) -> int:
    """How many of `attempts` admissions pass before the first refusal."""
    for admitted in range(attempts):
        try:
            keystore.admit(api_key, "m", source="http", default_quotas=defaults)
        except QuotaExhausted:
            return admitted
    return attempts


def test_requests_per_minute_default_holds_a_key_without_quotas(keystore: Keystore) -> None:
    api_key, _ = keystore.create_key("no-quotas")
    defaults = Quotas(requests_per_minute=2)
    assert _admitted(keystore, api_key, 5, defaults) == 2
    with pytest.raises(QuotaExhausted) as refused:
        keystore.admit(api_key, "m", source="http", default_quotas=defaults)
    assert (refused.value.quota, refused.value.limit) == ("requests per minute", 2)
    assert 0 < refused.value.retry_after <= 60
    # Without defaults the same key is unlimited (the ledger rows stay).
    assert _admitted(keystore, api_key, 3, None) == 3


def test_tokens_per_day_default_counts_the_keys_finished_usage(keystore: Keystore) -> None:
    api_key, _ = keystore.create_key("no-quotas")
    defaults = Quotas(tokens_per_day=100)
    first = keystore.admit(api_key, "m", source="http", default_quotas=defaults)
    keystore.finish(first.entry_id, status="ok", prompt_tokens=70, completion_tokens=30)
    with pytest.raises(QuotaExhausted) as refused:
        keystore.admit(api_key, "m", source="http", default_quotas=defaults)
    assert (refused.value.quota, refused.value.limit) == ("tokens per day", 100)


@pytest.mark.parametrize(
    ("own", "defaults", "admitted"),
    [
        # The key's own quota wins over the default of the same kind, higher or lower.
        (Quotas(requests_per_minute=4), Quotas(requests_per_minute=1), 4),
        (Quotas(requests_per_minute=1), Quotas(requests_per_minute=4), 1),
        # A key with any quota of its own gets none of the defaults' other kinds.
        (Quotas(tokens_per_day=10**6), Quotas(requests_per_minute=1), 5),
    ],
)
def test_a_key_with_quotas_of_its_own_ignores_the_defaults(
    keystore: Keystore, own: Quotas, defaults: Quotas, admitted: int
) -> None:
    api_key, record = keystore.create_key(
        "own-quotas",
        requests_per_minute=own.requests_per_minute,
        tokens_per_day=own.tokens_per_day,
    )
    assert record.quotas == own
    assert record.has_quotas
    assert _admitted(keystore, api_key, 5, defaults) == admitted


def test_quotas_are_limited_only_with_a_limit() -> None:
    assert not Quotas().limited
    assert Quotas(requests_per_minute=1).limited
    assert Quotas(tokens_per_day=1).limited
