"""Provider failures after the stream started (in-band `StreamError`s) in the provider-errors
metric: once per failure, by provider and kind; the scheduler's in-band failures never."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from observability_mesh import Mesh, scrape, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.routing import ModelRoute

_PROVIDER_KEY_ENV = "LLM_MESH_TEST_OBSERVABILITY_STREAM_KEY"
_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "providers"
_EVENT_END = re.compile(rb"\n\n")
_ERRORS = "llm_mesh_gateway_provider_errors_total"


def _recorded_events(path: str) -> list[bytes]:
    """A recorded SSE body (tests/fixtures/providers), one piece per event."""
    content = (_FIXTURES / path).read_bytes()
    return [piece + b"\n\n" for piece in _EVENT_END.split(content) if piece.strip()]


_OPENAI = _recorded_events("openai/chat-stream-basic-text.sse")
_ANTHROPIC = _recorded_events("anthropic/docs-basic-stream.sse")
_FIRST_ANTHROPIC_DELTA = next(
    number for number, event in enumerate(_ANTHROPIC) if b"content_block_delta" in event
)

#: What the stand-in provider streams per case: the recorded events, then `None` for a stall.
_BODIES: dict[str, list[bytes | None]] = {
    # The whole recording: a clean finish, no failure.
    "complete": [*_OPENAI],
    # The body ends after a few deltas, without a finish_reason or [DONE].
    "truncated": [*_OPENAI[:4]],
    # Nothing after the first deltas: the adapter's read timeout ends the stream.
    "stalled": [*_OPENAI[:2], None],
    # Anthropic's recorded `overloaded_error` event after the first text delta.
    "overloaded": [
        *_ANTHROPIC[: _FIRST_ANTHROPIC_DELTA + 1],
        *_recorded_events("anthropic/docs-error-overloaded-event.sse"),
    ],
}


async def _replay(request: Request) -> StreamingResponse:
    """Streams the case the path names (`/{case}/v1/...`), one write per event."""
    body = _BODIES[request.path_params["case"]]

    async def pieces() -> AsyncIterator[bytes]:
        for piece in body:
            if piece is None:
                await asyncio.Event().wait()  # until the gateway hangs up
            else:
                yield piece

    return StreamingResponse(pieces(), media_type="text/event-stream")


def _route(backend: str, upstream: str, case: str) -> ModelRoute:
    return ModelRoute(
        backend=backend,  # type: ignore[arg-type]
        upstream_model="recorded",
        base_url=f"{upstream}/{case}/v1",  # type: ignore[arg-type]
        api_key_env=_PROVIDER_KEY_ENV,
        read_timeout=0.5,
    )


async def test_in_band_provider_failures_are_counted_once_by_provider_and_kind(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_PROVIDER_KEY_ENV, "sk-observability")
    upstream = await mesh.start_upstream(
        Starlette(
            routes=[
                Route(f"/{{case}}/v1/{path}", _replay, methods=["POST"])
                for path in ("chat/completions", "messages")
            ]
        )
    )
    routes = {
        f"obs-stream-{case}": _route(backend, upstream, case)
        for case, backend in (
            ("complete", "openai"),
            ("truncated", "openai"),
            ("stalled", "openai"),
            ("overloaded", "anthropic"),
        )
    }
    # A self-hosted model whose engine hangs: its in-band failure is no provider's.
    hosted = "obs-stream-hosted"
    scheduler = await mesh.start_scheduler()
    await mesh.start_worker(hosted, scheduler, synthetic_hang_after=2, engine_watchdog_window=0.5)
    gateway = await mesh.start_gateway(scheduler, [hosted], external=routes)

    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"authorization": f"Bearer {gateway.api_key}"}, timeout=15
    ) as http:

        async def post(model: str, *, stream: bool) -> httpx.Response:
            body = {
                "model": model,
                "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            }
            return await http.post("/v1/chat/completions", json=body)

        streamed = {
            model: await post(model, stream=True)
            for model in (*routes, hosted)
            if model != "obs-stream-truncated"
        }
        # The same failure twice, streamed and gathered (a non-streamed answer).
        truncated_streamed = await post("obs-stream-truncated", stream=True)
        truncated_gathered = await post("obs-stream-truncated", stream=False)

    for model, response in [*streamed.items(), ("obs-stream-truncated", truncated_streamed)]:
        assert response.status_code == 200, (model, response.text)
        assert ('"error"' in response.text) == (model != "obs-stream-complete"), response.text
    assert truncated_gathered.status_code >= 500, truncated_gathered.text

    port = httpx.URL(gateway.url).port or 0
    requests = 'llm_mesh_gateway_requests_total{{api="openai",model="{}",outcome="{}"}}'

    async def all_recorded() -> bool:
        # A stream's outcome is recorded after its last byte was sent.
        samples = await scrape(port)
        expected = {requests.format(model, "error"): 1 for model in streamed}
        expected[requests.format("obs-stream-complete", "ok")] = 1
        expected.pop(requests.format("obs-stream-complete", "error"))
        expected[requests.format("obs-stream-truncated", "error")] = 2
        return all(samples.get(name) == value for name, value in expected.items())

    await wait_until(all_recorded)
    samples = await scrape(port)
    # The gathered failure is counted once, by its stream (not again as its HTTP status).
    truncated = {
        name: value
        for name, value in samples.items()
        if name.startswith("llm_mesh_gateway_requests_total") and "obs-stream-truncated" in name
    }
    assert truncated == {requests.format("obs-stream-truncated", "error"): 2}
    errors = {name: value for name, value in samples.items() if name.startswith(_ERRORS)}
    assert errors == {
        f'{_ERRORS}{{kind="ProviderUnavailable",provider="openai"}}': 2,
        f'{_ERRORS}{{kind="ProviderTimeout",provider="openai"}}': 1,
        f'{_ERRORS}{{kind="ProviderUnavailable",provider="anthropic"}}': 1,
    }
