"""`SchedulerClient`: the Python client of the scheduler's gRPC API, for internal teams and
the gateway.

    async with SchedulerClient("127.0.0.1:50051", api_key=key) as client:
        async for event in client.generate(request):
            ...

One channel per target, reused by every call. With several targets (scheduler replicas),
calls go round-robin, and a call that fails with UNAVAILABLE before its first event is tried
once on each other target.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, Final

import grpc
from llmmesh.v1 import chat_pb2, events_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc

__all__ = ["SchedulerClient"]

#: Keepalive pings notice a dead replica during a long, quiet stream.
DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


class SchedulerClient:
    """Calls `SchedulerService` on one or more scheduler replicas.

    `api_key` goes out as `authorization: Bearer <api_key>` metadata. Close with `aclose()`
    or use `async with`.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        api_key: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        targets = [target] if isinstance(target, str) else list(target)
        if not targets:
            raise ValueError("at least one scheduler target is required")
        self._channels = [
            grpc.aio.insecure_channel(address, options=list(channel_options)) for address in targets
        ]
        self._stubs = [
            scheduler_service_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
            for channel in self._channels
        ]
        self._turns = itertools.cycle(range(len(self._stubs)))
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
        first = next(self._turns)
        order = [(first + offset) % len(self._stubs) for offset in range(len(self._stubs))]
        for attempt, index in enumerate(order):
            call = self._stubs[index].Generate(
                scheduler_service_pb2.GenerateRequest(request=request),
                timeout=timeout,
                metadata=self._metadata,
            )
            started = False
            try:
                async for response in call:
                    started = True
                    for event in response.events:
                        yield event
                return
            except grpc.aio.AioRpcError as error:
                last = attempt == len(order) - 1
                if started or last or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            finally:
                call.cancel()

    async def list_models(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
    ) -> list[scheduler_service_pb2.ModelInfo]:
        """The models with a live, ready worker (as one replica sees them)."""
        stub = self._stubs[next(self._turns)]
        response: scheduler_service_pb2.ListModelsResponse = await stub.ListModels(
            scheduler_service_pb2.ListModelsRequest(), timeout=timeout, metadata=self._metadata
        )
        return list(response.models)
