"""The gateway's Starlette app: the factory, its routes and the request path they share.

Every generation route runs the same steps, whatever its API shape (`gateway.edge_api`):
authenticate the key (verified keys are cached briefly: `gateway.auth.KeyCache`), read the
body (bounded), parse and validate it, look the model up in the routing file, admit it
against the key's permissions and quotas (a key with quotas opens its ledger row now; every
request's usage is committed when it ends, in batches: `gateway.ledger`),
start it on its backend (falling back along the route's `fallback` chain while the backend is
unavailable), and only when `GenerationStart` arrives answer: an SSE stream or, gathered, one
JSON document. Every earlier failure is an HTTP status with the API's own error body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from google.protobuf import duration_pb2
from llmmesh.v1 import chat_pb2, events_pb2, scheduler_service_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.access_log import AccessLog, access_record
from gateway.anthropic_api import AnthropicApi
from gateway.auth import KeyCache
from gateway.backends import Backends, Scheduler
from gateway.edge_api import EdgeApi
from gateway.errors import (
    InternalError,
    InvalidRequest,
    MeshError,
    ModelNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RequestTooLarge,
    error_from_stream_error,
    error_headers,
)
from gateway.ledger import LedgerWriter
from gateway.metrics import GatewayMetrics
from gateway.native_api import NativeApi
from gateway.openai_api import OpenAIApi
from gateway.openapi import openapi_document
from gateway.quotas import admit
from gateway.routing import RoutingTable, load_routing
from gateway.settings import GatewaySettings
from gateway.streaming import GenerationResponse, GenerationStream, gather, start_generation
from gateway.validation import validate_request
from plumbing.client import SchedulerClient
from plumbing.grpc_tls import channel_credentials
from plumbing.keystore import Keystore
from plumbing.usage_meter import UsageMeter

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

#: How long `/readyz` and `/v1/models` wait for the scheduler's model list.
_LIST_MODELS_TIMEOUT = 5.0


@dataclass
class _Running:
    """What exists while the app runs (between its lifespan's start and end)."""

    keystore: Keystore
    keys: KeyCache
    ledger: LedgerWriter
    backends: Backends


@dataclass
class _Gateway:
    """What the routes share."""

    settings: GatewaySettings
    routing: RoutingTable
    metrics: GatewayMetrics
    state: _Running | None = None

    def running(self) -> _Running:
        if self.state is None:
            raise RuntimeError("the gateway is not running (lifespan not started)")
        return self.state


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body exceeds {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"The request body exceeds {limit} bytes.")
    return bytes(body)


def _effective_timeout(request: chat_pb2.ChatRequest, cap: float) -> float:
    """The request's own budget, capped by the server's `total` timeout; stamped on it."""
    timeout = cap
    if request.HasField("timeout"):
        asked = request.timeout.ToTimedelta().total_seconds()
        if asked > 0:
            timeout = min(asked, cap)
    request.timeout.CopyFrom(duration_pb2.Duration())
    request.timeout.FromNanoseconds(int(timeout * 1e9))
    return timeout


def _is_unavailable(error: MeshError) -> bool:
    return isinstance(error, ProviderUnavailable | ProviderTimeout) or error.status == 404


class _GenerationRoute:
    """One generation endpoint in one API shape."""

    def __init__(self, gateway: _Gateway, api: EdgeApi) -> None:
        self._gateway = gateway
        self._api = api

    def _error(self, error: MeshError, model: str = "", *, counted: bool = False) -> Response:
        """The error response in the API's shape; counts the request unless already `counted`."""
        # Only routed names become label values: clients choose the others.
        label = model if model in self._gateway.routing else "unknown"
        if isinstance(error, InvalidRequest) and error.field:
            renamed = self._api.field_name(error.field)
            if renamed != error.field:
                error.message = error.message.replace(error.field, renamed, 1)
            error.field = renamed
        metrics = self._gateway.metrics
        if not counted:
            metrics.requests.labels(self._api.name, label, str(error.status)).inc()
        if isinstance(error, QuotaExceeded):
            metrics.quota_rejections.labels(label).inc()
        return JSONResponse(
            self._api.error_body(error), status_code=error.status, headers=error_headers(error)
        )

    async def handle(self, request: Request) -> Response:
        """Handles one request; the outermost boundary (unexpected errors become a 500)."""
        try:
            return await self._handle(request)
        except MeshError as error:
            return self._error(error)
        except Exception:
            logger.exception("%s request failed", self._api.name)
            return self._error(InternalError("Internal error."))

    async def _start(
        self, backends: Backends, canonical: chat_pb2.ChatRequest
    ) -> tuple[events_pb2.StreamEvent, AsyncIterator[events_pb2.StreamEvent], str | None]:
        """Starts the request on its route, or its fallbacks while the backend is unavailable.

        Returns the `GenerationStart`, the rest of the stream and the provider that serves it
        (None for the scheduler); raises the last mesh error.
        """
        timeout = _effective_timeout(canonical, self._gateway.settings.total_timeout)
        error: MeshError | None = None
        for name, route in self._gateway.routing.chain(canonical.model):
            attempt = chat_pb2.ChatRequest()
            attempt.CopyFrom(canonical)
            attempt.model = name
            if attempt.priority == chat_pb2.PRIORITY_UNSPECIFIED:
                attempt.priority = route.priority
            events = backends.open(name, route, attempt, timeout)
            try:
                first = await start_generation(events, self._gateway.metrics)
                return first, events, None if route.backend == "self_hosted" else route.backend
            except MeshError as failure:
                error = failure
                if not _is_unavailable(failure):
                    break
        assert error is not None
        raise error

    async def _handle(self, request: Request) -> Response:
        gateway = self._gateway
        settings = gateway.settings
        running = gateway.running()
        arrived = time.monotonic()
        record = access_record(request.scope)
        if record is not None:
            record.api = self._api.name
        api_key, key = await running.keys.authenticate(request.headers)
        if record is not None:
            record.request.key_id = key.key_id
        body = await _read_body(request, settings.max_body_bytes)
        edge = self._api.parse(body)
        canonical = edge.request
        validate_request(canonical, max_n=settings.max_n)
        model = canonical.model
        if model not in gateway.routing:
            available = [name for name in gateway.routing if key.allows(name)]
            return self._error(ModelNotFound.for_model(model, available), model)
        if record is not None:
            record.request.model = model
        try:
            entry = await admit(
                running.keystore,
                running.ledger,
                api_key,
                key,
                model,
                default_quotas=gateway.routing.default_quotas,
            )
        except MeshError as error:
            return self._error(error, model)  # counted under the model (a routed name)
        meter = UsageMeter()
        if record is not None:
            record.meter = meter
        try:
            started = await self._start(running.backends, canonical)
        except MeshError as error:
            await entry.close(meter, "error")
            return self._error(error, model)
        except BaseException:
            await entry.close(meter, "error")
            raise
        first, events, provider = started
        time_to_start = time.monotonic() - arrived
        gateway.metrics.time_to_start.labels(self._api.name).observe(time_to_start)
        if record is not None:
            record.time_to_start = time_to_start
            record.request.request_id = first.generation_start.request_id
        stream = GenerationStream(
            first,
            events,
            entry,
            meter=meter,
            metrics=gateway.metrics,
            api=self._api.name,
            model=model,
            provider=provider,
        )
        if edge.stream:
            return GenerationResponse(
                stream,
                self._api.encoder(canonical),
                send_timeout=settings.sse_send_timeout,
                ping_interval=settings.ping_interval,
                shutdown_grace=settings.shutdown_grace,
            )
        try:
            completion = await gather(stream, request)
        finally:
            await stream.aclose()
        if completion is None:
            return Response(status_code=499)
        if completion.error is not None:
            # The stream's close already counted the request (outcome "error").
            return self._error(error_from_stream_error(completion.error), model, counted=True)
        return JSONResponse(self._api.document(completion, canonical))


def _model_entry(name: str, owner: str, info: scheduler_service_pb2.ModelInfo | None) -> Any:
    # Both SDKs' model objects: OpenAI reads id/object/created/owned_by, Anthropic
    # id/type/display_name/created_at.
    entry: dict[str, Any] = {
        "id": name,
        "object": "model",
        "type": "model",
        "created": 0,
        "created_at": "1970-01-01T00:00:00Z",
        "display_name": name,
        "owned_by": owner,
    }
    if info is not None:
        entry["ready_workers"] = info.ready_workers
        entry["max_context"] = info.max_context
    return entry


async def _ready_models(backends: Backends) -> dict[str, scheduler_service_pb2.ModelInfo]:
    async with asyncio.timeout(_LIST_MODELS_TIMEOUT):
        models: Sequence[scheduler_service_pb2.ModelInfo] = await backends.scheduler.list_models()
    return {model.name: model for model in models if model.ready_workers > 0}


def create_app(
    settings: GatewaySettings,
    *,
    routing: RoutingTable | None = None,
    keystore: Keystore | None = None,
    scheduler: Scheduler | None = None,
    provider_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The gateway app. Loads the routing file now (raising `RoutingError` when invalid).

    `keystore` and `scheduler` default to the ones the settings name, opened at start-up;
    `provider_transport` replaces the network of every provider adapter (tests).
    """
    gateway = _Gateway(
        settings=settings,
        routing=routing if routing is not None else load_routing(settings.mesh.models),
        metrics=GatewayMetrics(),
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        store: Keystore = (
            keystore
            if keystore is not None
            else await asyncio.to_thread(Keystore.from_settings, settings.mesh)
        )
        if scheduler is not None:
            client: Scheduler = scheduler
        else:
            credential = settings.service_credential
            ca = settings.scheduler_tls_ca
            client = SchedulerClient(
                settings.scheduler_targets,
                api_key=credential.get_secret_value() if credential is not None else None,
                credentials=None
                if ca is None
                else channel_credentials(
                    ca,
                    certfile=settings.scheduler_tls_certfile,
                    keyfile=settings.scheduler_tls_keyfile,
                ),
            )
        backends = Backends(
            gateway.routing,
            client,
            total_timeout=settings.total_timeout,
            provider_transport=provider_transport,
        )
        ledger = LedgerWriter(store)
        gateway.state = _Running(
            keystore=store,
            keys=KeyCache(store, ttl=settings.key_cache_ttl),
            ledger=ledger,
            backends=backends,
        )
        try:
            yield
        finally:
            await backends.aclose()
            await ledger.aclose()
            gateway.state = None
            if keystore is None:
                store.close()

    async def list_models(request: Request) -> Response:
        running = gateway.running()
        backends = running.backends
        try:
            _api_key, key = await running.keys.authenticate(request.headers)
        except MeshError as error:
            return JSONResponse(
                OpenAIApi().error_body(error),
                status_code=error.status,
                headers=error_headers(error),
            )
        try:
            ready = await _ready_models(backends)
        except Exception as exc:  # the scheduler is down: list what does not need it
            logger.warning("listing models: the scheduler did not answer: %r", exc)
            ready = {}
        data = []
        for name in gateway.routing:
            route = gateway.routing.get(name)
            assert route is not None
            if not key.allows(name):
                continue
            if route.backend == "self_hosted":
                if name in ready:
                    data.append(_model_entry(name, "llm-mesh", ready[name]))
            else:
                data.append(_model_entry(name, route.backend, None))
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        backends = gateway.running().backends
        try:
            ready = await _ready_models(backends)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "reason": f"scheduler unreachable: {exc!r}"},
                status_code=503,
            )
        missing = [name for name in gateway.routing.self_hosted() if name not in ready]
        if missing:
            return JSONResponse(
                {"status": "unavailable", "reason": "no ready worker", "models": missing},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    document = openapi_document()

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    async def metrics(_request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    routes: list[Route] = [
        Route("/v1/generate", _GenerationRoute(gateway, NativeApi()).handle, methods=["POST"]),
        Route(
            "/v1/chat/completions", _GenerationRoute(gateway, OpenAIApi()).handle, methods=["POST"]
        ),
        Route("/v1/messages", _GenerationRoute(gateway, AnthropicApi()).handle, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(
        AccessLog, metrics=gateway.metrics, routes=frozenset(route.path for route in routes)
    )
    return app
