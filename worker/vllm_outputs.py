"""vLLM's streamed outputs as canonical events.

Part of the vLLM engine: only `worker.engine` imports this module (it imports vLLM).
"""

from __future__ import annotations

from collections.abc import Mapping

from llmmesh.v1 import events_pb2
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

__all__ = ["OutputEvents"]

_FINISH_REASONS = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "abort": events_pb2.FINISH_REASON_CANCELLED,
    "error": events_pb2.FINISH_REASON_ERROR,
    # Only with the `repetition_detection` sampling parameter: the model ended in a loop.
    "repetition": events_pb2.FINISH_REASON_STOP,
}


class OutputEvents:
    """The events of one request's vLLM outputs (`RequestOutputKind.DELTA`), in order.

    Each of the `sequences` gets SequenceStart (all at the first output), deltas (with
    `top_logprobs` alternatives per token, or no logprobs when None) and one SequenceFinish.
    `completion_tokens` counts the tokens of every sequence so far; `cancelled` says whether a
    sequence finished as aborted.
    """

    def __init__(self, sequences: int, top_logprobs: int | None) -> None:
        self._sequences = sequences
        self._top_logprobs = top_logprobs
        self._started = False
        self._finished: set[int] = set()
        self.cancelled = False
        self.completion_tokens = 0

    @property
    def unfinished(self) -> bool:
        """Whether some sequence has not finished yet."""
        return len(self._finished) < self._sequences

    def events(self, output: RequestOutput) -> list[events_pb2.StreamEvent]:
        """The events of the next output (none when it carries nothing new)."""
        events: list[events_pb2.StreamEvent] = []
        if not self._started:
            self._started = True
            events.extend(
                events_pb2.StreamEvent(sequence_start=events_pb2.SequenceStart(index=index))
                for index in range(self._sequences)
            )
        for completion in output.outputs:
            self.completion_tokens += len(completion.token_ids)
            if completion.token_ids or completion.text:
                events.append(_delta_event(completion, self._top_logprobs))
            if completion.finish_reason is not None:
                self._finished.add(completion.index)
                self.cancelled |= completion.finish_reason == "abort"
                events.append(_finish_event(completion))
        return events


def _delta_event(completion: CompletionOutput, top_logprobs: int | None) -> events_pb2.StreamEvent:
    delta = events_pb2.SequenceDelta(
        index=completion.index, text=completion.text, token_ids=list(completion.token_ids)
    )
    if top_logprobs is not None and completion.logprobs is not None:
        # One logprobs entry per token id; zip rather than fail a stream over a mismatch.
        for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False):
            delta.logprobs.append(_token_logprob(token_id, position or {}, top_logprobs))
    return events_pb2.StreamEvent(sequence_delta=delta)


def _token_logprob(
    token_id: int, position: Mapping[int, Logprob], top_logprobs: int
) -> events_pb2.TokenLogprob:
    """vLLM gives, per position, the sampled token and the `top_logprobs` best, by id."""
    chosen = position.get(token_id)
    alternatives = sorted(
        (entry for entry in position.values() if entry.rank is not None),
        key=lambda entry: entry.rank or 0,
    )[:top_logprobs]
    return events_pb2.TokenLogprob(
        token=(chosen.decoded_token or "") if chosen else "",
        logprob=chosen.logprob if chosen else float("nan"),
        top_logprobs=[
            events_pb2.TopLogprob(token=entry.decoded_token or "", logprob=entry.logprob)
            for entry in alternatives
        ],
    )


def _finish_event(completion: CompletionOutput) -> events_pb2.StreamEvent:
    finish = events_pb2.SequenceFinish(
        index=completion.index,
        reason=_FINISH_REASONS.get(
            completion.finish_reason or "", events_pb2.FINISH_REASON_UNSPECIFIED
        ),
    )
    if isinstance(completion.stop_reason, str):
        finish.stop_sequence = completion.stop_reason
    if completion.cumulative_logprob is not None:
        finish.cumulative_logprob = completion.cumulative_logprob
    return events_pb2.StreamEvent(sequence_finish=finish)
