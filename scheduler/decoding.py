"""Undecodable requests on the scheduler's gRPC API: INVALID_ARGUMENT, not gRPC's UNKNOWN.

grpc answers a request its deserializer cannot parse (corrupt wire format, invalid UTF-8 in
a string field, a truncated message) with UNKNOWN "Unexpected DecodeError", which reads as a
server fault. `DecodingInterceptor` parses the `SchedulerService` requests itself: one that
does not decode reaches no servicer (nor the key check or the ledger) and gets
INVALID_ARGUMENT naming the parser's complaint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from llmmesh.v1 import scheduler_service_pb2

__all__ = ["DecodingInterceptor"]

_SERVICE_PREFIX: Final = (
    "/" + scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name + "/"
)

Behavior = Callable[..., Any]


class _Undecodable:
    """Stands for a request that did not parse; `reason` is the parser's message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            return _Undecodable(str(error))

    return deserialize


def _refusing(behavior: Behavior) -> Behavior:
    """`behavior` (a coroutine function), preceded by the refusal of undecodable requests."""

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}"
            )
        return await behavior(request, context)

    return checked


class DecodingInterceptor(grpc.aio.ServerInterceptor):
    """Refuses undecodable `SchedulerService` requests with INVALID_ARGUMENT.

    Place it before the interceptors that read requests (the key check reads the model).
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_deserializer is None
            or not handler_call_details.method.startswith(_SERVICE_PREFIX)
        ):
            return handler
        deserialize = _tolerant(handler.request_deserializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _refusing(handler.unary_stream),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _refusing(handler.unary_unary),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler
