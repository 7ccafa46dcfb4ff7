"""The keystore's refusals.

KeystoreError
├── InvalidKey        missing, malformed, unknown or revoked key, or a wrong secret
├── ModelNotAllowed   the key's allow-list does not name the model
└── QuotaExhausted    a quota is used up (`retry_after` seconds until it frees up)
"""

from __future__ import annotations

__all__ = ["InvalidKey", "KeystoreError", "ModelNotAllowed", "QuotaExhausted"]


class KeystoreError(Exception):
    """Base of the keystore's refusals."""


class InvalidKey(KeystoreError):
    """The key is missing, malformed, unknown, revoked or its secret does not match."""


class ModelNotAllowed(KeystoreError):
    """The key may not use this model."""

    def __init__(self, key_id: str, model: str) -> None:
        super().__init__(f"API key {key_id} may not use model {model!r}")
        self.key_id = key_id
        self.model = model


class QuotaExhausted(KeystoreError):
    """A quota of the key is used up; `retry_after` seconds until it frees up."""

    def __init__(self, key_id: str, quota: str, limit: int, retry_after: int) -> None:
        super().__init__(f"API key {key_id} exceeded its quota of {limit} {quota}")
        self.key_id = key_id
        self.quota = quota
        self.limit = limit
        self.retry_after = retry_after
