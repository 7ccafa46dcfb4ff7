"""The scheduler's errors, and their translation into gRPC statuses and in-band errors.

    MeshError
    ├── ClientError                 the caller must change something; retrying won't help
    │   ├── InvalidRequest          INVALID_ARGUMENT, with google.rpc.BadRequest
    │   ├── ModelNotFound           NOT_FOUND: no worker ever declared the model's queue
    │   ├── Unauthenticated         UNAUTHENTICATED
    │   └── SlowReader              the caller stopped reading its stream (in-band only)
    └── UpstreamError               the pool failed; the same request may succeed later
        ├── WorkerUnavailable       UNAVAILABLE, with google.rpc.RetryInfo: no live worker
        │                           for the model, or the broker is unreachable
        ├── Overloaded              RESOURCE_EXHAUSTED, with RetryInfo: too many interactive
        │                           requests of the model wait for a worker (load shedding)
        ├── StorageUnavailable      UNAVAILABLE, with RetryInfo: object storage could not store
        │                           (here) or fetch (worker) a large request's body
        ├── PayloadCorrupt          DATA_LOSS, NOT retryable: the stored body failed its
        │                           size/SHA-256 check on the worker
        ├── TimeLimitExceeded       one of DESIGN.md's named limits ran out: DEADLINE_EXCEEDED
        │                           before the stream started, an in-band error after
        └── WorkerFailed            the worker died, lost ownership or lost chunks

Before `GenerationStart` an error becomes the call's gRPC status (`to_status`); after it, an
in-band `StreamError` (`to_stream_error`). A worker's rejection (chunk 0) maps by its code
(`from_rejection`): INVALID_REQUEST and CONTEXT_LENGTH_EXCEEDED → `InvalidRequest`,
UNAVAILABLE → `StorageUnavailable`, INTERNAL → `PayloadCorrupt` (the only reasons a worker
refuses a task before its engine sees it). Every status also carries a google.rpc.ErrorInfo
whose reason is the `ErrorCode` name, so the edge can tell e.g. a context-length rejection
from another invalid request.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmmesh.v1 import broker_pb2, events_pb2

__all__ = [
    "ClientError",
    "InvalidRequest",
    "MeshError",
    "ModelNotFound",
    "Overloaded",
    "PayloadCorrupt",
    "SlowReader",
    "StorageUnavailable",
    "TimeLimitExceeded",
    "Unauthenticated",
    "UpstreamError",
    "WorkerFailed",
    "WorkerUnavailable",
    "from_rejection",
    "to_status",
    "to_stream_error",
]

_ERROR_DOMAIN = "llm-mesh"
#: Suggested client back-off for retryable statuses (google.rpc.RetryInfo).
_RETRY_DELAY_SECONDS = 1


class MeshError(Exception):
    """Base of every scheduler error.

    `status_code` is the gRPC status before the stream started, `error_code` the in-band
    `ErrorCode` after it, `retryable` whether the same request may succeed if sent again.
    """

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, error_code: events_pb2.ErrorCode = events_pb2.ERROR_CODE_INTERNAL
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class ClientError(MeshError):
    """The request or its caller is at fault."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequest(ClientError):
    """The request is invalid (for this model); `field` names the culprit."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        error_code: events_pb2.ErrorCode = events_pb2.ERROR_CODE_INVALID_REQUEST,
    ) -> None:
        super().__init__(message, error_code=error_code)
        self.field = field


class ModelNotFound(ClientError):
    """No worker ever declared a queue for the model."""

    status_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(
            f"unknown model {model!r}", error_code=events_pb2.ERROR_CODE_INVALID_REQUEST
        )
        self.model = model


class Unauthenticated(ClientError):
    """The caller presented no valid credential."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class SlowReader(ClientError):
    """The caller did not read its stream fast enough and the request's buffer filled up."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=events_pb2.ERROR_CODE_UNAVAILABLE)


class UpstreamError(MeshError):
    """The worker pool or the broker failed."""

    status_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class WorkerUnavailable(UpstreamError):
    """No live worker serves the model, or the broker cannot be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=events_pb2.ERROR_CODE_UNAVAILABLE)


class Overloaded(UpstreamError):
    """Too many interactive requests of the model wait for a worker: shed, retry later.

    Unlike a quota refusal (RESOURCE_EXHAUSTED with google.rpc.QuotaFailure), it carries no
    QuotaFailure; its ErrorInfo reason is RATE_LIMITED.
    """

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=events_pb2.ERROR_CODE_RATE_LIMITED)


class StorageUnavailable(UpstreamError):
    """Object storage could not store or serve a request body too large for the broker."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=events_pb2.ERROR_CODE_UNAVAILABLE)


class PayloadCorrupt(UpstreamError):
    """A request body fetched from object storage did not match its size or SHA-256.

    Not retryable (issue 6): corruption is not the transient failure a client should
    hammer; it needs an operator's look at the storage.
    """

    status_code = grpc.StatusCode.DATA_LOSS
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=events_pb2.ERROR_CODE_INTERNAL)


class TimeLimitExceeded(UpstreamError):
    """A named limit ran out; `error_code` names it (QUEUE_TIMEOUT, IDLE_TIMEOUT, ...)."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, error_code: events_pb2.ErrorCode, seconds: float) -> None:
        limit = events_pb2.ErrorCode.Name(error_code).removeprefix("ERROR_CODE_").lower()
        super().__init__(f"{limit} limit of {seconds:g} s exceeded", error_code=error_code)


class WorkerFailed(UpstreamError):
    """The worker running the request died, lost ownership of it or lost chunks."""

    def __init__(
        self, message: str, *, error_code: events_pb2.ErrorCode = events_pb2.ERROR_CODE_WORKER_LOST
    ) -> None:
        super().__init__(message, error_code=error_code)


def from_rejection(rejection: broker_pb2.TaskRejection) -> MeshError:
    """The error a worker's refusal of a task (its chunk 0) stands for."""
    code = rejection.code or events_pb2.ERROR_CODE_INVALID_REQUEST
    if code == events_pb2.ERROR_CODE_UNAVAILABLE:
        return StorageUnavailable(rejection.message)
    if code == events_pb2.ERROR_CODE_INTERNAL:
        return PayloadCorrupt(rejection.message)
    return InvalidRequest(rejection.message, field=rejection.field, error_code=code)


def to_status(error: MeshError) -> grpc.Status:
    """The gRPC status of an error raised before the stream started, with google.rpc details."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=events_pb2.ErrorCode.Name(error.error_code).removeprefix("ERROR_CODE_"),
            domain=_ERROR_DOMAIN,
        )
    ]
    if isinstance(error, InvalidRequest):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.retryable:
        details.append(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=_RETRY_DELAY_SECONDS)
            )
        )
    status = status_pb2.Status(
        code=_RPC_CODES[error.status_code],
        message=error.message,
        details=[_pack(detail) for detail in details],
    )
    return rpc_status.to_status(status)


def to_stream_error(error: MeshError) -> events_pb2.StreamError:
    """The in-band event of an error raised after the stream started."""
    return events_pb2.StreamError(
        code=error.error_code, message=error.message, retryable=error.retryable
    )


def _pack(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


_RPC_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.DATA_LOSS: code_pb2.DATA_LOSS,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}
