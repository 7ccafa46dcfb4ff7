"""The keys `llm-mesh up` keeps in its data directory: created once, reused, replaced when dead."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl._stored_keys import stored_key
from plumbing.keystore import Keystore, parse_key


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


def test_first_run_creates_a_private_key_file(keystore: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "state" / "dev-api-key"
    api_key = stored_key(keystore, path, owner="dev")
    assert path.read_text() == api_key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = keystore.authenticate(api_key)
    assert (record.owner, record.service) == ("dev", False)
    assert [entry.name for entry in path.parent.iterdir()] == ["dev-api-key"]


def test_later_runs_reuse_the_key(keystore: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "dev-api-key"
    first = stored_key(keystore, path, owner="dev")
    assert stored_key(keystore, path, owner="dev") == first
    assert len(keystore.list_keys()) == 1


def test_a_revoked_key_is_replaced(keystore: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "dev-api-key"
    first = stored_key(keystore, path, owner="dev")
    assert keystore.revoke_key(parse_key(first)[0])
    second = stored_key(keystore, path, owner="dev")
    assert second != first
    assert keystore.authenticate(second).owner == "dev"
    assert path.read_text().strip() == second


def test_a_key_unknown_to_the_database_is_replaced(tmp_path: Path) -> None:
    """The database was deleted (or LLM_MESH_DATABASE_URL changed) but the file stayed."""
    path = tmp_path / "dev-api-key"
    old = Keystore.open(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    new = Keystore.open(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    try:
        first = stored_key(old, path, owner="dev")
        second = stored_key(new, path, owner="dev")
        assert second != first
        new.authenticate(second)
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize("content", ["", "garbage\n", "lm-nodot\n"])
def test_an_unreadable_file_is_replaced(keystore: Keystore, tmp_path: Path, content: str) -> None:
    path = tmp_path / "dev-api-key"
    path.write_text(content)
    path.chmod(0o644)
    api_key = stored_key(keystore, path, owner="dev")
    keystore.authenticate(api_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_kinds_and_owners_are_not_mixed_up(keystore: Keystore, tmp_path: Path) -> None:
    path = tmp_path / "key"
    user_key = stored_key(keystore, path, owner="dev")
    service_key = stored_key(keystore, path, owner="dev", service=True)
    assert service_key != user_key
    assert keystore.authenticate(service_key).service
    assert stored_key(keystore, path, owner="someone-else", service=True) != service_key
