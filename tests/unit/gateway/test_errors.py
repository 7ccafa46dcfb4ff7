"""gRPC statuses and stream errors → mesh errors (gateway/errors.py), and the usage meter."""

from __future__ import annotations

import grpc
import pytest
from gateway_streams import generation, text
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from llmmesh.v1 import events_pb2

from gateway.errors import (
    InvalidRequest,
    MeshError,
    ModelNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    Unauthenticated,
    error_from_grpc,
    error_from_stream_error,
    error_headers,
)
from plumbing.usage_meter import UsageMeter


def _rpc_error(code: grpc.StatusCode, *details: object) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    status = status_pb2.Status(code=code.value[0], message="boom", details=packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="boom")


def test_bad_request_names_the_field() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(field="messages", description="x")
    error = error_from_grpc(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            error_details_pb2.BadRequest(field_violations=[violation]),
        )
    )
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.field) == (400, "messages")


def test_retry_info_becomes_retry_after() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7))
    error = error_from_grpc(_rpc_error(grpc.StatusCode.UNAVAILABLE, retry))
    assert isinstance(error, ProviderUnavailable)
    assert error_headers(error) == {"retry-after": "7"}
    quota = error_from_grpc(
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, error_details_pb2.QuotaFailure(), retry)
    )
    assert isinstance(quota, QuotaExceeded) and error_headers(quota) == {"retry-after": "7"}


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, 404),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ProviderTimeout, 504),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated, 401),
        (grpc.StatusCode.UNAVAILABLE, ProviderUnavailable, 503),
        (grpc.StatusCode.INTERNAL, MeshError, 500),
    ],
)
def test_status_codes(code: grpc.StatusCode, kind: type[MeshError], status: int) -> None:
    error = error_from_grpc(_rpc_error(code))
    assert isinstance(error, kind) and error.status == status


def test_unavailable_without_hint_still_says_retry_after() -> None:
    assert error_headers(ProviderUnavailable("x")) == {"retry-after": "1"}
    assert error_headers(InvalidRequest("x")) == {}


def test_stream_errors() -> None:
    context = events_pb2.StreamError(code=events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED)
    assert error_from_stream_error(context).status == 400
    queue = events_pb2.StreamError(code=events_pb2.ERROR_CODE_QUEUE_TIMEOUT)
    assert error_from_stream_error(queue).status == 504


def test_usage_meter_counts_finished_and_cut_streams() -> None:
    events = generation([[text("a"), text("b")], [text("c")]], prompt_tokens=9)
    finished = UsageMeter()
    for event in events:
        finished.observe(event)
    assert (finished.status(), finished.prompt_tokens, finished.completion_tokens) == ("ok", 9, 3)
    assert finished.request_id == "req-1"
    cut = UsageMeter()
    for event in events[:5]:  # start, 2 sequence starts, 2 deltas
        cut.observe(event)
    assert (cut.status(), cut.prompt_tokens, cut.completion_tokens) == ("cancelled", 9, 2)
    failed = UsageMeter()
    failed.observe(events_pb2.StreamEvent(error=events_pb2.StreamError()))
    assert failed.status() == "error"
