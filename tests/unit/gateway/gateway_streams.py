"""Canonical event streams for the encoder tests."""

from __future__ import annotations

from llmmesh.v1 import chat_pb2, events_pb2


def generation(
    sequences: list[list[events_pb2.SequenceDelta]],
    *,
    reasons: list[int] | None = None,
    prompt_tokens: int = 5,
    error: events_pb2.StreamError | None = None,
) -> list[events_pb2.StreamEvent]:
    """A well-formed stream: start, sequences interleaved delta by delta, finishes, finish."""
    events = [
        events_pb2.StreamEvent(
            generation_start=events_pb2.GenerationStart(
                request_id="req-1",
                model="m",
                role=chat_pb2.ROLE_ASSISTANT,
                prompt_tokens=prompt_tokens,
            )
        )
    ]
    events += [
        events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=index))
        for index in range(len(sequences))
    ]
    for step in range(max(len(deltas) for deltas in sequences)):
        for index, deltas in enumerate(sequences):
            if step < len(deltas):
                delta = events_pb2.SequenceDelta()
                delta.CopyFrom(deltas[step])
                delta.index = index
                events.append(events_pb2.StreamEvent(sequence_delta=delta))
    for index in range(len(sequences)):
        reason = reasons[index] if reasons else events_pb2.FINISH_REASON_STOP
        events.append(
            events_pb2.StreamEvent(
                sequence_finish=events_pb2.SequenceFinish(index=index, reason=reason)  # type: ignore[arg-type]
            )
        )
    if error is not None:
        events.append(events_pb2.StreamEvent(error=error))
    completion = sum(len(deltas) for deltas in sequences)
    events.append(
        events_pb2.StreamEvent(
            generation_finish=events_pb2.GenerationFinish(
                usage=events_pb2.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion,
                    total_tokens=prompt_tokens + completion,
                )
            )
        )
    )
    return events


def text(value: str) -> events_pb2.SequenceDelta:
    """A text delta of one token."""
    return events_pb2.SequenceDelta(text=value, token_ids=[1])
