"""API keys on the edge: where a request carries its key, and checking it.

OpenAI's SDK sends `Authorization: Bearer <key>`, Anthropic's `x-api-key: <key>`; both are
accepted on every route. The key is checked against the shared keystore (`plumbing.keystore`);
it is never logged.

`KeyCache` keeps verified keys in memory for a short time (`key_cache_ttl`), so a stream
does not start with a database round trip: a revoked key keeps working on a gateway for at
most that long. Refused keys are never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Final

from starlette.datastructures import Headers

from gateway.errors import Unauthenticated
from plumbing.keystore import InvalidKey, KeyRecord, Keystore

__all__ = ["KeyCache", "api_key_from_headers"]

#: Most verified keys remembered (least recently verified dropped first).
_MAX_KEYS: Final = 4096


def api_key_from_headers(headers: Headers) -> str:
    """The request's API key; raises `Unauthenticated` when there is none."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    raise Unauthenticated(
        "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
    )


class KeyCache:
    """Verifies API keys against the keystore, remembering valid ones for `ttl` seconds.

    Entries are indexed by the SHA-256 of the whole key, so the cache never holds a secret.
    `ttl` 0 asks the keystore every time.
    """

    def __init__(self, keystore: Keystore, *, ttl: float, max_keys: int = _MAX_KEYS) -> None:
        self._keystore = keystore
        self._ttl = ttl
        self._max_keys = max_keys
        self._verified: OrderedDict[bytes, tuple[float, KeyRecord]] = OrderedDict()

    async def verify(self, api_key: str) -> KeyRecord:
        """The record of a valid, active key; raises `Unauthenticated`."""
        fingerprint = hashlib.sha256(api_key.encode()).digest()
        cached = self._verified.get(fingerprint)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = await asyncio.to_thread(self._keystore.authenticate, api_key)
        except InvalidKey as exc:
            self._verified.pop(fingerprint, None)
            raise Unauthenticated("Invalid API key.") from exc
        if self._ttl > 0:
            self._verified[fingerprint] = (time.monotonic() + self._ttl, record)
            self._verified.move_to_end(fingerprint)
            while len(self._verified) > self._max_keys:
                self._verified.popitem(last=False)
        return record

    async def authenticate(self, headers: Headers) -> tuple[str, KeyRecord]:
        """The request's key and its record; raises `Unauthenticated`."""
        api_key = api_key_from_headers(headers)
        return api_key, await self.verify(api_key)
