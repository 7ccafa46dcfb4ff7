"""API keys on the scheduler's gRPC API: a server interceptor (DESIGN.md, "internal gRPC callers").

Every `SchedulerService` call must carry `authorization: Bearer <API key>` metadata, checked
against the shared keystore (`plumbing.keystore`):

- no or an invalid key → UNAUTHENTICATED; a model the key may not use → PERMISSION_DENIED;
  a quota used up → RESOURCE_EXHAUSTED with `google.rpc.QuotaFailure` and `RetryInfo`; each
  refusal is counted (`llm_mesh_scheduler_refusals_total{reason}`);
- a service key (the gateway's credential) passes unmetered: the gateway meters its own
  requests, so nothing is counted twice;
- any other key's `Generate` is admitted against its quotas and recorded in the usage ledger
  once, with the tokens its stream carried, however it ends (ok, error, cancelled).

The health and reflection services stay open (orchestrators probe them without keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from llmmesh.v1 import scheduler_service_pb2
from prometheus_client import Counter

from plumbing.keystore import (
    InvalidKey,
    KeyRecord,
    Keystore,
    KeystoreError,
    ModelNotAllowed,
    QuotaExhausted,
)
from plumbing.usage_meter import UsageMeter

__all__ = ["AuthInterceptor"]

logger = logging.getLogger(__name__)

_SERVICE_PREFIX: Final = (
    "/" + scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name + "/"
)
#: How long a verified service credential is trusted without asking the database again.
_SERVICE_KEY_TTL: Final = 30.0

Behavior = Callable[..., Any]


def _pack(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _refusal_status(error: KeystoreError) -> grpc.Status:
    """The gRPC status of a keystore refusal (the one mesh → gRPC translation of this module)."""
    if isinstance(error, QuotaExhausted):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"api_key:{error.key_id}", description=str(error)
        )
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(error),
            details=[
                _pack(error_details_pb2.QuotaFailure(violations=[violation])),
                _pack(
                    error_details_pb2.RetryInfo(
                        retry_delay=duration_pb2.Duration(seconds=error.retry_after)
                    )
                ),
            ],
        )
    elif isinstance(error, ModelNotAllowed):
        status = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=str(error))
    else:
        status = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="invalid API key")
    return rpc_status.to_status(status)


def _refusal_reason(error: KeystoreError) -> str:
    """The `reason` label of a keystore refusal in the scheduler's refusals counter."""
    if isinstance(error, QuotaExhausted):
        return "quota_exhausted"
    if isinstance(error, ModelNotAllowed):
        return "permission_denied"
    return "unauthenticated"


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    raise InvalidKey("missing authorization metadata")


class _MeteredContext:
    """The servicer's context, observing every event it writes into a `UsageMeter`."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], meter: UsageMeter) -> None:
        self._context = context
        self._meter = meter

    async def write(self, message: scheduler_service_pb2.GenerateResponse) -> None:
        for event in message.events:
            self._meter.observe(event)
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _run(behavior: Behavior, request: Any, context: Any) -> Any:
    """Runs a handler behavior of either style (coroutine with `write`, or async generator)."""
    if inspect.isasyncgenfunction(behavior):
        async for response in behavior(request, context):
            await context.write(response)
        return None
    return await behavior(request, context)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks API keys, permissions and quotas, and meters external callers' usage.

    Each refused call is counted in `refusals` (the scheduler's counter, labelled by reason).
    """

    def __init__(self, keystore: Keystore, refusals: Counter) -> None:
        self._keystore = keystore
        self._refusals = refusals
        self._service_keys: dict[str, tuple[float, KeyRecord]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._metered(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._authenticated(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _authenticate(self, api_key: str) -> KeyRecord:
        fingerprint = hashlib.sha256(api_key.encode()).hexdigest()
        cached = self._service_keys.get(fingerprint)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        key = await asyncio.to_thread(self._keystore.authenticate, api_key)
        if key.service:
            self._service_keys[fingerprint] = (time.monotonic() + _SERVICE_KEY_TTL, key)
        return key

    def _authenticated(self, behavior: Behavior) -> Behavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                await self._authenticate(_bearer(context))
            except KeystoreError as error:
                await self._refuse(context, error)
            return await behavior(request, context)

        return unary

    def _metered(self, behavior: Behavior) -> Behavior:
        async def stream(
            request: scheduler_service_pb2.GenerateRequest,
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> None:
            try:
                api_key = _bearer(context)
                key = await self._authenticate(api_key)
                if key.service:
                    await _run(behavior, request, context)
                    return
                admission = await asyncio.to_thread(
                    self._keystore.admit, api_key, request.request.model, source="grpc"
                )
            except KeystoreError as error:
                await self._refuse(context, error)
                return
            meter = UsageMeter()
            status: Literal["ok", "error", "cancelled"] | None = None
            try:
                await _run(behavior, request, _MeteredContext(context, meter))
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except BaseException:
                status = "error"
                raise
            finally:
                await self._record(admission.entry_id, meter, status)

        return stream

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], error: KeystoreError
    ) -> None:
        """Counts the refusal and ends the call with its status (raises, as `abort` does)."""
        self._refusals.labels(_refusal_reason(error)).inc()
        await context.abort_with_status(_refusal_status(error))

    async def _record(
        self,
        entry_id: int,
        meter: UsageMeter,
        status: Literal["ok", "error", "cancelled"] | None,
    ) -> None:
        queued_ms, first_token_ms, total_ms = meter.timings_ms()
        outcome = status or (meter.status() if meter.started else "error")
        record = asyncio.to_thread(
            self._keystore.finish,
            entry_id,
            status=outcome,
            prompt_tokens=meter.prompt_tokens,
            completion_tokens=meter.completion_tokens,
            request_id=meter.request_id,
            queued_ms=queued_ms,
            time_to_first_token_ms=first_token_ms,
            total_ms=total_ms,
        )
        # Shielded: a cancelled call (the caller went away) is still recorded.
        await asyncio.shield(record)
