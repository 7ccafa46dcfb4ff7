"""Load shedding: the interactive requests of each model that wait for a worker, capped.

A request waits from its admission until its chunk 0 arrives (a worker accepted or refused
it) or it ends. Past `max_queued` interactive requests waiting for one model, a new
interactive one is refused at once (`Overloaded`: RESOURCE_EXHAUSTED with a retry delay, the
gateway's 429 with `Retry-After`) rather than queued behind work that cannot start soon.
Batch requests are never refused: they may wait (their `queue` timeout bounds them), and
strict priorities keep them behind interactive work anyway.

The count is this replica's own: exact, per priority, and free (a broker's queue depth
mixes priorities and is only as fresh as its last poll). With R replicas, a model holds up
to R times `max_queued` waiting interactive requests.
"""

from __future__ import annotations

from collections import Counter

from llmmesh.v1 import chat_pb2

from scheduler.errors import Overloaded

__all__ = ["Admission", "Waiting"]


class Waiting:
    """One admitted request's place among the waiting ones; `release` it once (idempotent)."""

    def __init__(self, counts: Counter[str] | None, model: str) -> None:
        self._counts = counts
        self._model = model

    @classmethod
    def none(cls) -> Waiting:
        """A place that counts nothing (a request not admitted yet)."""
        return cls(None, "")

    def release(self) -> None:
        """The request stopped waiting: a worker answered, or it ended."""
        if self._counts is not None:
            self._counts[self._model] -= 1
            if self._counts[self._model] <= 0:
                del self._counts[self._model]
            self._counts = None


class Admission:
    """Admits requests, refusing interactive ones past `max_queued` waiting per model.

    `max_queued` = 0 admits everything.
    """

    def __init__(self, max_queued: int) -> None:
        self._max_queued = max_queued
        self._interactive: Counter[str] = Counter()

    def waiting(self, model: str) -> int:
        """Interactive requests of `model` waiting for a worker now."""
        return self._interactive[model]

    def admit(self, model: str, priority: chat_pb2.Priority) -> Waiting:
        """Counts the request in, or raises `Overloaded` (interactive requests only)."""
        if priority == chat_pb2.PRIORITY_BATCH:
            return Waiting(None, model)
        if self._max_queued and self._interactive[model] >= self._max_queued:
            raise Overloaded(
                f"model {model!r} has {self._interactive[model]} interactive requests waiting "
                f"for a worker (the limit is {self._max_queued}); retry later"
            )
        self._interactive[model] += 1
        return Waiting(self._interactive, model)
