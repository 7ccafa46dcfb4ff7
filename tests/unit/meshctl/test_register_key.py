"""`llm-mesh keys create --key-from-env`: a key made elsewhere, stored once, idempotently."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.keys import KeyConflict, register_key
from plumbing.keystore import InvalidKey, Keystore


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


def _generated() -> str:
    """A key as the README's deploy commands generate it."""
    return f"lm-{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"


def test_a_key_is_stored_once_and_then_found(keystore: Keystore) -> None:
    api_key = _generated()
    record, created = register_key(keystore, api_key, owner="gateway", service=True)
    assert created
    again, created_again = register_key(keystore, api_key, owner="gateway", service=True)
    assert (again, created_again) == (record, False)
    assert keystore.authenticate(api_key) == record
    assert (record.owner, record.service) == ("gateway", True)
    assert [key.key_id for key in keystore.list_keys()] == [record.key_id]


def test_models_and_quotas_are_stored_and_compared(keystore: Keystore) -> None:
    api_key = _generated()
    record, _created = register_key(
        keystore, api_key, owner="team", allowed_models=["b", "a"], requests_per_minute=5
    )
    assert (record.allowed_models, record.requests_per_minute) == (frozenset({"a", "b"}), 5)
    assert not register_key(
        keystore, api_key, owner="team", allowed_models=["a", "b"], requests_per_minute=5
    )[1]
    with pytest.raises(KeyConflict, match="other attributes"):
        register_key(keystore, api_key, owner="team", allowed_models=["a"], requests_per_minute=5)
    with pytest.raises(KeyConflict, match="other attributes"):
        register_key(keystore, api_key, owner="team", allowed_models=["a", "b"], tokens_per_day=9)


@pytest.mark.parametrize(("owner", "service"), [("someone-else", True), ("gateway", False)])
def test_a_stored_key_with_other_attributes_is_refused(
    keystore: Keystore, owner: str, service: bool
) -> None:
    api_key = _generated()
    register_key(keystore, api_key, owner="gateway", service=True)
    with pytest.raises(KeyConflict, match="other attributes"):
        register_key(keystore, api_key, owner=owner, service=service)


def test_a_revoked_key_is_not_brought_back(keystore: Keystore) -> None:
    api_key = _generated()
    record, _created = register_key(keystore, api_key, owner="gateway", service=True)
    assert keystore.revoke_key(record.key_id)
    with pytest.raises(KeyConflict, match="revoked key or to another secret"):
        register_key(keystore, api_key, owner="gateway", service=True)
    with pytest.raises(InvalidKey):
        keystore.authenticate(api_key)


def test_a_taken_key_id_with_another_secret_is_refused(keystore: Keystore) -> None:
    api_key = _generated()
    register_key(keystore, api_key, owner="gateway", service=True)
    impostor = api_key.split(".")[0] + "." + secrets.token_urlsafe(32)
    with pytest.raises(KeyConflict, match="revoked key or to another secret"):
        register_key(keystore, impostor, owner="gateway", service=True)
    assert len(keystore.list_keys()) == 1


@pytest.mark.parametrize(
    "api_key",
    ["sk-0123456789abcdef." + "s" * 43, "lm-0123456789abcdef", "lm-0123456789abcdef." + "s" * 42],
)
def test_malformed_keys_and_short_secrets_are_refused(keystore: Keystore, api_key: str) -> None:
    with pytest.raises(InvalidKey):
        register_key(keystore, api_key, owner="gateway", service=True)
    assert keystore.list_keys() == []
