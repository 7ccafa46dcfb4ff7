"""`SchedulerClient`: the Python client of the scheduler's gRPC API, for internal teams and
the gateway.

    async with SchedulerClient("127.0.0.1:50051", api_key=key) as client:
        async for event in client.generate(request):
            ...

One channel per target, reused by every call. With several targets (scheduler replicas),
calls go round-robin, and a call that fails with UNAVAILABLE before its first event is tried
once on each other target. Each replica's standard gRPC health service is checked every
`HEALTH_CHECK_INTERVAL` (within that bound): a replica that is not SERVING (draining, frozen,
gone) is skipped while another is, and tried only as a last resort. With tracing on
(`plumbing.telemetry`), each call gets a client span and sends its trace context in the
metadata.

Channels are plaintext unless `credentials` are given (`plumbing.grpc_tls.channel_credentials`
makes them from PEM files: the CA bundle to trust, and a client certificate for mutual TLS).
Calls and health checks share each target's channel, hence its credentials.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2
from llmmesh.v1 import chat_pb2, events_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc

from plumbing.telemetry import client_interceptors

__all__ = ["HEALTH_CHECK_INTERVAL", "SchedulerClient"]

#: How often each replica's health is checked, and the bound of one check.
HEALTH_CHECK_INTERVAL: Final = 1.0
_HEALTH_SERVICE: Final = scheduler_service_pb2.DESCRIPTOR.services_by_name[
    "SchedulerService"
].full_name

#: Keepalive pings notice a dead replica during a long, quiet stream.
DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


class SchedulerClient:
    """Calls `SchedulerService` on one or more scheduler replicas.

    `api_key` goes out as `authorization: Bearer <api_key>` metadata. `credentials` (e.g. from
    `plumbing.grpc_tls.channel_credentials`) turn on TLS to every target; without them channels are
    plaintext. Close with `aclose()` or use `async with`.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        targets = [target] if isinstance(target, str) else list(target)
        if not targets:
            raise ValueError("at least one scheduler target is required")
        interceptors = client_interceptors() or None
        options = list(channel_options)
        self._channels = [
            grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
            if credentials is None
            else grpc.aio.secure_channel(
                address, credentials, options=options, interceptors=interceptors
            )
            for address in targets
        ]
        self._stubs = [
            scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
            for channel in self._channels
        ]
        self._turns = itertools.cycle(range(len(self._stubs)))
        self._health_check_calls = [
            channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for channel in self._channels
        ]
        #: Per target: whether its last health check (or call) found it serving.
        self._healthy = [True] * len(self._channels)
        self._health_checks: list[asyncio.Task[None]] = []
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )

    async def __aenter__(self) -> SchedulerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes every channel (calls in progress are cancelled)."""
        for check in self._health_checks:
            check.cancel()
        if self._health_checks:
            await asyncio.wait(self._health_checks)
        for channel in self._channels:
            await channel.close()

    async def generate(
        self,
        request: chat_pb2.ChatRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
    ) -> AsyncGenerator[events_pb2.StreamEvent, None]:
        """The events of one generation, in order, as they arrive.

        `timeout` is the call's gRPC deadline (the request's `total` budget). Failures before
        `GenerationStart` raise `grpc.aio.AioRpcError` (INVALID_ARGUMENT, NOT_FOUND,
        UNAVAILABLE, DEADLINE_EXCEEDED, ...; `grpc_status.rpc_status.from_call` gives the
        google.rpc details); failures after it arrive in-band as `StreamError` then
        `GenerationFinish`. Closing the iterator (`aclose()`, or leaving an `aclosing` block)
        cancels the call, and the scheduler cancels the worker's request.
        """
        order = self._order()
        for attempt, index in enumerate(order):
            call = self._stubs[index].Generate(
                scheduler_service_pb2.GenerateRequest(request=request),
                timeout=timeout,
                metadata=self._metadata,
            )
            started = False
            responses = aiter(call)
            try:
                async for response in responses:
                    started = True
                    for event in response.events:
                        yield event
                return
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and not started:
                    self._healthy[index] = False  # Until its next health check says otherwise.
                last = attempt == len(order) - 1
                if started or last or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            finally:
                call.cancel()
                # An interceptor's response iterator (the tracing one's ends the call's span)
                # must end with the call, not whenever the garbage collector finds it.
                close: Callable[[], Awaitable[None]] | None = getattr(responses, "aclose", None)
                if close is not None:
                    await close()

    async def list_models(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
    ) -> list[scheduler_service_pb2.ModelInfo]:
        """The models with a live, ready worker (as one replica sees them)."""
        stub = self._stubs[self._order()[0]]
        response: scheduler_service_pb2.ListModelsResponse = await stub.ListModels(
            scheduler_service_pb2.ListModelsRequest(), timeout=timeout, metadata=self._metadata
        )
        return list(response.models)

    def _order(self) -> list[int]:
        """The targets to try, round-robin from the next turn, healthy ones first.

        With several targets, the first call starts their health checks (they need the
        running event loop); `aclose` stops them.
        """
        if len(self._stubs) > 1 and not self._health_checks:
            self._health_checks = [
                asyncio.create_task(self._check_health(index)) for index in range(len(self._stubs))
            ]
        first = next(self._turns)
        order = [(first + offset) % len(self._stubs) for offset in range(len(self._stubs))]
        return sorted(order, key=lambda index: not self._healthy[index])

    async def _check_health(self, index: int) -> None:
        """Asks target `index`'s health service every `HEALTH_CHECK_INTERVAL` (until cancelled)."""
        request = health_pb2.HealthCheckRequest(service=_HEALTH_SERVICE)
        while True:
            try:
                response = await self._health_check_calls[index](
                    request, timeout=HEALTH_CHECK_INTERVAL
                )
                self._healthy[index] = response.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError as error:
                # A replica without the health service is judged by its calls alone.
                self._healthy[index] = error.code() == grpc.StatusCode.UNIMPLEMENTED
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
