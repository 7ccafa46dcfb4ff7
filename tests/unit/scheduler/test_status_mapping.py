"""Mesh errors → gRPC statuses with google.rpc details, and in-band errors."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmmesh.v1 import broker_pb2, events_pb2

from scheduler.errors import (
    ModelNotFound,
    TimeLimitExceeded,
    WorkerUnavailable,
    from_rejection,
    to_status,
    to_stream_error,
)


def _details(status: grpc.Status) -> status_pb2.Status:
    values = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(values[0])


def test_a_rejection_becomes_invalid_argument_with_bad_request_naming_the_field() -> None:
    error = from_rejection(
        broker_pb2.TaskRejection(
            code=events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            message="too long",
            field="messages",
        )
    )
    status = to_status(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "too long"
    details = _details(status).details
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(bad_request) for detail in details)
    assert any(detail.Unpack(info) for detail in details)
    assert bad_request.field_violations[0].field == "messages"
    assert info.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert not any(detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in details)


def test_retryable_statuses_carry_retry_info() -> None:
    status = to_status(WorkerUnavailable("no live worker"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in _details(status).details)
    assert to_status(ModelNotFound("nope")).code == grpc.StatusCode.NOT_FOUND


def test_time_limits_name_the_limit() -> None:
    error = TimeLimitExceeded(events_pb2.ERROR_CODE_IDLE_TIMEOUT, 2.0)
    assert to_status(error).code == grpc.StatusCode.DEADLINE_EXCEEDED
    stream_error = to_stream_error(error)
    assert stream_error.code == events_pb2.ERROR_CODE_IDLE_TIMEOUT
    assert stream_error.retryable
    assert "idle_timeout" in stream_error.message


def test_the_status_round_trips_through_grpc_status() -> None:
    status = to_status(WorkerUnavailable("x"))
    rich = _details(status)
    assert rpc_status.to_status(rich).code == status.code


def test_storage_rejections_map_to_unavailable_or_non_retryable_data_loss() -> None:
    unavailable = to_status(
        from_rejection(
            broker_pb2.TaskRejection(code=events_pb2.ERROR_CODE_UNAVAILABLE, message="down")
        )
    )
    assert unavailable.code == grpc.StatusCode.UNAVAILABLE
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in _details(unavailable).details)
    corrupt = from_rejection(
        broker_pb2.TaskRejection(code=events_pb2.ERROR_CODE_INTERNAL, message="bad sha256")
    )
    status = to_status(corrupt)
    assert status.code == grpc.StatusCode.DATA_LOSS
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in _details(status).details)
    assert not to_stream_error(corrupt).retryable
