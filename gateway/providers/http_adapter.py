"""What every HTTP provider adapter does the same way; each adapter supplies only its dialect.

An adapter (`openai.py`, `anthropic.py`, `gemini.py`) subclasses `HttpAdapter` and says what is
provider-specific: its `name` and default base URL, its authentication headers, the POST for a
streamed or a whole answer (`UpstreamCall`), the translator of its stream, the events of its
whole answer, and, if it has one, how an error object says our key was refused. `HttpAdapter`
holds the rest: one `Upstream` (the HTTP exchange: pool, timeouts, retries), the
`ProviderAdapter` methods, and the mesh error of an HTTP error answer (its status, and the
provider's message from the `{"error": {"message": ...}}` envelope all three providers use).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.base import ProviderConfig
from gateway.providers.errors import ProviderError, ProviderUnavailable, error_for_status
from gateway.providers.parameters import budget
from gateway.providers.stream_builder import MalformedStream
from gateway.providers.upstream import (
    StreamTranslator,
    Upstream,
    parse_json_object,
    retry_after,
)

__all__ = ["HttpAdapter", "UpstreamCall"]

Events = list[events_pb2.StreamEvent]


@dataclass(frozen=True)
class UpstreamCall:
    """One POST to the provider: `path` under the base URL, the query `params`, the JSON body."""

    path: str
    body: dict[str, Any]
    params: Mapping[str, str] | None = None


class HttpAdapter(ABC):
    """A `ProviderAdapter` for a provider's JSON-over-HTTP API with SSE streams.

    Subclasses set `name` (the registry name) and `default_base_url`, and implement the
    abstract methods; `ProviderConfig.base_url` replaces the default.
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str]

    def __init__(
        self, config: ProviderConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        self._upstream = Upstream(
            provider=self.name,
            config=config,
            base_url=config.base_url or self.default_base_url,
            headers=self._headers(config.secret_api_key()),
            parse_error=self._parse_error,
            transport=transport,
        )

    # -- ProviderAdapter ------------------------------------------------------------------------

    async def stream(self, request: chat_pb2.ChatRequest) -> AsyncIterator[events_pb2.StreamEvent]:
        """See `ProviderAdapter.stream`."""
        call = self._call(request, stream=True)
        async with aclosing(
            self._upstream.stream(
                path=call.path,
                params=call.params,
                body=call.body,
                translator=lambda: self._translator(request),
                budget=budget(request, self._config.total_timeout),
            )
        ) as events:
            async for event in events:
                yield event

    async def complete(self, request: chat_pb2.ChatRequest) -> Events:
        """See `ProviderAdapter.complete`."""
        call = self._call(request, stream=False)
        answer = await self._upstream.post(
            path=call.path,
            params=call.params,
            body=call.body,
            budget=budget(request, self._config.total_timeout),
        )
        try:
            return self._answer_events(answer, request)
        except MalformedStream as exc:
            raise ProviderUnavailable(str(exc), provider=self.name) from exc

    async def aclose(self) -> None:
        """See `ProviderAdapter.aclose`."""
        await self._upstream.aclose()

    # -- the provider's dialect -----------------------------------------------------------------

    @abstractmethod
    def _headers(self, api_key: str) -> dict[str, str]:
        """The headers of every request (`api_key` is "" when the config has none)."""

    @abstractmethod
    def _call(self, request: chat_pb2.ChatRequest, *, stream: bool) -> UpstreamCall:
        """The POST for `request`: streamed (SSE) or whole. Raises `InvalidRequest`."""

    @abstractmethod
    def _translator(self, request: chat_pb2.ChatRequest) -> StreamTranslator:
        """A fresh translator of the streamed answer to `request` (one per attempt)."""

    @abstractmethod
    def _answer_events(self, answer: dict[str, Any], request: chat_pb2.ChatRequest) -> Events:
        """The canonical events of a whole answer, the same as its stream would give.

        Raises `ProviderError` for an error the answer reports, `MalformedStream` for an
        answer that breaks the provider's protocol.
        """

    def _credentials_rejected(self, error: dict[str, Any]) -> bool:
        """Whether an error object says the provider refused our key, whatever the status."""
        return False

    # -- HTTP error answers ---------------------------------------------------------------------

    def _parse_error(self, status: int, content: bytes, headers: httpx.Headers) -> ProviderError:
        message = content.decode("utf-8", "replace").strip() or f"HTTP {status}"
        credentials_rejected = False
        try:
            error = parse_json_object(content).get("error")
        except MalformedStream:
            error = None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            credentials_rejected = self._credentials_rejected(error)
        return error_for_status(
            status,
            message,
            provider=self.name,
            retry_after=retry_after(headers),
            credentials_rejected=credentials_rejected,
        )
