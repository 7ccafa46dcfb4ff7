"""The gateway's errors and their translations.

    MeshError                      HTTP status, a stable `code`, `retryable`, `retry_after`
    ├── ClientError                the caller must change the request (4xx)
    │   ├── InvalidRequest         400, names the field
    │   ├── Unauthenticated        401
    │   ├── PermissionDenied       403, the key may not use the model
    │   ├── ModelNotFound          404, lists the available models
    │   ├── RequestTooLarge        413
    │   └── QuotaExceeded          429, Retry-After
    └── UpstreamError              the mesh or a provider failed (5xx, or 429 from a provider)
        ├── ProviderUnavailable    503, Retry-After (no worker, scheduler/broker down, provider)
        ├── ProviderRateLimited    429, Retry-After (a provider throttles us, or load shedding)
        ├── ProviderTimeout        504 (no worker accepted in time, total budget)
        ├── WorkerFailed           502 (the backend failed mid-generation)
        └── InternalError          500

Errors are translated once per boundary, each direction in one function here:
`error_from_grpc` (the scheduler's gRPC status → mesh error), `error_from_provider` (a provider
adapter's failure before its stream started → mesh error) and `error_from_stream_error` (an
in-band `StreamError` → mesh error, where no header was sent yet). Each edge API module
renders a mesh error in its own JSON shape (`error_body`); `error_headers` gives the headers
every shape shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmmesh.v1 import events_pb2

from gateway.providers import errors as provider_errors

__all__ = [
    "ClientError",
    "InternalError",
    "InvalidRequest",
    "MeshError",
    "ModelNotFound",
    "PermissionDenied",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RequestTooLarge",
    "Unauthenticated",
    "UpstreamError",
    "WorkerFailed",
    "error_from_grpc",
    "error_from_provider",
    "error_from_stream_error",
    "error_headers",
    "stream_error_code",
]

#: Retry-After when the backend gave no hint (seconds).
DEFAULT_RETRY_AFTER = 1.0


class MeshError(Exception):
    """Base of every error the gateway reports; carries what each API shape needs."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class ClientError(MeshError):
    """The request cannot succeed as it is."""

    status = 400
    code = "invalid_request"


class InvalidRequest(ClientError):
    """Malformed or out-of-range request; `field` names the culprit."""


class Unauthenticated(ClientError):
    """Missing or invalid API key."""

    status = 401
    code = "unauthenticated"


class PermissionDenied(ClientError):
    """The key may not use this model."""

    status = 403
    code = "permission_denied"


class ModelNotFound(ClientError):
    """No such model in the routing file."""

    status = 404
    code = "model_not_found"

    def __init__(self, message: str, available: Sequence[str] = ()) -> None:
        super().__init__(message, field="model")
        self.available = list(available)

    @classmethod
    def for_model(cls, model: str, available: Sequence[str]) -> ModelNotFound:
        """The error for an unknown `model`, listing the `available` ones."""
        listed = ", ".join(available) or "none"
        return cls(f"The model {model!r} does not exist. Available models: {listed}.", available)


class RequestTooLarge(ClientError):
    """The body exceeds the configured maximum size."""

    status = 413
    code = "request_too_large"


class QuotaExceeded(ClientError):
    """A quota of the key is used up; retry after `retry_after` seconds."""

    status = 429
    code = "quota_exceeded"
    retryable = True


class UpstreamError(MeshError):
    """The mesh or an external provider failed; the request itself may be fine."""

    status = 502
    code = "upstream_error"


class ProviderUnavailable(UpstreamError):
    """No capacity or no backend right now (no ready worker, broker or provider down)."""

    status = 503
    code = "unavailable"
    retryable = True


class ProviderRateLimited(UpstreamError):
    """An external provider is rate limiting the mesh, or the mesh sheds load (too many
    requests wait for the model's workers)."""

    status = 429
    code = "rate_limited"
    retryable = True


class ProviderTimeout(UpstreamError):
    """No worker accepted the request in time, or its time budget ran out."""

    status = 504
    code = "timeout"
    retryable = True


class WorkerFailed(UpstreamError):
    """The backend failed while generating."""

    status = 502
    code = "worker_failed"
    retryable = True


class InternalError(UpstreamError):
    """A bug or an unexpected failure inside llm-mesh."""

    status = 500
    code = "internal_error"


def error_headers(error: MeshError) -> dict[str, str]:
    """The HTTP headers of an error response (Retry-After on 429 and 503)."""
    if error.status in (429, 503):
        retry_after = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_AFTER
        return {"retry-after": str(max(1, math.ceil(retry_after)))}
    return {}


def error_from_grpc(exc: grpc.aio.AioRpcError) -> MeshError:
    """The mesh error of a scheduler's gRPC status (a failure before `GenerationStart`).

    Reads the `google.rpc` details: `BadRequest` names the field, `RetryInfo` the delay.
    """
    message = exc.details() or exc.code().name
    field: str | None = None
    retry_after: float | None = None
    quota = False
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # AioRpcError quacks as Call
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field or None
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = True
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry_after = retry_info.retry_delay.ToTimedelta().total_seconds()
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT or code == grpc.StatusCode.OUT_OF_RANGE:
        return InvalidRequest(message, field=field)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if quota:
            return QuotaExceeded(message, retry_after=retry_after)
        return ProviderRateLimited(message, retry_after=retry_after)  # the mesh sheds load
    if code == grpc.StatusCode.UNAVAILABLE:
        return ProviderUnavailable(message, retry_after=retry_after)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ProviderTimeout(message)
    if code == grpc.StatusCode.CANCELLED:
        return ProviderUnavailable(message, retry_after=retry_after)
    return InternalError(message)


def error_from_provider(exc: provider_errors.ProviderError) -> MeshError:
    """The mesh error of a provider adapter's failure before its first event."""
    message = f"{exc.provider}: {exc.message}"
    if isinstance(exc, provider_errors.InvalidRequest):
        return InvalidRequest(message, field=exc.field or None)
    if isinstance(exc, provider_errors.ProviderClientError):
        return InvalidRequest(message)
    if isinstance(exc, provider_errors.RateLimited):
        return ProviderRateLimited(message, retry_after=exc.retry_after)
    if isinstance(exc, provider_errors.ProviderTimeout):
        return ProviderTimeout(message)
    if isinstance(exc, provider_errors.ProviderUnavailable) and exc.retryable:
        return ProviderUnavailable(message)
    return WorkerFailed(message)


_BY_STREAM_CODE: dict[int, type[MeshError]] = {
    events_pb2.ERROR_CODE_INVALID_REQUEST: InvalidRequest,
    events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: InvalidRequest,
    events_pb2.ERROR_CODE_UNAVAILABLE: ProviderUnavailable,
    events_pb2.ERROR_CODE_QUEUE_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_FIRST_TOKEN_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_IDLE_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_TOTAL_TIMEOUT: ProviderTimeout,
    events_pb2.ERROR_CODE_WORKER_LOST: WorkerFailed,
    events_pb2.ERROR_CODE_UPSTREAM_ERROR: WorkerFailed,
    events_pb2.ERROR_CODE_RATE_LIMITED: ProviderRateLimited,
}


def error_from_stream_error(error: events_pb2.StreamError) -> MeshError:
    """The mesh error of an in-band `StreamError` (used where no header was sent yet)."""
    kind = _BY_STREAM_CODE.get(error.code, InternalError)
    return kind(error.message or events_pb2.ErrorCode.Name(error.code))


_STREAM_CODE_BY_STATUS: dict[int, events_pb2.ErrorCode] = {
    400: events_pb2.ERROR_CODE_INVALID_REQUEST,
    429: events_pb2.ERROR_CODE_RATE_LIMITED,
    502: events_pb2.ERROR_CODE_WORKER_LOST,
    503: events_pb2.ERROR_CODE_UNAVAILABLE,
    504: events_pb2.ERROR_CODE_TOTAL_TIMEOUT,
}


def stream_error_code(error: MeshError) -> events_pb2.ErrorCode:
    """The `ErrorCode` of a mesh error that must go out in-band (after the headers)."""
    return _STREAM_CODE_BY_STATUS.get(error.status, events_pb2.ERROR_CODE_INTERNAL)
