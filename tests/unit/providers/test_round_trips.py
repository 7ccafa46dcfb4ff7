"""What a provider hands out to be sent back comes back: Gemini's `thoughtSignature`s.

A streamed answer's events are gathered into the assistant turn the way a client of the native
API keeps it for its next request (a tool call keeps its `provider_metadata`; a text delta that
carries `provider_metadata` becomes a text part of its own that keeps it, so no signature is
moved onto text it was not made for). That turn goes back through the adapter, which must put
each signature on the part it came from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from llmmesh.v1 import chat_pb2, events_pb2
from provider_cases import CASES, FIXTURES, GEMINI_TEXT_SIGNATURE, UPSTREAM_MODEL, Case, check_case

from gateway.providers import ProviderConfig, load_adapter


def _case(case_id: str) -> Case:
    return next(case for case in CASES if case.case_id == case_id)


def _assistant_turn(events: list[events_pb2.StreamEvent]) -> chat_pb2.Message:
    """Sequence 0's output as the assistant message of the conversation's next request."""
    message = chat_pb2.Message(role=chat_pb2.ROLE_ASSISTANT)
    calls: dict[int, chat_pb2.ToolCall] = {}
    for event in events:
        delta = event.sequence_delta
        which = delta.WhichOneof("delta") if event.HasField("sequence_delta") else None
        if which == "text":
            last = message.content[-1] if message.content else None
            signed = delta.HasField("provider_metadata")
            if (
                signed
                or last is None
                or not last.HasField("text")
                or last.HasField("provider_metadata")
            ):
                part = message.content.add(text=delta.text)
                if signed:
                    part.provider_metadata.CopyFrom(delta.provider_metadata)
            else:
                last.text += delta.text
        elif which == "reasoning":
            if not message.content or not message.content[-1].HasField("reasoning"):
                message.content.add(reasoning=chat_pb2.Reasoning())
            reasoning = message.content[-1].reasoning
            reasoning.text += delta.reasoning.text
            reasoning.signature += delta.reasoning.signature
        elif which == "tool_call":
            piece = delta.tool_call
            if piece.tool_call_index not in calls:
                calls[piece.tool_call_index] = message.tool_calls.add()
            call = calls[piece.tool_call_index]
            call.id += piece.id
            call.name += piece.name
            call.arguments += piece.arguments
            call.provider_metadata.MergeFrom(piece.provider_metadata)
    return message


FollowUp = Callable[[chat_pb2.Message], list[chat_pb2.Message]]


def _user_asks(turn: chat_pb2.Message) -> list[chat_pb2.Message]:
    return [chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="?")])]


async def _next_turn_body(case: Case, follow_up: FollowUp) -> dict[str, Any]:
    """Streams `case`'s answer, then sends the conversation continued by its assistant turn and
    what `follow_up` makes of that turn; the body of that second request."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=case.content()
        )

    adapter = load_adapter(case.provider)(
        ProviderConfig(upstream_model=UPSTREAM_MODEL, api_key="k"),
        transport=httpx.MockTransport(handler),
    )
    try:
        async with asyncio.timeout(10):
            request = case.request()
            events = [event async for event in adapter.stream(request)]
            check_case(case, events)
            turn = _assistant_turn(events)
            request.messages.extend([turn, *follow_up(turn)])
            async for _ in adapter.stream(request):
                pass
    finally:
        await adapter.aclose()
    assert len(sent) == 2
    body: dict[str, Any] = json.loads(sent[1].content)
    return body


def _recorded_function_call_part() -> dict[str, Any]:
    """The functionCall part of the recorded thoughts-then-function-call stream."""
    recording = (FIXTURES / "gemini" / "stream-thoughts-then-function-call.sse").read_bytes()
    for line in recording.splitlines():
        if b"functionCall" in line:
            part: dict[str, Any] = json.loads(line.removeprefix(b"data: "))["candidates"][0][
                "content"
            ]["parts"][0]
            return part
    raise AssertionError("the fixture has no functionCall")


async def test_a_function_calls_signature_goes_back_on_its_function_call() -> None:
    case = _case("gemini/stream-thoughts-then-function-call.sse")

    def tool_result(turn: chat_pb2.Message) -> list[chat_pb2.Message]:
        # The recorded call has no id: the adapter made one, and the result names it.
        return [
            chat_pb2.Message(
                role=chat_pb2.ROLE_TOOL,
                tool_call_id=turn.tool_calls[0].id,
                content=[chat_pb2.ContentPart(text="2025-08-01T10:00:00Z")],
            )
        ]

    body = await _next_turn_body(case, tool_result)
    model_turn = body["contents"][1]
    assert model_turn["role"] == "model"
    recorded = _recorded_function_call_part()
    call_part = model_turn["parts"][-1]
    assert call_part["thoughtSignature"] == recorded["thoughtSignature"]
    assert call_part["functionCall"]["name"] == recorded["functionCall"]["name"] == "now"
    assert call_part["functionCall"]["args"] == recorded["functionCall"]["args"]
    assert [part.get("thought") for part in model_turn["parts"]] == [True, None]


async def test_a_text_parts_signature_goes_back_on_that_text() -> None:
    case = _case("gemini/thought-signature-on-the-first-text-part")
    body = await _next_turn_body(case, _user_asks)
    # Recorded chunks: "1\n…\n13\n1" (the spliced signature), "4\n15\n…\n3", "0".
    numbers = "\n".join(str(number) for number in range(1, 31))
    first, rest = numbers[: numbers.index("14") + 1], numbers[numbers.index("14") + 1 :]
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"text": first, "thoughtSignature": GEMINI_TEXT_SIGNATURE}, {"text": rest}],
    }


async def test_a_signature_alone_goes_back_in_its_own_part() -> None:
    case = _case("gemini/thought-signature-alone-in-a-part")
    body = await _next_turn_body(case, _user_asks)
    numbers = "\n".join(str(number) for number in range(1, 31))
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"text": numbers[:-1]},
            {"text": "", "thoughtSignature": GEMINI_TEXT_SIGNATURE},
            {"text": "0"},
        ],
    }
