"""Verified API keys are remembered for `ttl` seconds; refused ones never (gateway/auth.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from gateway.auth import KeyCache
from gateway.errors import Unauthenticated
from plumbing.keystore import Keystore


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[Keystore]:
    store = Keystore.open(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    yield store
    store.close()


async def test_a_verified_key_is_trusted_until_its_ttl(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("alice")
    cache = KeyCache(keystore, ttl=3600)
    assert (await cache.verify(api_key)).key_id == record.key_id
    keystore.revoke_key(record.key_id)
    # Within the TTL the revocation is not seen: the cost of no database round trip.
    assert (await cache.verify(api_key)).key_id == record.key_id


async def test_ttl_zero_asks_the_keystore_every_time(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("bob")
    cache = KeyCache(keystore, ttl=0)
    await cache.verify(api_key)
    keystore.revoke_key(record.key_id)
    with pytest.raises(Unauthenticated):
        await cache.verify(api_key)


async def test_refused_keys_are_not_cached(keystore: Keystore) -> None:
    cache = KeyCache(keystore, ttl=3600)
    api_key, _ = keystore.create_key("carol")
    wrong = api_key + "x"
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await cache.verify(wrong)
    assert (await cache.verify(api_key)).owner == "carol"


async def test_the_least_recently_verified_key_is_dropped_first(keystore: Keystore) -> None:
    cache = KeyCache(keystore, ttl=3600, max_keys=2)
    keys = [keystore.create_key(f"user-{number}") for number in range(3)]
    for api_key, _ in keys:
        await cache.verify(api_key)
    keystore.revoke_key(keys[0][1].key_id)
    keystore.revoke_key(keys[2][1].key_id)
    with pytest.raises(Unauthenticated):
        await cache.verify(keys[0][0])  # Dropped: asked again, and revoked.
    assert (await cache.verify(keys[2][0])).owner == "user-2"  # Still cached.


async def test_authenticate_reads_either_header(keystore: Keystore) -> None:
    api_key, record = keystore.create_key("dave")
    cache = KeyCache(keystore, ttl=10)
    for headers in ({"authorization": f"Bearer {api_key}"}, {"x-api-key": api_key}):
        assert await cache.authenticate(Headers(headers)) == (api_key, record)
    with pytest.raises(Unauthenticated):
        await cache.authenticate(Headers({}))
