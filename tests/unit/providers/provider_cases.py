"""The recorded provider answers and the facts each one must produce, shared by the
conformance suite (`httpx.MockTransport`) and its integration variant (a real replay server).

Every expected value below was written by reading the fixture file itself (the concatenated
`content`/`text_delta`/`partial_json` pieces, the `finish_reason`/`stop_reason`/`finishReason`,
the usage numbers), never by running an adapter. See tests/fixtures/providers/README.md for
where each recording comes from.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from llmmesh.v1 import chat_pb2, events_pb2

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "providers"

STOP = events_pb2.FINISH_REASON_STOP
LENGTH = events_pb2.FINISH_REASON_LENGTH
TOOL_CALLS = events_pb2.FINISH_REASON_TOOL_CALLS
CONTENT_FILTER = events_pb2.FINISH_REASON_CONTENT_FILTER
ERROR = events_pb2.FINISH_REASON_ERROR

#: Any non-empty id (Gemini sends none; the adapter generates one).
ANY_ID = "<any>"
#: The `upstream_model` the suites configure (Gemini reports it when the answer names none).
UPSTREAM_MODEL = "upstream-model"


@dataclass(frozen=True)
class Call:
    """A tool call: `arguments` is the parsed JSON, or the raw text when it is not valid JSON."""

    name: str
    arguments: Any
    id: str = ANY_ID
    thought_signature: str = ""


@dataclass(frozen=True)
class Sequence:
    finish: int
    text: str = ""
    reasoning: str = ""
    signature: str = ""
    refusal: str = ""
    calls: tuple[Call, ...] = ()
    stop_sequence: str | None = None
    logprobs: tuple[tuple[str, float], ...] = ()
    #: The Gemini `thoughtSignature` carried by the text deltas' `provider_metadata`.
    text_signature: str = ""


@dataclass(frozen=True)
class Usage:
    prompt: int
    completion: int
    total: int
    cached: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class Case:
    provider: str
    fixture: str
    sequences: dict[int, Sequence]
    usage: Usage
    request_id: str
    model: str
    prompt_tokens_at_start: int = 0
    error: tuple[int, bool] | None = None  # (ErrorCode, retryable) of the in-band StreamError
    include_reasoning: bool = False
    n: int | None = None
    #: "stream" (SSE through `stream`) or "complete" (a JSON body through `complete`).
    mode: str = "stream"
    #: Replaces the fixture's bytes (spliced cases); `fixture` then names the source.
    body: bytes | None = None
    id: str = ""

    @property
    def case_id(self) -> str:
        return self.id or f"{self.provider}/{self.fixture}"

    def content(self) -> bytes:
        if self.body is not None:
            return self.body
        return (FIXTURES / self.provider / self.fixture).read_bytes()

    @property
    def content_type(self) -> str:
        return "application/json" if self.mode == "complete" else "text/event-stream"

    def request(self) -> chat_pb2.ChatRequest:
        request = chat_pb2.ChatRequest(
            model="replayed",
            messages=[
                chat_pb2.Message(
                    role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="replayed")]
                )
            ],
        )
        if self.include_reasoning:
            request.include_reasoning = True
        if self.n is not None:
            request.generation_parameters.n = self.n
        return request


def _fixture(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


def _splice_after_first(provider: str, name: str, marker: bytes, extra: bytes) -> bytes:
    """The fixture with `extra` inserted after the first SSE event containing `marker`."""
    content = _fixture(provider, name)
    at = content.index(marker)
    end = content.index(b"\n\n", at) + 2
    return content[:end] + extra + content[end:]


def _replace_first(provider: str, name: str, old: bytes, new: bytes) -> bytes:
    """The fixture with the first `old` (which must occur) replaced by `new`."""
    content = _fixture(provider, name)
    assert old in content, old
    return content.replace(old, new, 1)


# -- the facts, read from the fixtures ---------------------------------------------------------

_WEATHER_TEXT = (
    "I'm unable to provide real-time weather updates. To get the current weather in San "
    "Francisco, I recommend checking a reliable weather website or a weather app."
)
_TAX_TEXT = (
    "I'll create a comprehensive tax guide for someone with multiple W2s and save it in a file "
    "called taxes.txt. Let me do that for you now."
)
#: Cut by max_tokens: not valid JSON, kept exactly as streamed.
_TAX_ARGUMENTS = (
    '{"filename": "taxes.txt", "lines_of_text": [\n"# COMPREHENSIVE TAX GUIDE FOR INDIVIDUALS '
    'WITH MULTIPLE W-2s",\n"",\n"## INTRODUCTION",\n"",\n"Filing taxes'
)
_THINKING_TEXT = (
    "Here are the basic steps for safely crossing the street:\n\n**At intersections with "
    'traffic lights:**\n- Wait for the pedestrian "Walk" signal\n- Look both ways before '
    "stepping into the street\n- Make eye contact with drivers when possible\n- Stay alert for "
    "turning vehicles\n\n**At intersections without signals:**\n- Use crosswalks when "
    "available\n- Stop at the curb and look left, right, then left again\n- Wait for a clear "
    "gap in traffic\n- Walk briskly but don't run\n- Keep looking for traffic as you cross\n\n"
    "**General safety tips:**\n- Put away phones and remove headphones\n- Wear bright or "
    "reflective clothing in low light\n- Never assume drivers see you\n- Avoid crossing between "
    "parked cars\n- Walk facing traffic when there's no sidewalk\n\n**In busy urban areas:**\n"
    "- Follow pedestrian signals strictly\n- Be extra cautious of cyclists in bike lanes\n- "
    "Watch for buses and large vehicles with blind spots\n\nThe key is to be visible, alert, "
    "and predictable in your movements. Always prioritize safety over speed when crossing "
    "streets."
)
_THINKING_REASONING = (
    "This is a straightforward question about pedestrian safety. I should provide clear, "
    "helpful advice about how to safely cross a street. This is basic safety information that "
    "could help prevent accidents."
)
_THINKING_SIGNATURE = (
    "EvMCCkYICxgCKkCHP2cSuEdcJK/0rFwqES/ecn+VurRpNTwI4XNyM0vnNfGsc9OmE8YYHauwBZ/uaRpmlEn2I4/k"
    "szHlcpptO82JEgyRMSbPkJYaegxYF3AaDHZbSm9EzZ6CM+YtliIw3iNVP/ilYrfoneo8S2+ad/5xSC62nKbk6joL"
    "tKmqXgXwYFJRpjIUjM2V7EGReOPRKtoBKfNHVmdNf7SeMhHalX/ObSeJ1G/NjDyGQAsDjyHGd7uY1r5gAIn3Cpdv"
    "5r+gHYJmWT+w2uiKZsBDRoSf4O3Km0l752EhPD4InEhqpCKyqhbUZ3dt5+JVKQHk2iyTBhQMB/XBYgZTstIpRqQR"
    "XU5ypcrydgnqj3mD1G9C7YC0ZTCNvFluAx0OL8q+cQwufgfqKquLEf2+XMYzhx9jYkVFEpnf/s1nx6gNBATKfF3D"
    "mrs2r4tWu2QJB+FjlRuDp/8dxUxgJbmyhGxb7XsYeb1vgb7wwzDvP/UhjfQYAQ=="
)
_GEMINI_THOUGHTS = (
    "**Calculating the Days**\n\nI've determined the user's request involves calculating the "
    "days until New Year's Eve. I need to get the current date and the date of New Year's Eve. "
    "My plan involves using `default_api.now()` to get the current date and time. Then, I can "
    "perform the calculation to find the time difference.\n\n\n"
    "**Determining the Approach**\n\nI'm now zeroing in on the best method. Having established "
    "the core requirement -- the number of days until New Year's Eve -- I've identified "
    "`default_api.now()` as my primary tool for retrieving the current date. I'll need to "
    "define December 31st of the current year. I've also recognized the need to calculate the "
    "difference, which isn't a direct function. I'll calculate this myself after getting "
    "today's date.\n\n\n"
)
_GEMINI_NOW_SIGNATURE_PREFIX = "CiIBVKhc7vB+vaaq6rA/KC79Ts7iXagIOA4EBOyBFDpl+pxPCmcBVKhc7gYyIw6X0"


def _gemini_now_signature() -> str:
    """The `thoughtSignature` of the fixture's functionCall part (checked against its prefix)."""
    for line in _fixture("gemini", "stream-thoughts-then-function-call.sse").splitlines():
        if b"functionCall" in line:
            chunk = json.loads(line.removeprefix(b"data: "))
            signature: str = chunk["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
            assert signature.startswith(_GEMINI_NOW_SIGNATURE_PREFIX)
            return signature
    raise AssertionError("the fixture has no functionCall")


#: Synthesized: no recorded fixture has a `thoughtSignature` on a text part (Gemini 2.5 sends one
#: on the first text part of an answer after thinking, Gemini 3 may send it alone in the last
#: part); the spliced cases below put this one in those two places of a gemini-2.5 stream.
GEMINI_TEXT_SIGNATURE = "c3BsaWNlZCB0aG91Z2h0IHNpZ25hdHVyZQ=="
_OVERLOADED = _fixture("anthropic", "docs-error-overloaded-event.sse")
_OPENAI_SERVER_ERROR = (
    # Synthesized: the in-band error object the openai SDK checks for in every chunk
    # (openai-python `_streaming.py`: `if is_mapping(data) and data.get("error")`).
    b'data: {"error": {"message": "The server had an error while processing your request.", '
    b'"type": "server_error", "param": null, "code": null}}\n\n'
)

_GPT_4O = "gpt-4o-2024-08-06"
_GPT_4O_MINI = "gpt-4o-mini-2024-07-18"
_SONNET_4 = "claude-sonnet-4-20250514"
_SONNET_4_5 = "claude-sonnet-4-5-20250929"
_GEMINI_2_0 = "gemini-2.0-flash"
_GEMINI_2_5 = "gemini-2.5-flash"


def _n3_locations(*temperatures: str) -> dict[int, Sequence]:
    """The three structured answers of the OpenAI n=3 recordings (one temperature each)."""
    return {
        index: Sequence(
            STOP, text=f'{{"city":"San Francisco","temperature":{temperature},"units":"f"}}'
        )
        for index, temperature in enumerate(temperatures)
    }


def _weather_and_stock_calls(weather_id: str, stock_id: str) -> dict[int, Sequence]:
    """The two parallel tool calls of the OpenAI multiple-tools recordings."""
    weather = {"city": "Edinburgh", "country": "GB", "units": "c"}
    stock = {"ticker": "AAPL", "exchange": "NASDAQ"}
    return {
        0: Sequence(
            TOOL_CALLS,
            calls=(
                Call("GetWeatherArgs", weather, id=weather_id),
                Call("get_stock_price", stock, id=stock_id),
            ),
        )
    }


_OPENAI_BASIC = Case(
    "openai",
    "chat-stream-basic-text.sse",
    {0: Sequence(STOP, text=_WEATHER_TEXT)},
    Usage(14, 30, 44),
    "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
    _GPT_4O,
)
_ANTHROPIC_BASIC = Case(
    "anthropic",
    "docs-basic-stream.sse",
    {0: Sequence(STOP, text="Hello!")},
    Usage(25, 15, 40),
    "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
    _SONNET_4_5,
    prompt_tokens_at_start=25,
)
_ANTHROPIC_THINKING = Case(
    "anthropic",
    "thinking-stream.sse",
    {
        0: Sequence(
            STOP,
            text=_THINKING_TEXT,
            reasoning=_THINKING_REASONING,
            signature=_THINKING_SIGNATURE,
        )
    },
    Usage(43, 282, 325),
    "msg_01ALwQ87pTS7hH1PjSdC9wJD",
    _SONNET_4,
    prompt_tokens_at_start=43,
    include_reasoning=True,
)
_GEMINI_USAGE_GROWING = Case(
    "gemini",
    "stream-usage-growing.sse",  # candidatesTokenCount 31 → 79 → 80
    {0: Sequence(STOP, text="\n".join(str(number) for number in range(1, 31)))},
    Usage(18, 80 + 35, 133, reasoning=35),
    "ru1garvBEoOiqtsP2fznmQw",
    _GEMINI_2_5,
    prompt_tokens_at_start=18,
)
#: The same answer, its text signed with `GEMINI_TEXT_SIGNATURE`.
_GEMINI_SIGNED_TEXT = {
    0: replace(_GEMINI_USAGE_GROWING.sequences[0], text_signature=GEMINI_TEXT_SIGNATURE)
}

CASES: list[Case] = [
    # ---- OpenAI ---------------------------------------------------------------------------
    _OPENAI_BASIC,
    Case(
        "openai",
        "chat-stream-n3-interleaved.sse",
        _n3_locations("65", "61", "59"),
        Usage(79, 42, 121),
        "chatcmpl-ABfw2KKFuVXmEJgVwYfBvejMAdWtq",
        _GPT_4O,
        n=3,
    ),
    Case(
        "openai",
        "chat-stream-parallel-tool-calls.sse",
        _weather_and_stock_calls("call_JMW1whyEaYG438VE1OIflxA2", "call_DNYTawLBoN8fj3KN6qU9N1Ou"),
        Usage(149, 60, 209),
        "chatcmpl-ABfwAwrNePHUgBBezonVC6MX3zd63",
        _GPT_4O,
    ),
    Case(
        "openai",
        "chat-stream-single-tool-call.sse",
        {
            0: Sequence(
                TOOL_CALLS,
                calls=(
                    Call("get_weather", {"city": "New York City"}, "call_4XzlGBLtUe9dy3GVNV4jhq7h"),
                ),
            )
        },
        Usage(44, 16, 60),
        "chatcmpl-ABfwERreu9s99xXsVuOWtIB2UOx62",
        _GPT_4O,
    ),
    Case(
        "openai",
        "chat-stream-refusal.sse",
        {0: Sequence(STOP, refusal="I'm sorry, I can't assist with that request.")},
        Usage(79, 11, 90),
        "chatcmpl-ABfw4IfQfCCrcuybFm41wJyxjbkz7",
        _GPT_4O,
    ),
    Case(
        "openai",
        "chat-stream-finish-length.sse",
        {0: Sequence(LENGTH, text='{"')},
        Usage(79, 1, 80),
        "chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh",
        _GPT_4O,
    ),
    Case(
        "openai",
        "chat-stream-logprobs.sse",
        {0: Sequence(STOP, text="Foo!", logprobs=(("Foo", -0.0025094282), ("!", -0.26638845)))},
        Usage(9, 2, 11),
        "chatcmpl-ABfw5EzoqmfXjnnsXY7Yd8OC6tb3c",
        _GPT_4O,
    ),
    Case(
        "openai",
        "chat-stream-tool-roundtrip-1.sse",
        {
            0: Sequence(
                TOOL_CALLS,
                calls=(Call("get_capital", {"country": "UK"}, "call_ZR5UUuTt3pf61kjwAJIYdVMj"),),
            )
        },
        Usage(53, 15, 68),
        "chatcmpl-Dx0XpqH8w09uBXwq1zFGYdETjtnEl",
        _GPT_4O_MINI,
    ),
    Case(
        "openai",
        "chat-stream-tool-roundtrip-2.sse",
        {0: Sequence(STOP, text="The capital of the UK is London.")},
        Usage(78, 9, 87),
        "chatcmpl-Dx0Xq5Xx9rHB2ehcHZCRDsnuymUXc",
        _GPT_4O_MINI,
    ),
    replace(
        _OPENAI_BASIC,
        sequences={0: Sequence(ERROR, text="I'm unable")},
        usage=Usage(0, 0, 0),
        error=(events_pb2.ERROR_CODE_UPSTREAM_ERROR, True),
        body=_splice_after_first(
            "openai", "chat-stream-basic-text.sse", b'" unable"', _OPENAI_SERVER_ERROR
        ),
        id="openai/in-band-error-after-content",
    ),
    Case(
        "openai",
        "chat-nonstream-n3.json",
        _n3_locations("64", "65", "63.0"),
        Usage(79, 44, 123),
        "chatcmpl-ABfvp8qzboW92q8ONDF4DPHlI7ckC",
        _GPT_4O,
        prompt_tokens_at_start=79,
        n=3,
        mode="complete",
    ),
    Case(
        "openai",
        "chat-nonstream-parallel-tool-calls.json",
        _weather_and_stock_calls("call_fdNz3vOBKYgOIpMdWotB9MjY", "call_h1DWI1POMJLb0KwIyQHWXD4p"),
        Usage(149, 60, 209),
        "chatcmpl-ABfvyvfNWKcl7Ohqos4UFrmMs1v4C",
        _GPT_4O,
        prompt_tokens_at_start=149,
        mode="complete",
    ),
    # ---- Anthropic ------------------------------------------------------------------------
    _ANTHROPIC_BASIC,
    Case(
        "anthropic",
        "docs-tool-use-stream.sse",
        {
            0: Sequence(
                TOOL_CALLS,
                text="Okay, let's check the weather for San Francisco, CA:",
                calls=(
                    Call(
                        "get_weather",
                        {"location": "San Francisco, CA", "unit": "fahrenheit"},
                        "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    ),
                ),
            )
        },
        Usage(472, 89, 561),
        "msg_014p7gG3wDgGV9EUtLvnow3U",
        _SONNET_4_5,
        prompt_tokens_at_start=472,
    ),
    Case(
        "anthropic",
        "sdk-tool-use-stream.sse",
        {
            0: Sequence(
                TOOL_CALLS,
                text="I'll check the current weather in Paris for you.",
                calls=(
                    Call("get_weather", {"location": "Paris"}, "toolu_01NRLabsLyVHZPKxbKvkfSMn"),
                ),
            )
        },
        Usage(377, 65, 442),
        "msg_019Q1hrJbZG26Fb9BQhrkHEr",
        _SONNET_4,
        prompt_tokens_at_start=377,
    ),
    Case(
        "anthropic",
        "sdk-max-tokens-mid-tool-input.sse",
        {
            0: Sequence(
                LENGTH,
                text=_TAX_TEXT,
                calls=(Call("make_file", _TAX_ARGUMENTS, "toolu_01EKqbqmZrGRXy18eN7m9kvY"),),
            )
        },
        Usage(450, 124, 574),
        "msg_01UdjYBBipA9omjYhicnevgq",
        "claude-3-7-sonnet-20250219",
        prompt_tokens_at_start=450,
    ),
    _ANTHROPIC_THINKING,
    replace(
        _ANTHROPIC_THINKING,
        sequences={0: Sequence(STOP, text=_THINKING_TEXT)},
        include_reasoning=False,
        id="anthropic/thinking-stream.sse-without-include_reasoning",
    ),
    replace(
        _ANTHROPIC_BASIC,
        # Usage so far: message_start's input_tokens 25 and output_tokens 1.
        sequences={0: Sequence(ERROR, text="Hello")},
        usage=Usage(25, 1, 26),
        error=(events_pb2.ERROR_CODE_UNAVAILABLE, True),
        body=_splice_after_first(
            "anthropic", "docs-basic-stream.sse", b"content_block_delta", _OVERLOADED
        ),
        id="anthropic/overloaded-error-after-content_block_delta",
    ),
    # ---- Gemini ---------------------------------------------------------------------------
    Case(
        "gemini",
        "stream-basic-text.sse",  # CRLF framing
        {0: Sequence(STOP, text="The capital of Wyoming is **Cheyenne**.\n")},
        Usage(7, 10, 17),
        "",
        _GEMINI_2_0,
        prompt_tokens_at_start=7,
    ),
    Case(
        "gemini",
        "stream-thoughts-then-function-call.sse",
        {
            0: Sequence(
                TOOL_CALLS,
                reasoning=_GEMINI_THOUGHTS,
                calls=(Call("now", {}, thought_signature=_gemini_now_signature()),),
            )
        },
        Usage(38, 6 + 168, 212, reasoning=168),
        "48SHaPHpHKbG-8YPtZCawAk",
        _GEMINI_2_5,
        prompt_tokens_at_start=38,
        include_reasoning=True,
    ),
    Case(
        "gemini",
        "stream-prompt-blocked.sse",  # no candidates; ends with a single CRLF
        {0: Sequence(CONTENT_FILTER)},
        Usage(0, 0, 0),
        "",
        UPSTREAM_MODEL,
    ),
    Case(
        "gemini",
        "stream-tool-roundtrip-1.sse",
        {0: Sequence(TOOL_CALLS, calls=(Call("get_capital", {"country": "France"}),))},
        Usage(52, 5, 57),
        "1lpeaMTxIpW1nvgP-O3vwQY",
        _GEMINI_2_0,
        prompt_tokens_at_start=52,
    ),
    Case(
        "gemini",
        "stream-tool-roundtrip-2.sse",
        {0: Sequence(TOOL_CALLS, calls=(Call("get_temperature", {"city": "Paris"}),))},
        Usage(64, 5, 69),
        "11peaOXwBPH_2PgPh_z--AY",
        _GEMINI_2_0,
        prompt_tokens_at_start=64,
    ),
    Case(
        "gemini",
        "stream-tool-roundtrip-3.sse",  # promptTokenCount 169 then 79: the last wins
        {0: Sequence(STOP, text="The temperature in Paris is 30°C.\n")},
        Usage(79, 12, 91),
        "11peaI_ZJLq3nvgP0vasuQk",
        _GEMINI_2_0,
        prompt_tokens_at_start=169,
    ),
    _GEMINI_USAGE_GROWING,
    Case(
        "gemini",
        "generate-content-basic.json",
        {
            0: Sequence(
                STOP,
                text=(
                    "Google's headquarters, also known as the Googleplex, is located in "
                    "**Mountain View, California**.\n"
                ),
            )
        },
        Usage(7, 22, 29),
        "",
        _GEMINI_2_0,
        prompt_tokens_at_start=7,
        mode="complete",
    ),
    replace(
        _GEMINI_USAGE_GROWING,
        sequences=_GEMINI_SIGNED_TEXT,
        body=_replace_first(
            "gemini",
            "stream-usage-growing.sse",
            b'"}],"role": "model"}',
            b'", "thoughtSignature": "' + GEMINI_TEXT_SIGNATURE.encode() + b'"}],"role": "model"}',
        ),
        id="gemini/thought-signature-on-the-first-text-part",
    ),
    replace(
        _GEMINI_USAGE_GROWING,
        sequences=_GEMINI_SIGNED_TEXT,
        body=_replace_first(
            "gemini",
            "stream-usage-growing.sse",
            b'data: {"candidates": [{"content": {"parts": [{"text": "0"}]',
            b'data: {"candidates": [{"content": {"parts": [{"thoughtSignature": "'
            + GEMINI_TEXT_SIGNATURE.encode()
            + b'"}],"role": "model"},"index": 0}]}\r\n\r\n'
            + b'data: {"candidates": [{"content": {"parts": [{"text": "0"}]',
        ),
        id="gemini/thought-signature-alone-in-a-part",
    ),
]


# -- reading a canonical stream back -----------------------------------------------------------


@dataclass
class _Collected:
    text: str = ""
    reasoning: str = ""
    signature: str = ""
    refusal: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    text_meta: dict[str, Any] = field(default_factory=dict)
    finish: int | None = None
    stop_sequence: str | None = None
    logprobs: list[tuple[str, float]] = field(default_factory=list)


def assert_well_formed(events: list[events_pb2.StreamEvent]) -> None:
    """The stream follows events.proto's grammar."""
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "generation_start", kinds
    assert kinds[-1] == "generation_finish", kinds
    assert Counter(kinds)["generation_start"] == 1
    assert Counter(kinds)["generation_finish"] == 1
    assert Counter(kinds)["error"] <= 1
    if "error" in kinds:
        assert kinds.index("error") == len(kinds) - 2, "StreamError must be followed by the finish"
    started: set[int] = set()
    finished: set[int] = set()
    calls_seen: set[tuple[int, int]] = set()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "sequence_start":
            index = event.sequence_start.index
            assert index not in started, f"sequence {index} started twice"
            started.add(index)
        elif kind == "sequence_delta":
            delta = event.sequence_delta
            assert delta.index in started and delta.index not in finished, delta
            assert delta.WhichOneof("delta") is not None
            if delta.WhichOneof("delta") == "tool_call":
                key = (delta.index, delta.tool_call.tool_call_index)
                if key not in calls_seen:
                    assert delta.tool_call.id and delta.tool_call.name, "first piece: id+name"
                    calls_seen.add(key)
        elif kind == "sequence_finish":
            index = event.sequence_finish.index
            assert index in started and index not in finished, f"sequence {index} finish"
            finished.add(index)
            if event.sequence_finish.reason == ERROR:
                assert "error" in kinds
    assert started == finished, (started, finished)


def check_case(case: Case, events: list[events_pb2.StreamEvent]) -> None:
    """`events` are well-formed and carry exactly the facts of `case`."""
    assert_well_formed(events)
    start = events[0].generation_start
    assert start.request_id == case.request_id
    assert start.model == case.model
    assert start.prompt_tokens == case.prompt_tokens_at_start
    assert start.role == chat_pb2.ROLE_ASSISTANT
    collected: dict[int, _Collected] = {}
    error: tuple[int, bool] | None = None
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "sequence_start":
            collected[event.sequence_start.index] = _Collected()
        elif kind == "sequence_delta":
            delta = event.sequence_delta
            target = collected[delta.index]
            which = delta.WhichOneof("delta")
            if which == "text":
                target.text += delta.text
                target.logprobs += [(item.token, item.logprob) for item in delta.logprobs]
                target.text_meta.update(json_format.MessageToDict(delta.provider_metadata))
            else:
                assert not delta.HasField("provider_metadata"), "only text deltas carry it"
            if which == "reasoning":
                target.reasoning += delta.reasoning.text
                target.signature += delta.reasoning.signature
            elif which == "refusal":
                target.refusal += delta.refusal
            elif which == "tool_call":
                piece = delta.tool_call
                so_far = target.calls.setdefault(
                    piece.tool_call_index, {"id": "", "name": "", "arguments": "", "meta": {}}
                )
                so_far["id"] += piece.id
                so_far["name"] += piece.name
                so_far["arguments"] += piece.arguments
                so_far["meta"].update(json_format.MessageToDict(piece.provider_metadata))
        elif kind == "sequence_finish":
            target = collected[event.sequence_finish.index]
            target.finish = event.sequence_finish.reason
            if event.sequence_finish.HasField("stop_sequence"):
                target.stop_sequence = event.sequence_finish.stop_sequence
        elif kind == "error":
            error = (event.error.code, event.error.retryable)
    assert error == case.error
    assert sorted(collected) == sorted(case.sequences)
    for index, expected in case.sequences.items():
        got = collected[index]
        assert got.finish == expected.finish, index
        assert got.text == expected.text, index
        assert got.reasoning == expected.reasoning, index
        assert got.signature == expected.signature, index
        assert got.refusal == expected.refusal, index
        assert got.stop_sequence == expected.stop_sequence, index
        assert got.text_meta == (
            {"gemini": {"thoughtSignature": expected.text_signature}}
            if expected.text_signature
            else {}
        ), index
        assert [(token, round(logprob, 6)) for token, logprob in got.logprobs] == [
            (token, round(logprob, 6)) for token, logprob in expected.logprobs
        ]
        assert sorted(got.calls) == list(range(len(expected.calls))), index
        for position, call in enumerate(expected.calls):
            actual: dict[str, Any] = got.calls[position]
            assert actual["name"] == call.name
            if call.id == ANY_ID:
                assert actual["id"]
            else:
                assert actual["id"] == call.id
            if isinstance(call.arguments, str):
                assert actual["arguments"] == call.arguments
                try:
                    json.loads(actual["arguments"])
                except ValueError:
                    pass
                else:
                    raise AssertionError("expected invalid (truncated) JSON arguments")
            else:
                assert json.loads(actual["arguments"]) == call.arguments
            expected_meta = (
                {"gemini": {"thoughtSignature": call.thought_signature}}
                if call.thought_signature
                else {}
            )
            assert actual["meta"] == expected_meta
    usage = events[-1].generation_finish.usage
    assert (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_prompt_tokens,
        usage.reasoning_tokens,
    ) == (
        case.usage.prompt,
        case.usage.completion,
        case.usage.total,
        case.usage.cached,
        case.usage.reasoning,
    )
