"""The small HTTP server of the scheduler and the workers: `/healthz`, `/readyz`, `/metrics`.

A Starlette app served by uvicorn on the service's own event loop. The service keeps its
signal handling: uvicorn's is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["ProbeServer", "parse_bind"]


def parse_bind(bind: str) -> tuple[str, int]:
    """`host:port` → (host, port); port 0 means any free port."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class ProbeServer:
    """Serves the probes until `stop`.

    `healthy` answers `/healthz` (the process works), `ready` answers `/readyz` (it takes
    traffic); `/metrics` renders `registry`.
    """

    def __init__(
        self,
        bind: str,
        *,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        healthy: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._bind = parse_bind(bind)
        self._registry = registry
        self._ready = ready
        self._healthy = healthy
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        #: The bound port, once started.
        self.port = 0

    async def start(self) -> None:
        """Binds (the port is known when this returns) and serves in the background."""
        host, port = self._bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics),
            ]
        )
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self._server = _QuietServer(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[listener]))

    async def stop(self) -> None:
        """Stops serving and waits until the server closed."""
        if self._server is None or self._serving is None:
            return
        self._server.should_exit = True
        await self._serving

    async def _healthz(self, request: Request) -> Response:
        healthy = True if self._healthy is None else await self._healthy()
        return PlainTextResponse("ok\n" if healthy else "unhealthy\n", 200 if healthy else 503)

    async def _readyz(self, request: Request) -> Response:
        ready = self._ready()
        return PlainTextResponse("ready\n" if ready else "not ready\n", 200 if ready else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to the service that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
