"""Failures of the S3-compatible object storage, as the scheduler and the workers see them.

Every storage call raises one of these, never a `minio` or `urllib3` exception::

    StorageError                 not retryable unless a subclass says so
    ├── StorageUnavailable       retryable: server down, refused, timed out, 5xx
    ├── ObjectMissing            not retryable: the bucket or object does not exist
    │   └── ModelNotFound        no such model (or revision) in the models bucket
    ├── PayloadCorrupt           not retryable: the bytes differ from their size or sha256
    └── ModelRevisionExists      not retryable: revisions are immutable, pushing other files fails

Each service maps these onto its own errors once, at its boundary (e.g. `StorageUnavailable` →
a retryable `StreamError`, `PayloadCorrupt` → a non-retryable one).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ModelNotFound",
    "ModelRevisionExists",
    "ObjectMissing",
    "PayloadCorrupt",
    "StorageError",
    "StorageUnavailable",
]


class StorageError(Exception):
    """A storage operation failed; `retryable` says whether trying again later may help."""

    retryable: ClassVar[bool] = False


class StorageUnavailable(StorageError):
    """The storage server could not be reached or did not answer in time."""

    retryable: ClassVar[bool] = True


class ObjectMissing(StorageError):
    """The bucket or the object does not exist (e.g. a payload already deleted or swept)."""


class ModelNotFound(ObjectMissing):
    """The model, or the requested revision of it, is not in the models bucket."""


class PayloadCorrupt(StorageError):
    """The stored bytes do not match the size or SHA-256 their reference or manifest records."""


class ModelRevisionExists(StorageError):
    """A push named an existing revision with different contents (revisions are immutable)."""
