"""Building a well-formed canonical stream from a provider's pieces (events.proto's grammar).

The adapters' translators say what they saw ("sequence 1 has this text", "sequence 0 ended
with length") and `StreamBuilder` turns that into events with explicit starts and finishes:
`SequenceStart` before a sequence's first delta, each start and finish exactly once, and after
a failure `SequenceFinish(ERROR)` for every open sequence, `StreamError`, `GenerationFinish`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from llmmesh.v1 import chat_pb2, events_pb2

from gateway.providers.structs import struct_from_json

__all__ = ["MalformedStream", "StreamBuilder"]

Events = list[events_pb2.StreamEvent]


class MalformedStream(ValueError):
    """The provider's answer does not follow its own protocol (bad JSON, events out of order)."""


class StreamBuilder:
    """The canonical events of one generation, built from what a translator saw.

    Every method returns the events to emit now (possibly none). `usage` is the usage so far;
    translators update it as the provider reports it. After `end()` or `fail()`, `done` is true
    and nothing more may be added.
    """

    def __init__(self, *, sequences: int = 1) -> None:
        self.sequences = max(sequences, 1)
        self.usage = events_pb2.Usage()
        self.started = False
        self.done = False
        self._open: set[int] = set()
        self._finished: set[int] = set()

    # -- the generation ---------------------------------------------------------------------

    def start(
        self, *, request_id: str, model: str, prompt_tokens: int = 0, created: float | None = None
    ) -> Events:
        """`GenerationStart` (only the first call emits; later calls return nothing)."""
        if self.started:
            return []
        self.started = True
        timestamp = timestamp_pb2.Timestamp()
        if created is None:
            timestamp.GetCurrentTime()
        else:
            timestamp.FromNanoseconds(int(created * 1e9))
        self.usage.prompt_tokens = prompt_tokens
        return [
            events_pb2.StreamEvent(
                generation_start=events_pb2.GenerationStart(
                    request_id=request_id,
                    model=model,
                    created=timestamp,
                    role=chat_pb2.ROLE_ASSISTANT,
                    prompt_tokens=prompt_tokens,
                )
            )
        ]

    def end(self) -> Events:
        """`GenerationFinish` with `usage`; every started sequence must have finished."""
        self._check_live()
        if self._open:
            raise MalformedStream(f"sequences {sorted(self._open)} never finished")
        self.done = True
        usage = events_pb2.Usage()
        usage.CopyFrom(self.usage)
        if not usage.total_tokens:
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return [events_pb2.StreamEvent(generation_finish=events_pb2.GenerationFinish(usage=usage))]

    def fail(self, code: events_pb2.ErrorCode, message: str, *, retryable: bool) -> Events:
        """Ends a started stream after a failure: open sequences finish with ERROR, then the
        `StreamError`, then `GenerationFinish` with the usage so far."""
        self._check_live()
        events = [
            self._finish_event(index, events_pb2.FINISH_REASON_ERROR, None)
            for index in sorted(self._open)
        ]
        self._finished |= self._open
        self._open.clear()
        events.append(
            events_pb2.StreamEvent(
                error=events_pb2.StreamError(code=code, message=message, retryable=retryable)
            )
        )
        return events + self.end()

    # -- sequences ----------------------------------------------------------------------------

    @property
    def open_sequences(self) -> frozenset[int]:
        """Sequences started and not yet finished."""
        return frozenset(self._open)

    @property
    def finished_sequences(self) -> frozenset[int]:
        """Sequences finished so far."""
        return frozenset(self._finished)

    def open(self, index: int) -> Events:
        """`SequenceStart(index)` unless it was already emitted."""
        self._check_live()
        if index in self._open:
            return []
        if index in self._finished:
            raise MalformedStream(f"sequence {index} continued after its finish")
        if index < 0:
            raise MalformedStream(f"negative sequence index {index}")
        self._open.add(index)
        return [events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=index))]

    def finish(
        self, index: int, reason: events_pb2.FinishReason, stop_sequence: str | None = None
    ) -> Events:
        """`SequenceFinish(index)` (starting the sequence first if it never produced output).

        A second finish of the same sequence emits nothing.
        """
        if index in self._finished:
            return []
        events = self.open(index)
        self._open.discard(index)
        self._finished.add(index)
        return [*events, self._finish_event(index, reason, stop_sequence)]

    def finish_all(self, reason: events_pb2.FinishReason) -> Events:
        """Starts and finishes every sequence of the request that has not finished yet."""
        events: Events = []
        for index in sorted(set(range(self.sequences)) | self._open):
            if index not in self._finished:
                events += self.finish(index, reason)
        return events

    # -- deltas -------------------------------------------------------------------------------

    def text(
        self, index: int, text: str, logprobs: Iterable[events_pb2.TokenLogprob] = ()
    ) -> Events:
        """Output text (nothing for an empty piece without logprobs)."""
        logprobs = list(logprobs)
        if not text and not logprobs:
            return self.open(index)
        return self._delta(events_pb2.SequenceDelta(index=index, text=text, logprobs=logprobs))

    def text_with_metadata(
        self, index: int, text: str, provider_metadata: Mapping[str, Any]
    ) -> Events:
        """Output text with opaque provider data that must round-trip with it (see
        `SequenceDelta.provider_metadata`); emitted even when the text is empty."""
        delta = events_pb2.SequenceDelta(index=index, text=text)
        delta.provider_metadata.CopyFrom(struct_from_json(provider_metadata))
        return self._delta(delta)

    def refusal(
        self, index: int, text: str, logprobs: Iterable[events_pb2.TokenLogprob] = ()
    ) -> Events:
        """The model's refusal text (nothing for an empty piece without logprobs)."""
        logprobs = list(logprobs)
        if not text and not logprobs:
            return self.open(index)
        return self._delta(events_pb2.SequenceDelta(index=index, refusal=text, logprobs=logprobs))

    def reasoning(self, index: int, text: str = "", signature: str = "") -> Events:
        """Reasoning text and/or a piece of its signature (nothing when both are empty)."""
        if not text and not signature:
            return self.open(index)
        return self._delta(
            events_pb2.SequenceDelta(
                index=index,
                reasoning=events_pb2.ReasoningDelta(text=text, signature=signature),
            )
        )

    def tool_call(
        self,
        index: int,
        tool_call_index: int,
        *,
        call_id: str = "",
        name: str = "",
        arguments: str = "",
        provider_metadata: Mapping[str, Any] | None = None,
    ) -> Events:
        """A piece of a tool call; the first piece of each call carries `call_id` and `name`.

        A piece with nothing in it (no id, name, arguments or metadata) emits nothing.
        """
        if not (call_id or name or arguments or provider_metadata):
            return self.open(index)
        delta = events_pb2.ToolCallDelta(
            tool_call_index=tool_call_index, id=call_id, name=name, arguments=arguments
        )
        if provider_metadata:
            delta.provider_metadata.CopyFrom(struct_from_json(provider_metadata))
        return self._delta(events_pb2.SequenceDelta(index=index, tool_call=delta))

    # -- internals ----------------------------------------------------------------------------

    def _delta(self, delta: events_pb2.SequenceDelta) -> Events:
        return [*self.open(delta.index), events_pb2.StreamEvent(sequence_delta=delta)]

    def _finish_event(
        self, index: int, reason: events_pb2.FinishReason, stop_sequence: str | None
    ) -> events_pb2.StreamEvent:
        finish = events_pb2.SequenceFinish(index=index, reason=reason)
        if stop_sequence is not None:
            finish.stop_sequence = stop_sequence
        return events_pb2.StreamEvent(sequence_finish=finish)

    def _check_live(self) -> None:
        if not self.started:
            raise MalformedStream("output before the generation started")
        if self.done:
            raise MalformedStream("output after the generation finished")
