"""A local stand-in for the providers: recorded answers served over real HTTP by uvicorn.

Each test registers an `Answer` and gets a `base_url` that reaches it (a random token in the
path keeps tests apart on one server); the server writes one SSE event per chunk, so clients
read a real chunked response from a real socket.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = ["Answer", "ReplayServer", "provider_cases", "serve"]


def provider_cases() -> ModuleType:
    """The shared case table, which lives beside the unit conformance suite."""
    if "provider_cases" in sys.modules:
        return sys.modules["provider_cases"]
    path = Path(__file__).resolve().parents[2] / "unit" / "providers" / "provider_cases.py"
    spec = importlib.util.spec_from_file_location("provider_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["provider_cases"] = module
    spec.loader.exec_module(module)
    return module


#: Where each provider's API lives under its base_url (as in the public base URLs).
API_ROOT = {"openai": "v1", "anthropic": "v1", "gemini": "v1beta"}


@dataclass
class Answer:
    """What the server answers at one token: a status and body, optionally a stall."""

    status: int = 200
    content: bytes = b""
    content_type: str = "text/event-stream"
    stall_after_first_event: bool = False
    then: Answer | None = None  # the answer to every later request
    hits: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _events(content: bytes) -> list[bytes]:
    """`content` cut after every blank line (the last piece keeps whatever trails)."""
    pieces, start = [], 0
    for match in _EVENT_END.finditer(content):
        pieces.append(content[start : match.end()])
        start = match.end()
    if start < len(content):
        pieces.append(content[start:])
    return pieces


class ReplayServer:
    """The Starlette app that replays `Answer`s; `port` is set once it listens."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.app = Starlette(routes=[Route("/{token}/{rest:path}", self._serve, methods=["POST"])])
        self.port = 0

    async def _serve(self, request: Request) -> Response:
        answer = self.answers[request.path_params["token"]]
        while answer.hits and answer.then is not None:
            answer = answer.then
        answer.hits.append(
            {"path": request.url.path, "query": request.url.query, "body": await request.body()}
        )
        if answer.content_type != "text/event-stream" or answer.status != 200:
            return Response(answer.content, answer.status, media_type=answer.content_type)
        return StreamingResponse(self._stream(answer), media_type=answer.content_type)

    async def _stream(self, answer: Answer) -> AsyncIterator[bytes]:
        never = asyncio.Event()
        try:
            for number, piece in enumerate(_events(answer.content)):
                yield piece
                if answer.stall_after_first_event and number == 0:
                    await never.wait()
        finally:
            answer.disconnected.set()

    def base_url(self, provider: str, answer: Answer) -> str:
        """A base_url for `provider`'s adapter that reaches `answer`."""
        token = uuid.uuid4().hex
        self.answers[token] = answer
        return f"http://127.0.0.1:{self.port}/{token}/{API_ROOT[provider]}"


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it listens (uvicorn offers only a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def serve(
    app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "off"
) -> AsyncIterator[int]:
    """Runs `app` under uvicorn on a free loopback port (yielded) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = _Server(
        uvicorn.Config(app, lifespan=lifespan, ws="none", http="h11", log_level="warning")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            await server.ready.wait()
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await serving
        sock.close()
