"""API keys on the edge: where a request carries its key, and checking it.

OpenAI's SDK sends `Authorization: Bearer <key>`, Anthropic's `x-api-key: <key>`; both are
accepted on every route. The key is checked against the shared keystore (`plumbing.keystore`);
it is never logged.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers

from gateway.errors import Unauthenticated
from plumbing.keystore import InvalidKey, KeyRecord, Keystore

__all__ = ["api_key_from_headers", "authenticate"]


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


async def authenticate(keystore: Keystore, headers: Headers) -> KeyRecord:
    """The record of the request's valid key; raises `Unauthenticated`."""
    api_key = api_key_from_headers(headers)
    try:
        return await asyncio.to_thread(keystore.authenticate, api_key)
    except InvalidKey as exc:
        raise Unauthenticated("Invalid API key.") from exc
