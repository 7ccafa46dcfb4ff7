"""The interface every external provider adapter implements, and its configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from llmmesh.v1 import chat_pb2, events_pb2
from pydantic import SecretStr

__all__ = ["AdapterFactory", "ProviderAdapter", "ProviderConfig"]


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """How one routing-file entry reaches its provider.

    `base_url` defaults to the provider's public API. `api_key` is never logged (hidden from
    `repr`, and a `SecretStr` when given as one). Timeouts are seconds: `connect_timeout` to
    open a connection, `read_timeout` between two reads of the answer, `total_timeout` for the
    whole generation (a request's own `timeout` may only shorten it). Failures before the
    first event are retried `max_retries` times, waiting `backoff_initial` seconds, doubled
    each time up to `backoff_max` (or the provider's Retry-After, when shorter than the budget).
    `default_max_tokens` fills providers' required `max_tokens` (Anthropic) when the request
    leaves it unset.
    """

    upstream_model: str
    base_url: str | None = None
    api_key: SecretStr | str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    total_timeout: float = 600.0
    max_retries: int = 2
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    default_max_tokens: int = 4096
    max_connections: int = 100

    def secret_api_key(self) -> str:
        """The API key in clear, for the request header only ("" when unset)."""
        if isinstance(self.api_key, SecretStr):
            return self.api_key.get_secret_value()
        return self.api_key or ""


class ProviderAdapter(Protocol):
    """One external provider behind the canonical interface.

    Built by its `AdapterFactory` (the class). Nothing provider-shaped leaves an adapter.
    """

    def stream(self, request: chat_pb2.ChatRequest) -> AsyncIterator[events_pb2.StreamEvent]:
        """Generates `request` upstream and yields its canonical events as they arrive.

        The stream is well-formed: `GenerationStart`; per sequence `SequenceStart`,
        `SequenceDelta`s, `SequenceFinish`; then `GenerationFinish`. Before the first event it
        raises a `ProviderError` (after retrying the retryable ones); after it, failures are
        in-band (`SequenceFinish(ERROR)` for open sequences, `StreamError`, `GenerationFinish`)
        and nothing is retried. The caller cancels by closing the iterator (`aclose()`), which
        closes the upstream response.
        """
        ...

    async def complete(self, request: chat_pb2.ChatRequest) -> list[events_pb2.StreamEvent]:
        """Generates `request` with the provider's non-streaming call; the same events, at once.

        Raises `ProviderError` as `stream` does before its first event.
        """
        ...

    async def aclose(self) -> None:
        """Closes the adapter's connection pool."""
        ...


class AdapterFactory(Protocol):
    """How an adapter is built (each adapter class is one): `transport` replaces the network
    (tests pass an `httpx.MockTransport`); None = real connections."""

    def __call__(
        self, config: ProviderConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> ProviderAdapter:
        """A new adapter with its own connection pool."""
        ...
