"""The conformance cases again, over real HTTP: a local replay server at the adapter's base_url.

The replay server (`replay_server.py`, uvicorn on a free loopback port) writes each recorded
answer one SSE event per chunk, so the adapters read real chunked responses from a real
socket; the same facts (`provider_cases.CASES`, read from the fixtures) must come out. It also
checks what only a real connection shows: the read timeout, a refused connection, and that
closing the stream disconnects from the provider.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from llmmesh.v1 import events_pb2
from replay_server import Answer, ReplayServer, provider_cases

from gateway.providers import (
    ADAPTERS,
    ProviderAdapter,
    ProviderConfig,
    ProviderRejected,
    ProviderUnavailable,
    load_adapter,
)

cases = provider_cases()


def _adapter(provider: str, base_url: str, **config: Any) -> ProviderAdapter:
    settings: dict[str, Any] = {
        "upstream_model": cases.UPSTREAM_MODEL,
        "base_url": base_url,
        "api_key": "replay-key",
        "max_retries": 2,
        "backoff_initial": 0.0,
        "backoff_max": 0.0,
    }
    settings.update(config)
    return load_adapter(provider)(ProviderConfig(**settings))


@pytest.mark.parametrize("case", cases.CASES, ids=lambda case: case.case_id)
async def test_recorded_answer_over_real_http(replay: ReplayServer, case: Any) -> None:
    answer = Answer(content=case.content(), content_type=case.content_type)
    adapter = _adapter(case.provider, replay.base_url(case.provider, answer))
    try:
        async with asyncio.timeout(10):
            if case.mode == "complete":
                events = await adapter.complete(case.request())
            else:
                events = [event async for event in adapter.stream(case.request())]
    finally:
        await adapter.aclose()
    cases.check_case(case, events)
    assert len(answer.hits) == 1


def _first_stream_case(provider: str) -> Any:
    return next(
        case
        for case in cases.CASES
        if case.provider == provider and case.mode == "stream" and case.error is None
    )


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_503_is_retried_then_the_stream_is_served(
    replay: ReplayServer, provider: str
) -> None:
    case = _first_stream_case(provider)
    answer = Answer(
        status=503,
        content=b'{"error": {"message": "busy"}}',
        content_type="application/json",
        then=Answer(content=case.content()),
    )
    adapter = _adapter(provider, replay.base_url(provider, answer))
    try:
        async with asyncio.timeout(10):
            events = [event async for event in adapter.stream(case.request())]
    finally:
        await adapter.aclose()
    cases.check_case(case, events)
    assert answer.then is not None
    assert (len(answer.hits), len(answer.then.hits)) == (1, 1)


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_400_keeps_the_provider_message(replay: ReplayServer, provider: str) -> None:
    bodies = {
        "openai": b'{"error": {"message": "bad n", "type": "invalid_request_error"}}',
        "anthropic": b'{"type": "error", "error": {"type": "invalid_request_error", '
        b'"message": "bad n"}}',
        "gemini": b'{"error": {"code": 400, "message": "bad n", "status": "INVALID_ARGUMENT"}}',
    }
    answer = Answer(status=400, content=bodies[provider], content_type="application/json")
    adapter = _adapter(provider, replay.base_url(provider, answer))
    try:
        with pytest.raises(ProviderRejected) as caught:
            async with asyncio.timeout(10):
                async for _ in adapter.stream(_first_stream_case(provider).request()):
                    pass
    finally:
        await adapter.aclose()
    assert (caught.value.message, caught.value.status) == ("bad n", 400)
    assert len(answer.hits) == 1


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_read_timeout_mid_stream(replay: ReplayServer, provider: str) -> None:
    case = _first_stream_case(provider)
    answer = Answer(content=case.content(), stall_after_first_event=True)
    adapter = _adapter(provider, replay.base_url(provider, answer), read_timeout=0.2)
    try:
        async with asyncio.timeout(10):
            events = [event async for event in adapter.stream(case.request())]
    finally:
        await adapter.aclose()
    cases.assert_well_formed(events)
    error = events[-2].error
    assert (error.code, error.retryable) == (events_pb2.ERROR_CODE_IDLE_TIMEOUT, True)
    assert len(answer.hits) == 1
    async with asyncio.timeout(10):
        await answer.disconnected.wait()


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_closing_the_stream_disconnects_from_the_provider(
    replay: ReplayServer, provider: str
) -> None:
    case = _first_stream_case(provider)
    answer = Answer(content=case.content(), stall_after_first_event=True)
    adapter = _adapter(provider, replay.base_url(provider, answer))
    try:
        events = adapter.stream(case.request())
        async with asyncio.timeout(10):
            first = await anext(events)
        assert first.WhichOneof("event") == "generation_start"
        await events.aclose()  # type: ignore[attr-defined]
        async with asyncio.timeout(10):
            await answer.disconnected.wait()
    finally:
        await adapter.aclose()


async def test_a_refused_connection_is_retryable_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = _adapter("openai", f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            async with asyncio.timeout(10):
                async for _ in adapter.stream(_first_stream_case("openai").request()):
                    pass
    finally:
        await adapter.aclose()
    assert caught.value.retryable


async def test_requests_reach_the_provider_paths(replay: ReplayServer) -> None:
    expected = {
        "openai": ("/v1/chat/completions", ""),
        "anthropic": ("/v1/messages", ""),
        "gemini": (f"/v1beta/models/{cases.UPSTREAM_MODEL}:streamGenerateContent", "alt=sse"),
    }
    for provider, (path, query) in expected.items():
        case = _first_stream_case(provider)
        answer = Answer(content=case.content())
        adapter = _adapter(provider, replay.base_url(provider, answer))
        try:
            async with asyncio.timeout(10):
                async for _ in adapter.stream(case.request()):
                    pass
        finally:
            await adapter.aclose()
        hit = answer.hits[0]
        assert hit["path"].split("/", 2)[2] == path.lstrip("/")
        assert hit["query"] == query
