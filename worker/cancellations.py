"""The request ids a worker was told to cancel, remembered for a while (a TTL set).

A `Cancel` can arrive while its task still waits in the queue; when the task is picked up
later, the worker finds its id here and drops it instead of running it (DESIGN.md, "Time and
cancellation").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CancelledRequests"]


class CancelledRequests:
    """A set of request ids whose members expire `ttl` seconds after they were added.

    Bounded by `max_size` too: the oldest ids go first.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_size = max_size
        self._clock = clock
        # Insertion order is expiry order: every id gets the same ttl.
        self._expiries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        self._prune()
        return len(self._expiries)

    def __contains__(self, request_id: object) -> bool:
        self._prune()
        return request_id in self._expiries

    def add(self, request_id: str) -> None:
        """Remembers `request_id` for `ttl` seconds from now."""
        self._expiries[request_id] = self._clock() + self._ttl
        self._expiries.move_to_end(request_id)
        self._prune()

    def _prune(self) -> None:
        now = self._clock()
        while self._expiries:
            request_id, expires = next(iter(self._expiries.items()))
            if expires > now and len(self._expiries) <= self._max_size:
                break
            del self._expiries[request_id]
