"""A whole generation gathered from its events, for the non-streaming answers of every API."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import struct_pb2
from llmmesh.v1 import events_pb2

__all__ = ["Completion", "GatheredSequence", "GatheredToolCall"]


@dataclass
class GatheredToolCall:
    """One tool call of a sequence, its argument pieces joined."""

    id: str = ""
    name: str = ""
    arguments: str = ""
    provider_metadata: struct_pb2.Struct = field(default_factory=struct_pb2.Struct)


@dataclass
class GatheredSequence:
    """Everything one sequence produced."""

    index: int
    text: str = ""
    reasoning: str = ""
    reasoning_signature: str = ""
    refusal: str = ""
    tool_calls: dict[int, GatheredToolCall] = field(default_factory=dict)
    logprobs: list[events_pb2.TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish: events_pb2.SequenceFinish | None = None
    #: The text deltas' provider metadata, merged (a later value of a key wins).
    provider_metadata: struct_pb2.Struct = field(default_factory=struct_pb2.Struct)

    def add(self, delta: events_pb2.SequenceDelta) -> None:
        """Appends one delta."""
        which = delta.WhichOneof("delta")
        if which == "text":
            self.text += delta.text
            if delta.HasField("provider_metadata"):
                self.provider_metadata.MergeFrom(delta.provider_metadata)
        elif which == "reasoning":
            self.reasoning += delta.reasoning.text
            self.reasoning_signature += delta.reasoning.signature
        elif which == "refusal":
            self.refusal += delta.refusal
        elif which == "tool_call":
            piece = delta.tool_call
            call = self.tool_calls.setdefault(piece.tool_call_index, GatheredToolCall())
            call.id = call.id or piece.id
            call.name = call.name or piece.name
            call.arguments += piece.arguments
            if piece.HasField("provider_metadata"):
                call.provider_metadata.MergeFrom(piece.provider_metadata)
        self.logprobs.extend(delta.logprobs)
        self.token_ids.extend(delta.token_ids)


@dataclass
class Completion:
    """The events of one generation, gathered: start, sequences by index, finish, error."""

    start: events_pb2.GenerationStart | None = None
    sequences: dict[int, GatheredSequence] = field(default_factory=dict)
    finish: events_pb2.GenerationFinish | None = None
    error: events_pb2.StreamError | None = None

    def add(self, event: events_pb2.StreamEvent) -> None:
        """Accounts for one event."""
        which = event.WhichOneof("event")
        if which == "generation_start":
            self.start = event.generation_start
        elif which == "sequence_start":
            self._sequence(event.sequence_start.index)
        elif which == "sequence_delta":
            self._sequence(event.sequence_delta.index).add(event.sequence_delta)
        elif which == "sequence_finish":
            self._sequence(event.sequence_finish.index).finish = event.sequence_finish
        elif which == "generation_finish":
            self.finish = event.generation_finish
        elif which == "error" and self.error is None:
            self.error = event.error

    def _sequence(self, index: int) -> GatheredSequence:
        return self.sequences.setdefault(index, GatheredSequence(index))

    def ordered(self) -> list[GatheredSequence]:
        """The sequences by index."""
        return [self.sequences[index] for index in sorted(self.sequences)]

    @property
    def usage(self) -> events_pb2.Usage:
        """The final usage (empty when the generation did not finish)."""
        return self.finish.usage if self.finish is not None else events_pb2.Usage()
