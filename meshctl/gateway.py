"""`llm-mesh gateway`: the HTTP edge (settings `LLM_MESH_GATEWAY_*`) on uvicorn.

Prints `llm-mesh gateway ready: <url>` once it accepts connections (with the bound port when
the configured port is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from types import FrameType
from typing import Any, Final

__all__ = ["add_parser", "run"]

#: The signals that stop the gateway gracefully (uvicorn's own handlers take them while it
#: serves).
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `gateway` command to the `llm-mesh` parser."""
    gateway = commands.add_parser(
        "gateway",
        help="run the HTTP gateway (native, OpenAI- and Anthropic-compatible APIs)",
        description=__doc__,
    )
    gateway.add_argument("--host", help="listen address (default: LLM_MESH_GATEWAY_HOST)")
    gateway.add_argument("--port", type=int, help="listen port, 0 = any (LLM_MESH_GATEWAY_PORT)")
    gateway.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Runs the gateway until SIGINT/SIGTERM, then stops gracefully; exit status 0 after a
    requested stop, 1 when it could not start serving, 2 when the routing file is invalid."""
    # Imported here: the other `llm-mesh` commands need none of the gateway.
    import uvicorn

    from gateway.app import create_app
    from gateway.routing import RoutingError
    from gateway.settings import GatewaySettings
    from plumbing import event_loop
    from plumbing.telemetry import configure_tracing

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = GatewaySettings.model_validate(overrides)
    # Before the app: its middleware and scheduler client decide at start whether to trace.
    configure_tracing("llm-mesh-gateway")
    try:
        app = create_app(settings)
    except RoutingError as exc:
        print(f"llm-mesh gateway: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
        # Streams get `shutdown_grace` to end (sse-starlette); uvicorn waits a little longer.
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 2,
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # it found installed ("cooperative signal handling", uvicorn 0.29): with the default one
    # there, a gateway that stopped cleanly would die of the signal (exit status -15). This
    # handler makes a requested stop exit 0; before uvicorn listens, it asks it to stop too.
    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        event_loop.run(_serve(server, "https" if settings.tls_certfile else "http"))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if server.started else 1


async def _serve(server: Any, scheme: str) -> None:
    """Serves until a signal; announces the bound address once connections are accepted."""
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no start-up callback
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.02)
    for listener in server.servers:
        for bound in listener.sockets:
            host, port = bound.getsockname()[:2]
            print(f"llm-mesh gateway ready: {scheme}://{host}:{port}", flush=True)
    await serving
