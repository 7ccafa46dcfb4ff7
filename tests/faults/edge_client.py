"""The gateway's native streaming API, as a test client sees it: `/v1/generate` with
`stream: true`, every server-sent event parsed as it arrives."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bench.process_mesh import ServiceProcess

__all__ = ["SseEvent", "native_body", "stream_native"]


@dataclass
class SseEvent:
    """One server-sent event of the native API: its name and JSON data."""

    event: str
    data: dict[str, Any]


def native_body(model: str, prompt: str = "hello mesh", **parameters: Any) -> dict[str, Any]:
    """A streamed `/v1/generate` body."""
    return {
        "model": model,
        "messages": [{"role": "ROLE_USER", "content": [{"text": prompt}]}],
        "generation_parameters": parameters,
        "stream": True,
    }


async def stream_native(
    gateway: ServiceProcess,
    api_key: str,
    body: Mapping[str, Any],
    *,
    on_event: Callable[[SseEvent], None] = lambda event: None,
) -> tuple[int, list[SseEvent]]:
    """POSTs a streamed `/v1/generate`; returns the status and every event, as they came.

    `on_event` sees each event as it arrives (tests set an `asyncio.Event` from it).
    """
    events: list[SseEvent] = []
    async with httpx.AsyncClient(
        base_url=gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=httpx.Timeout(30.0),
    ) as http:
        async with http.stream("POST", "/v1/generate", json=dict(body)) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, events
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    event = SseEvent(name, json.loads(line.split(":", 1)[1]))
                    events.append(event)
                    on_event(event)
            return response.status_code, events
