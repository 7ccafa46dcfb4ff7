"""External provider adapters: canonical requests in, canonical `StreamEvent`s out.

`ADAPTERS` is the explicit registry (name → "module:Class", imported only when first used,
like uvicorn's `HTTP_PROTOCOLS`); the names are the routing file's `backend` values.
"""

from __future__ import annotations

import importlib
from typing import Final

from gateway.providers.base import AdapterFactory, ProviderAdapter, ProviderConfig
from gateway.providers.errors import (
    InvalidRequest,
    ProviderClientError,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUpstreamError,
    RateLimited,
)

__all__ = [
    "ADAPTERS",
    "AdapterFactory",
    "InvalidRequest",
    "ProviderAdapter",
    "ProviderClientError",
    "ProviderConfig",
    "ProviderError",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "ProviderUpstreamError",
    "RateLimited",
    "load_adapter",
]

ADAPTERS: Final[dict[str, str]] = {
    "openai": "gateway.providers.openai:OpenAIAdapter",
    "anthropic": "gateway.providers.anthropic:AnthropicAdapter",
    "gemini": "gateway.providers.gemini:GeminiAdapter",
}


def load_adapter(name: str) -> AdapterFactory:
    """The adapter class registered as `name` (imported now); `KeyError` for an unknown name."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"no provider adapter named {name!r}; known: {sorted(ADAPTERS)}") from None
    module_name, _, class_name = target.partition(":")
    adapter: AdapterFactory = getattr(importlib.import_module(module_name), class_name)
    return adapter
