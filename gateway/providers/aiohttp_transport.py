"""httpx's transport interface over aiohttp's connection pool: the adapters' network.

The adapters speak httpx (requests, responses, `httpx.MockTransport` in the conformance
suite); this transport moves the bytes. httpx's own transport (httpcore + h11) parses every
chunk of a streamed body in pure Python: on the overhead benchmark (`bench/overhead.py`, 32
chunks per answer) it cost about 2.4 ms of CPU per streamed answer, the largest item of the
gateway-only path, against about 1 ms through aiohttp's C parser.

What httpx's transport does, this one does too: keep-alive pooling bounded by
`httpx.Limits`, connect/read/pool timeouts from the request's `timeout` extension, a body
left unread closes its connection while a body read to its end returns it to the pool, and
every failure surfaces as an `httpx.TransportError` subclass (as `map_httpcore_exceptions`
does): connect failures `ConnectError`/`ConnectTimeout`, silence `ReadTimeout`, a broken
body `RemoteProtocolError`/`ReadError`. Bodies are handed over as received (httpx decodes
`content-encoding`; aiohttp's own decompression and cookie jar are off, httpx does both).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

#: Pooled connections idle longer than this are closed (httpx's default `keepalive_expiry`).
_DEFAULT_KEEPALIVE: Final = 5.0


def _mapped(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception of an aiohttp one (most specific class first)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timeout", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # A socket read waited longer than `read`.
        return httpx.ReadTimeout(str(exc) or "read timeout", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):  # Refused, unreachable, DNS, TLS handshake.
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(
            str(exc) or "server disconnected without sending a complete response",
            request=request,
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc), request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(str(exc), request=request)
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)


class _ResponseBody(httpx.AsyncByteStream):
    """A response body as aiohttp receives it; closing it releases the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, closed otherwise (aiohttp
        # decides by the parser's state, as httpcore does).
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` for HTTP/1.1 over one aiohttp connection pool.

    The pool is created on the first request (it belongs to the running event loop) and
    closed by `aclose`.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits
        self._ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            keepalive = self._limits.keepalive_expiry
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=_DEFAULT_KEEPALIVE if keepalive is None else keepalive,
                ssl=self._ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Sends `request`; the response's body streams from the connection."""
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            response = await self._pool().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise _mapped(exc, request) from exc
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            extensions=extensions,
            request=request,
        )

    async def aclose(self) -> None:
        """Closes every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
