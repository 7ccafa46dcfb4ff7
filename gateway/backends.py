"""Where a routed request goes: the scheduler pool (self-hosted) or a provider adapter.

Self-hosted models are served through the scheduler's `Generate` stream with the request's
time budget as the gRPC deadline (the gateway's service credential in the metadata); external
models through the adapter registered for their backend (`gateway.providers.ADAPTERS`),
built once at start-up from the routing file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import httpx
from llmmesh.v1 import chat_pb2, events_pb2, scheduler_service_pb2
from pydantic import SecretStr

from gateway.providers import ProviderAdapter, ProviderConfig, load_adapter
from gateway.routing import ModelRoute, RoutingTable

__all__ = ["Backends", "Scheduler"]

logger = logging.getLogger(__name__)


class Scheduler(Protocol):
    """What the gateway uses of `plumbing.client.SchedulerClient`."""

    def generate(
        self, request: chat_pb2.ChatRequest, *, timeout: float | None = None
    ) -> AsyncIterator[events_pb2.StreamEvent]:
        """The `Generate` stream's events; pre-start failures raise `grpc.aio.AioRpcError`."""
        ...

    async def list_models(self) -> Sequence[scheduler_service_pb2.ModelInfo]:
        """The models with a live, ready worker."""
        ...

    async def aclose(self) -> None:
        """Closes the channels."""
        ...


class Backends:
    """The scheduler client and one adapter per external route."""

    def __init__(
        self,
        routing: RoutingTable,
        scheduler: Scheduler,
        *,
        total_timeout: float,
        provider_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.scheduler = scheduler
        self._adapters: dict[str, ProviderAdapter] = {}
        for name in routing.external():
            route = routing.get(name)
            assert route is not None and route.api_key_env is not None
            api_key = os.environ.get(route.api_key_env)
            if not api_key:
                logger.warning("model %s: $%s is not set", name, route.api_key_env)
            config = ProviderConfig(
                upstream_model=route.upstream_model or name,
                base_url=str(route.base_url) if route.base_url is not None else None,
                api_key=SecretStr(api_key or ""),
                connect_timeout=route.connect_timeout,
                read_timeout=route.read_timeout,
                total_timeout=total_timeout,
            )
            # The registry types classes by the Protocol, which declares no constructor.
            factory: Callable[..., ProviderAdapter] = load_adapter(route.backend)
            self._adapters[name] = factory(config, transport=provider_transport)

    def open(
        self, name: str, route: ModelRoute, request: chat_pb2.ChatRequest, timeout: float
    ) -> AsyncIterator[events_pb2.StreamEvent]:
        """The event stream of `request` on the backend of model `name` (not yet started)."""
        if route.backend == "self_hosted":
            return self.scheduler.generate(request, timeout=timeout)
        return self._adapters[name].stream(request)

    async def aclose(self) -> None:
        """Closes the adapters and the scheduler client."""
        for adapter in self._adapters.values():
            await adapter.aclose()
        await self.scheduler.aclose()
