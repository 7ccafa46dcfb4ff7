"""The HTTP exchange with a provider: pooling, timeouts, retries, and failure mapping.

One `Upstream` per adapter owns one `httpx.AsyncClient` (a connection pool with separate
connect and read timeouts; on the network, `aiohttp_transport`); the `total` budget is
enforced around every wait, never across a `yield`: with `asyncio.timeout_at`, and for the
reads of a streamed body with one timer per body (`_Budget`).
httpx failures become mesh errors here, as httpx's own `map_httpcore_exceptions` maps
httpcore's.

Retries: only before the first canonical event exists, so never after anything could have
reached the client. A retryable `ProviderError` (connection failure, 408/409/429/5xx, a stream
that fails before its first event) is retried up to `max_retries` times with exponential backoff
(`backoff_initial` doubled per attempt, at most `backoff_max`; at least the provider's
Retry-After). Once the first event is out, a failure ends the stream in-band.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Protocol, TypeVar

import httpx
from llmmesh.v1 import events_pb2

from gateway.providers.aiohttp_transport import AiohttpTransport
from gateway.providers.base import ProviderConfig
from gateway.providers.errors import (
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from gateway.providers.sse import ServerSentEvent, aiter_sse
from gateway.providers.stream_builder import MalformedStream, StreamBuilder

__all__ = ["ErrorParser", "StreamTranslator", "Upstream", "parse_json_object", "retry_after"]

logger = logging.getLogger(__name__)

Events = list[events_pb2.StreamEvent]
_T = TypeVar("_T")

#: Error bodies are read up to this size; the rest is not worth keeping.
_MAX_ERROR_BODY = 64 * 1024
#: How long the rest of a finished stream's body may take to arrive (see `_drain`).
_DRAIN_TIMEOUT = 0.5


class StreamTranslator(Protocol):
    """Turns one provider's stream into canonical events (one translator per attempt)."""

    builder: StreamBuilder

    def feed(self, event: ServerSentEvent) -> Events:
        """The canonical events for one provider event.

        Before the generation started, a provider error event raises `ProviderError`;
        after it, the translator ends the stream in-band itself. Raises `MalformedStream`
        when the provider breaks its own protocol.
        """
        ...

    def end_of_body(self) -> Events:
        """The closing events once the body ended (a finish, or a failure if it ended early)."""
        ...


#: Builds the mesh error for a provider's HTTP error answer: (status, body, headers).
ErrorParser = Callable[[int, bytes, httpx.Headers], ProviderError]


def parse_json_object(text: str | bytes) -> dict[str, Any]:
    """A JSON object from the provider; raises `MalformedStream` for anything else."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MalformedStream(f"invalid JSON from the provider: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedStream("the provider sent JSON that is not an object")
    return value


def retry_after(headers: httpx.Headers) -> float | None:
    """The provider's retry hint in seconds (`retry-after-ms` or numeric `retry-after`)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            continue  # An HTTP date: not worth honouring over our own backoff.
    return None


class Upstream:
    """A provider's HTTP endpoint, with the adapter's pool, timeouts and retry policy."""

    def __init__(
        self,
        *,
        provider: str,
        config: ProviderConfig,
        base_url: str,
        headers: Mapping[str, str],
        parse_error: ErrorParser,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.config = config
        self._parse_error = parse_error
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers),
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.read_timeout,
                pool=config.connect_timeout,
            ),
            limits=limits,
            # The network: aiohttp's pool and C parser (see `aiohttp_transport`); tests
            # pass their own transport.
            transport=transport if transport is not None else AiohttpTransport(limits=limits),
        )

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()

    # -- streaming ----------------------------------------------------------------------------

    async def stream(
        self,
        *,
        path: str,
        body: dict[str, Any],
        translator: Callable[[], StreamTranslator],
        budget: float,
        params: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[events_pb2.StreamEvent, None]:
        """POSTs `body` and yields the canonical events `translator` makes of the SSE answer.

        `budget` is the total time in seconds. See the module docstring for retries.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        async with AsyncExitStack() as stack:
            current, events, first = await self._retrying(
                lambda: self._open_stream(stack, path, body, params, translator, deadline),
                deadline,
            )
            builder = current.builder
            try:
                for event in first:
                    yield event
                while not builder.done:
                    for event in await self._next_events(current, events, deadline):
                        yield event
            finally:
                if builder.done:
                    await _drain(events)

    async def _open_stream(
        self,
        stack: AsyncExitStack,
        path: str,
        body: dict[str, Any],
        params: Mapping[str, str] | None,
        translator_factory: Callable[[], StreamTranslator],
        deadline: float,
    ) -> tuple[StreamTranslator, AsyncIterator[ServerSentEvent], Events]:
        """One attempt: sends the request and reads until the first canonical events exist."""
        attempt = AsyncExitStack()
        try:
            request = self._client.build_request(
                "POST", path, json=body, params=params, headers={"accept": "text/event-stream"}
            )
            async with asyncio.timeout_at(deadline):
                response = await self._send(request)
                attempt.push_async_callback(response.aclose)
                if response.status_code >= 400:
                    raise await self._error_from(response)
            events = aiter_sse(_within(response.aiter_bytes(), deadline))
            attempt.push_async_callback(_aclose_iterator, events)
            translator = translator_factory()
            first: Events = []
            while not first:
                event = await anext(events, None)
                first = translator.end_of_body() if event is None else translator.feed(event)
                if event is None and not first:
                    raise ProviderUnavailable(
                        "the provider's stream ended before anything was generated",
                        provider=self.provider,
                    )
        except MalformedStream as exc:
            await attempt.aclose()
            raise ProviderUnavailable(str(exc), provider=self.provider) from exc
        except TimeoutError as exc:
            await attempt.aclose()
            raise ProviderTimeout(
                f"{self.provider} did not start answering within the total timeout",
                provider=self.provider,
            ) from exc
        except httpx.HTTPError as exc:
            await attempt.aclose()
            raise self._transport_error(exc) from exc
        except BaseException:
            await attempt.aclose()
            raise
        stack.push_async_callback(attempt.aclose)
        return translator, events, first

    async def _next_events(
        self, translator: StreamTranslator, events: AsyncIterator[ServerSentEvent], deadline: float
    ) -> Events:
        """The events for the next provider event; failures end the stream in-band."""
        builder = translator.builder
        try:
            event = await anext(events, None)
            if event is not None:
                return translator.feed(event)
            closing = translator.end_of_body()
            if not builder.done:
                closing += builder.fail(
                    events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                    f"the stream from {self.provider} ended before the generation finished",
                    retryable=True,
                )
            return closing
        except TimeoutError:
            return builder.fail(
                events_pb2.ERROR_CODE_TOTAL_TIMEOUT,
                f"{self.provider} did not finish within the total timeout",
                retryable=True,
            )
        except httpx.TimeoutException:
            return builder.fail(
                events_pb2.ERROR_CODE_IDLE_TIMEOUT,
                f"{self.provider} sent nothing within the read timeout",
                retryable=True,
            )
        except httpx.HTTPError as exc:
            return builder.fail(
                events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                f"the connection to {self.provider} failed mid-stream: {type(exc).__name__}",
                retryable=True,
            )
        except MalformedStream as exc:
            return builder.fail(
                events_pb2.ERROR_CODE_UPSTREAM_ERROR,
                f"{self.provider} sent a malformed stream: {exc}",
                retryable=True,
            )

    # -- request/response ---------------------------------------------------------------------

    async def post(
        self,
        *,
        path: str,
        body: dict[str, Any],
        budget: float,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POSTs `body` and returns the JSON object answer, retrying as `stream` does."""
        deadline = asyncio.get_running_loop().time() + budget
        return await self._retrying(lambda: self._post_once(path, body, params, deadline), deadline)

    async def _post_once(
        self,
        path: str,
        body: dict[str, Any],
        params: Mapping[str, str] | None,
        deadline: float,
    ) -> dict[str, Any]:
        request = self._client.build_request("POST", path, json=body, params=params)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(request)
                try:
                    if response.status_code >= 400:
                        raise await self._error_from(response)
                    content = await response.aread()
                finally:
                    await response.aclose()
            return parse_json_object(content)
        except MalformedStream as exc:
            raise ProviderUnavailable(str(exc), provider=self.provider) from exc
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{self.provider} did not answer within the total timeout", provider=self.provider
            ) from exc
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    # -- shared -------------------------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]], deadline: float) -> _T:
        loop = asyncio.get_running_loop()
        for retry in range(self.config.max_retries + 1):
            try:
                return await attempt()
            except ProviderError as exc:
                if not exc.retryable or retry == self.config.max_retries:
                    raise
                delay = min(self.config.backoff_initial * 2**retry, self.config.backoff_max)
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if loop.time() + delay >= deadline:
                    raise
                logger.warning(
                    "%s failed before the first event (%s: %s); retry %d/%d in %.2fs",
                    self.provider,
                    type(exc).__name__,
                    exc.message,
                    retry + 1,
                    self.config.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request, stream=True)

    async def _error_from(self, response: httpx.Response) -> ProviderError:
        content = b""
        try:
            chunks = response.aiter_bytes()
            try:
                async for chunk in chunks:
                    content += chunk
                    if len(content) >= _MAX_ERROR_BODY:
                        break
            finally:
                await _aclose_iterator(chunks)
        except httpx.HTTPError:
            pass  # The status alone decides; the body only adds the provider's message.
        finally:
            await response.aclose()
        return self._parse_error(response.status_code, content, response.headers)

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                f"{self.provider} timed out ({type(exc).__name__})", provider=self.provider
            )
        return ProviderUnavailable(
            f"{self.provider} could not be reached ({type(exc).__name__})",
            provider=self.provider,
        )


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Reads what is left of a finished stream's body (normally only the end of its chunked
    encoding), so that httpx returns the connection to the pool instead of closing it: a
    consumer stops at the last event, before the body's end was read. Bounded: a provider
    that keeps the body open after its last event loses its connection instead."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError, ValueError):
        pass  # The connection is closed instead of reused; nothing else is lost.


class _Budget:
    """The `total` budget of one response body: one timer for all of its reads.

    `asyncio.timeout_at` around each read armed and cancelled a timer per chunk (about a tenth
    of the gateway's CPU per streamed answer). Here the timer is armed once; firing during a
    read, it cancels the reading task as `asyncio.Timeout` does and the read raises
    `TimeoutError`; a read after the deadline raises at once.
    """

    def __init__(self, deadline: float) -> None:
        self._expired = False
        self._reader: asyncio.Task[Any] | None = None
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expired = True
        if self._reader is not None:
            self._reader.cancel()

    async def read(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        """The next chunk, None at the end; raises `TimeoutError` past the deadline."""
        if self._expired:
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._reader = task
        try:
            return await anext(chunks, None)
        except asyncio.CancelledError:
            # Ours (and only ours) when the count drops back: as in `asyncio.Timeout`.
            if self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._reader = None

    def close(self) -> None:
        """Disarms the timer."""
        self._timer.cancel()


async def _within(chunks: AsyncIterator[bytes], deadline: float) -> AsyncGenerator[bytes, None]:
    """`chunks`, each read before `deadline` (`TimeoutError` otherwise); see `_Budget`."""
    budget = _Budget(deadline)
    try:
        while (chunk := await budget.read(chunks)) is not None:
            yield chunk
    finally:
        budget.close()
        await _aclose_iterator(chunks)


async def _aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
