"""Merging a request's `provider_extensions[<provider>]` into that provider's request body.

Only the named provider's adapter reads its entry (chat.proto, `provider_extensions`). The entry
may add keys the adapter does not set, and add keys inside objects the adapter set (e.g.
Gemini's `generationConfig.responseModalities`); it may never replace a value the adapter set,
nor touch the keys that carry the conversation and the streaming protocol (`reserved`). A
conflict is the client's error (`InvalidRequest`), not a silent override.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from llmmesh.v1 import chat_pb2

from gateway.providers.errors import InvalidRequest
from gateway.providers.structs import struct_to_json

__all__ = ["merge_extensions"]


def merge_extensions(
    body: dict[str, Any],
    request: chat_pb2.ChatRequest,
    *,
    provider: str,
    reserved: Collection[str],
) -> dict[str, Any]:
    """`body` with the request's extension for `provider` merged in (`body` is modified).

    Raises `InvalidRequest` when the extension names a reserved key or overrides a value the
    adapter set.
    """
    extensions = request.generation_parameters.provider_extensions
    if provider not in extensions:
        return body
    extension: dict[str, Any] = struct_to_json(extensions[provider])
    for key in extension:
        if key in reserved:
            raise InvalidRequest(
                f"provider_extensions.{provider}.{key} is set by the gateway and cannot be "
                "overridden",
                provider=provider,
                field=f"generation_parameters.provider_extensions.{provider}.{key}",
            )
    _merge(body, extension, provider=provider, path=f"provider_extensions.{provider}")
    return body


def _merge(target: dict[str, Any], extra: dict[str, Any], *, provider: str, path: str) -> None:
    for key, value in extra.items():
        where = f"{path}.{key}"
        if key not in target:
            target[key] = value
        elif isinstance(target[key], dict) and isinstance(value, dict):
            _merge(target[key], value, provider=provider, path=where)
        else:
            raise InvalidRequest(
                f"{where} conflicts with a value the request already sets; set it through the "
                "canonical request instead",
                provider=provider,
                field=f"generation_parameters.{where}",
            )
