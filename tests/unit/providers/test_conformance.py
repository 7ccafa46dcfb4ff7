"""The provider conformance suite: every registered adapter, every recorded answer.

Each case feeds a recorded provider answer (tests/fixtures/providers) through
`httpx.MockTransport` and checks the canonical events against facts read from the fixture
(`provider_cases.CASES`). The error cases check the mapping of HTTP failures to mesh errors
and that retries happen only before the first event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from llmmesh.v1 import chat_pb2, events_pb2
from provider_cases import CASES, FIXTURES, UPSTREAM_MODEL, Case, assert_well_formed, check_case
from pydantic import SecretStr

from gateway.providers import (
    ADAPTERS,
    ProviderAdapter,
    ProviderConfig,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    load_adapter,
)
from gateway.providers.errors import ProviderError

API_KEY = "test-key-not-a-secret"
MAX_RETRIES = 2

Handler = Callable[[httpx.Request], Any]


def _config(**overrides: Any) -> ProviderConfig:
    settings: dict[str, Any] = {
        "upstream_model": UPSTREAM_MODEL,
        "api_key": API_KEY,
        "max_retries": MAX_RETRIES,
        "backoff_initial": 0.0,
        "backoff_max": 0.0,
    }
    settings.update(overrides)
    return ProviderConfig(**settings)


class Upstream:
    """A fake provider: answers each request with the next handler, and records requests."""

    def __init__(self, *handlers: Handler) -> None:
        self._handlers = list(handlers)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self._handlers[min(len(self.requests), len(self._handlers)) - 1]
        response = handler(request)
        if asyncio.iscoroutine(response):
            response = await response
        assert isinstance(response, httpx.Response)
        return response

    def adapter(self, provider: str, **config: Any) -> ProviderAdapter:
        return load_adapter(provider)(_config(**config), transport=httpx.MockTransport(self))


async def _pieces(content: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def _replay(case: Case, chunk_size: int | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        content = case.content()
        body: bytes | AsyncIterator[bytes] = (
            content if chunk_size is None else _pieces(content, chunk_size)
        )
        return httpx.Response(200, headers={"content-type": case.content_type}, content=body)

    return handler


def _answer(
    body: bytes | Callable[[], AsyncIterator[bytes]],
    *,
    status: int = 200,
    content_type: str = "text/event-stream",
) -> Handler:
    """Answers every request with `body` (a generator function: a fresh body each time)."""

    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else body()
        return httpx.Response(status, headers={"content-type": content_type}, content=content)

    return handler


async def _run(adapter: ProviderAdapter, case: Case) -> list[events_pb2.StreamEvent]:
    try:
        if case.mode == "complete":
            return await adapter.complete(case.request())
        async with asyncio.timeout(10):
            return [event async for event in adapter.stream(case.request())]
    finally:
        await adapter.aclose()


def _check_wire(provider: str, request: httpx.Request, mode: str) -> None:
    body = json.loads(request.content)
    if provider == "openai":
        assert request.url == "https://api.openai.com/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert body["model"] == UPSTREAM_MODEL
        assert body["stream"] is (mode == "stream")
    elif provider == "anthropic":
        assert request.url == "https://api.anthropic.com/v1/messages"
        assert request.headers["x-api-key"] == API_KEY
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert body["model"] == UPSTREAM_MODEL
        assert body["stream"] is (mode == "stream")
    else:
        method = "streamGenerateContent?alt=sse" if mode == "stream" else "generateContent"
        assert request.url == (
            f"https://generativelanguage.googleapis.com/v1beta/models/{UPSTREAM_MODEL}:{method}"
        )
        assert request.headers["x-goog-api-key"] == API_KEY
    assert request.method == "POST"


def test_every_registered_adapter_has_recorded_cases() -> None:
    assert {case.provider for case in CASES} == set(ADAPTERS)


@pytest.mark.parametrize("chunk_size", [None, 7], ids=["whole", "7-byte-pieces"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.case_id)
async def test_recorded_answer_becomes_the_canonical_events(
    case: Case, chunk_size: int | None
) -> None:
    upstream = Upstream(_replay(case, chunk_size))
    events = await _run(upstream.adapter(case.provider), case)
    check_case(case, events)
    assert len(upstream.requests) == 1
    _check_wire(case.provider, upstream.requests[0], case.mode)


# -- HTTP failures --------------------------------------------------------------------------


def _error_body(provider: str, message: str) -> dict[str, Any]:
    """Each provider's documented error envelope (synthesized, with our message)."""
    if provider == "openai":
        return {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    if provider == "anthropic":
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}


def _first_stream_case(provider: str) -> Case:
    return next(
        case
        for case in CASES
        if case.provider == provider and case.mode == "stream" and case.error is None
    )


def _first_event_end(content: bytes) -> int:
    """Where the first SSE event of `content` ends (LF or CRLF framing)."""
    return min(
        content.index(separator) + len(separator)
        for separator in (b"\n\n", b"\r\n\r\n")
        if separator in content
    )


def _status(status: int, provider: str, message: str) -> Handler:
    return lambda request: httpx.Response(status, json=_error_body(provider, message))


def _raise(exc: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)

    return handler


_MESSAGE = "Invalid value for 'temperature': must be at most 2."

_FAILURES: list[tuple[str, Callable[[str], Handler], type[ProviderError], bool, int]] = [
    ("400", lambda p: _status(400, p, _MESSAGE), ProviderRejected, False, 1),
    ("401", lambda p: _status(401, p, _MESSAGE), ProviderUnavailable, False, 1),
    ("403", lambda p: _status(403, p, _MESSAGE), ProviderUnavailable, False, 1),
    ("429", lambda p: _status(429, p, _MESSAGE), RateLimited, True, MAX_RETRIES + 1),
    ("500", lambda p: _status(500, p, _MESSAGE), ProviderUnavailable, True, MAX_RETRIES + 1),
    ("503", lambda p: _status(503, p, _MESSAGE), ProviderUnavailable, True, MAX_RETRIES + 1),
    ("529", lambda p: _status(529, p, _MESSAGE), ProviderUnavailable, True, MAX_RETRIES + 1),
    ("read-timeout", lambda p: _raise(httpx.ReadTimeout), ProviderTimeout, True, MAX_RETRIES + 1),
    (
        "connect-timeout",
        lambda p: _raise(httpx.ConnectTimeout),
        ProviderTimeout,
        True,
        MAX_RETRIES + 1,
    ),
    (
        "connect-error",
        lambda p: _raise(httpx.ConnectError),
        ProviderUnavailable,
        True,
        MAX_RETRIES + 1,
    ),
]


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@pytest.mark.parametrize(
    ("failure", "expected", "retryable", "attempts"),
    [(make, expected, retryable, attempts) for _, make, expected, retryable, attempts in _FAILURES],
    ids=[name for name, *_ in _FAILURES],
)
async def test_http_failure_before_the_first_event_raises_the_mesh_error(
    provider: str,
    failure: Callable[[str], Handler],
    expected: type[ProviderError],
    retryable: bool,
    attempts: int,
) -> None:
    upstream = Upstream(failure(provider))
    adapter = upstream.adapter(provider)
    with pytest.raises(expected) as caught:
        await _run(adapter, _first_stream_case(provider))
    error = caught.value
    assert type(error) is expected
    assert error.retryable is retryable
    assert error.provider == provider
    assert len(upstream.requests) == attempts
    if isinstance(error, ProviderRejected):
        assert error.message == _MESSAGE  # the provider's message, preserved
        assert error.status == 400
    if isinstance(error, ProviderUnavailable) and not retryable:
        assert _MESSAGE not in error.message  # a refused key is ours to fix, not the client's


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_a_retry_before_the_first_event_is_invisible(provider: str) -> None:
    case = _first_stream_case(provider)
    upstream = Upstream(_status(503, provider, "try later"), _replay(case))
    events = await _run(upstream.adapter(provider), case)
    check_case(case, events)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_retry_after_is_honoured_within_the_budget(provider: str) -> None:
    case = _first_stream_case(provider)

    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, headers={"retry-after-ms": "1"}, json=_error_body(provider, "slow down")
        )

    upstream = Upstream(throttled, _replay(case))
    events = await _run(upstream.adapter(provider), case)
    check_case(case, events)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_no_retry_after_the_first_event(provider: str) -> None:
    """The connection dies mid-stream: in-band error, and the request is not sent again."""
    case = _first_stream_case(provider)
    content = case.content()
    cut = _first_event_end(content)  # one whole event: the generation has started

    async def dying() -> AsyncIterator[bytes]:
        yield content[:cut]
        raise httpx.ReadError("connection reset")

    upstream = Upstream(_answer(dying), _replay(case))
    events = await _run(upstream.adapter(provider), case)
    assert_well_formed(events)
    error = events[-2].error
    assert (error.code, error.retryable) == (events_pb2.ERROR_CODE_UPSTREAM_ERROR, True)
    assert len(upstream.requests) == 1


async def test_an_error_event_before_the_first_event_is_retried() -> None:
    """Anthropic's `overloaded_error` as the whole answer: nothing was sent, so retry."""
    overloaded = (FIXTURES / "anthropic" / "docs-error-overloaded-event.sse").read_bytes()
    case = _first_stream_case("anthropic")
    upstream = Upstream(_answer(overloaded), _replay(case))
    events = await _run(upstream.adapter("anthropic"), case)
    check_case(case, events)
    assert len(upstream.requests) == 2


async def test_an_error_event_on_every_attempt_raises_unavailable() -> None:
    overloaded = (FIXTURES / "anthropic" / "docs-error-overloaded-event.sse").read_bytes()
    upstream = Upstream(_answer(overloaded))
    with pytest.raises(ProviderUnavailable) as caught:
        await _run(upstream.adapter("anthropic"), _first_stream_case("anthropic"))
    assert caught.value.retryable
    assert caught.value.message == "Overloaded"
    assert len(upstream.requests) == MAX_RETRIES + 1


async def test_gemini_refusing_the_key_is_a_configuration_error() -> None:
    """Google answers a bad key with 400 INVALID_ARGUMENT + ErrorInfo reason API_KEY_INVALID."""
    recorded = (FIXTURES / "gemini" / "error-400-api-key-invalid.json").read_bytes()
    upstream = Upstream(_answer(recorded, status=400, content_type="application/json"))
    with pytest.raises(ProviderUnavailable) as caught:
        await _run(upstream.adapter("gemini"), _first_stream_case("gemini"))
    assert not caught.value.retryable
    assert caught.value.status == 400
    assert "key1234" not in caught.value.message  # the DebugInfo quotes part of the key
    assert len(upstream.requests) == 1


# -- time budget and cancellation -----------------------------------------------------------


def _request_with_budget(case: Case, seconds: float) -> chat_pb2.ChatRequest:
    request = case.request()
    request.timeout.FromMilliseconds(int(seconds * 1000))
    return request


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_total_budget_before_the_first_event_raises_timeout(provider: str) -> None:
    never = asyncio.Event()

    async def silent() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    upstream = Upstream(_answer(silent))
    adapter = upstream.adapter(provider)
    case = _first_stream_case(provider)
    with pytest.raises(ProviderTimeout):
        async with asyncio.timeout(5):
            async for _ in adapter.stream(_request_with_budget(case, 0.05)):
                pass
    await adapter.aclose()
    assert len(upstream.requests) == 1  # the budget is spent: no retry


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_total_budget_mid_stream_ends_in_band(provider: str) -> None:
    case = _first_stream_case(provider)
    content = case.content()
    cut = _first_event_end(content)
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield content[:cut]
        await never.wait()

    upstream = Upstream(_answer(stalls))
    adapter = upstream.adapter(provider)
    async with asyncio.timeout(5):
        events = [event async for event in adapter.stream(_request_with_budget(case, 0.1))]
    await adapter.aclose()
    assert_well_formed(events)
    error = events[-2].error
    assert (error.code, error.retryable) == (events_pb2.ERROR_CODE_TOTAL_TIMEOUT, True)


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_read_timeout_mid_stream_is_an_idle_timeout(provider: str) -> None:
    case = _first_stream_case(provider)
    content = case.content()
    cut = _first_event_end(content)

    async def times_out() -> AsyncIterator[bytes]:
        yield content[:cut]
        raise httpx.ReadTimeout("no data within the read timeout")

    upstream = Upstream(_answer(times_out))
    events = await _run(upstream.adapter(provider), case)
    assert_well_formed(events)
    error = events[-2].error
    assert (error.code, error.retryable) == (events_pb2.ERROR_CODE_IDLE_TIMEOUT, True)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_closing_the_stream_closes_the_upstream_response(provider: str) -> None:
    case = _first_stream_case(provider)
    content = case.content()
    cut = _first_event_end(content)
    closed = asyncio.Event()
    never = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        """One event, then nothing; httpx calls `aclose` when the response is closed."""

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield content[:cut]
            await never.wait()

        async def aclose(self) -> None:
            closed.set()

    upstream = Upstream(
        lambda request: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Endless()
        )
    )
    adapter = upstream.adapter(provider)
    events = adapter.stream(case.request())
    first = await anext(events)
    assert first.WhichOneof("event") == "generation_start"
    await events.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        await closed.wait()
    await adapter.aclose()


# -- odds and ends ------------------------------------------------------------------------------


async def test_anthropic_complete_converts_a_whole_message() -> None:
    """No non-streaming Anthropic recording exists in the fixtures: this body follows the
    Messages API reference's response shape (synthesized), with every block kind we convert."""
    message = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "Weather needs a tool.", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 30},
    }
    upstream = Upstream(lambda request: httpx.Response(200, json=message))
    adapter = upstream.adapter("anthropic")
    request = _first_stream_case("anthropic").request()
    request.include_reasoning = True
    try:
        events = await adapter.complete(request)
    finally:
        await adapter.aclose()
    assert_well_formed(events)
    _check_wire("anthropic", upstream.requests[0], "complete")
    deltas = [event.sequence_delta for event in events if event.HasField("sequence_delta")]
    assert [delta.WhichOneof("delta") for delta in deltas] == [
        "reasoning",
        "text",
        "tool_call",
        "tool_call",
    ]
    assert (deltas[0].reasoning.text, deltas[0].reasoning.signature) == (
        "Weather needs a tool.",
        "sig",
    )
    calls = [delta.tool_call for delta in deltas[2:]]
    assert [(call.tool_call_index, call.id, call.name) for call in calls] == [
        (0, "toolu_1", "get_weather"),
        (1, "toolu_2", "get_time"),
    ]
    assert [json.loads(call.arguments) for call in calls] == [{"city": "Oslo"}, {}]
    assert events[-2].sequence_finish.reason == events_pb2.FINISH_REASON_TOOL_CALLS
    usage = events[-1].generation_finish.usage
    assert (usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens) == (25, 5, 30)


def test_the_api_key_is_never_in_the_config_repr() -> None:
    assert API_KEY not in repr(_config())
    assert "secret" not in repr(ProviderConfig(upstream_model="m", api_key=SecretStr("secret")))
