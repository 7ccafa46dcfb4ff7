"""The `minio` client every storage user shares, and the one place its failures are translated.

The client's HTTP pool has short connect/read timeouts and few retries, so that a storage server
that is down or hung turns into `StorageUnavailable` within seconds instead of minio's default
five minutes times six attempts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from plumbing.settings import MeshSettings
from plumbing.storage_errors import (
    ObjectMissing,
    StorageError,
    StorageUnavailable,
)

__all__ = ["S3Timeouts", "connect_s3", "ensure_bucket", "translate_s3_errors"]

#: S3 error codes that name a missing bucket or object.
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion"})
#: S3 error codes a server sends when it is overloaded or failing; trying later may succeed.
_TRANSIENT_CODES: Final = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
)
#: HTTP statuses urllib3 retries before giving up.
_RETRIED_STATUSES: Final = (500, 502, 503, 504)


@dataclass(frozen=True)
class S3Timeouts:
    """How long one S3 call may wait, in seconds, and how often a failed attempt is repeated.

    `read` bounds each wait for bytes, not a whole transfer: a large download that keeps
    receiving data is never cut off, one that stalls fails after `read` seconds.
    """

    connect: float = 2.0
    read: float = 10.0
    retries: int = 1


def connect_s3(settings: MeshSettings, timeouts: S3Timeouts | None = None) -> Minio:
    """A client for `settings.s3_endpoint` with bounded timeouts; raises ValueError if unset."""
    if not settings.s3_endpoint:
        raise ValueError("no S3 endpoint configured (set LLM_MESH_S3_ENDPOINT=host:port)")
    timeouts = timeouts or S3Timeouts()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeouts.connect, read=timeouts.read),
        retries=urllib3.Retry(
            total=timeouts.retries,
            backoff_factor=0.2,
            status_forcelist=_RETRIED_STATUSES,
        ),
        # Model pulls download several files at once; keep a connection for each.
        maxsize=16,
    )
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
        secure=settings.s3_secure,
        http_client=http,
    )


@contextmanager
def translate_s3_errors(what: str) -> Iterator[None]:
    """Turns minio/urllib3 failures inside the block into `StorageError`s naming `what`."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING_CODES:
            raise ObjectMissing(
                f"{what}: {exc.code} ({exc.bucket_name}/{exc.object_name})"
            ) from exc
        if exc.code in _TRANSIENT_CODES:
            raise StorageUnavailable(f"{what}: {exc.code}: {exc.message}") from exc
        raise StorageError(f"{what}: {exc.code}: {exc.message}") from exc
    except ServerError as exc:
        raise StorageUnavailable(f"{what}: server error {exc.status_code}") from exc
    except InvalidResponseError as exc:
        raise StorageUnavailable(f"{what}: invalid response from storage: {exc}") from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise StorageUnavailable(f"{what}: storage unreachable: {exc}") from exc


def ensure_bucket(client: Minio, bucket: str) -> None:
    """Creates `bucket` unless it exists (tolerating a concurrent creator); blocking."""
    with translate_s3_errors(f"creating bucket {bucket}"):
        if client.bucket_exists(bucket):
            return
        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
