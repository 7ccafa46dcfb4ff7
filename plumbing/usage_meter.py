"""Counts one generation's usage from its canonical events, for the usage ledger.

The gateway and the scheduler's interceptor meter the stream they forward. `GenerationFinish`
carries the authoritative usage; a stream cut short (client disconnect) never sees it, so the
meter also counts generated tokens as deltas pass: a cancelled request is billed for what was
actually generated.
"""

from __future__ import annotations

import time
from typing import Literal

from google.protobuf import duration_pb2
from llmmesh.v1 import events_pb2

__all__ = ["UsageMeter"]


def _milliseconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds * 1000.0 + duration.nanos / 1e6


class UsageMeter:
    """Observes a stream's events; afterwards tells its usage, timings and outcome.

    `error` is the stream's `StreamError`, if it had one (`failed` says the same).
    """

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._first_token: float | None = None
        self._finish_timings: events_pb2.Timings | None = None
        self.request_id: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = False
        self.finished = False
        self.failed = False
        self.error: events_pb2.StreamError | None = None

    def observe(self, event: events_pb2.StreamEvent) -> None:
        """Accounts for one event."""
        which = event.WhichOneof("event")
        if which == "generation_start":
            self.started = True
            self.request_id = event.generation_start.request_id or None
            self.prompt_tokens = event.generation_start.prompt_tokens
        elif which == "sequence_delta":
            delta = event.sequence_delta
            if self._first_token is None:
                self._first_token = time.monotonic()
            if delta.token_ids:
                self.completion_tokens += len(delta.token_ids)
            elif delta.logprobs:
                self.completion_tokens += len(delta.logprobs)
            elif delta.WhichOneof("delta") is not None:
                self.completion_tokens += 1
        elif which == "error":
            self.failed = True
            self.error = event.error
        elif which == "generation_finish":
            self.finished = True
            usage = event.generation_finish.usage
            if event.generation_finish.HasField("usage"):
                self.prompt_tokens = usage.prompt_tokens or self.prompt_tokens
                self.completion_tokens = usage.completion_tokens
            if event.generation_finish.HasField("timings"):
                self._finish_timings = event.generation_finish.timings

    def status(self) -> Literal["ok", "error", "cancelled"]:
        """`error` after a StreamError, `ok` after a clean finish, else `cancelled`."""
        if self.failed:
            return "error"
        return "ok" if self.finished else "cancelled"

    def timings_ms(self) -> tuple[float | None, float | None, float]:
        """(queued, time to first token, total) in milliseconds.

        The backend's `Timings` when the stream finished with them, else measured here from
        the meter's creation.
        """
        timings = self._finish_timings
        if timings is not None and timings.HasField("total"):
            return (
                _milliseconds(timings.queued) if timings.HasField("queued") else None,
                (
                    _milliseconds(timings.time_to_first_token)
                    if timings.HasField("time_to_first_token")
                    else None
                ),
                _milliseconds(timings.total),
            )
        first = None if self._first_token is None else (self._first_token - self._started) * 1e3
        return None, first, (time.monotonic() - self._started) * 1e3
