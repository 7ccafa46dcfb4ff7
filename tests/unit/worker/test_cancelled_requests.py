"""The worker's TTL set of cancelled request ids."""

from __future__ import annotations

from worker.cancellations import CancelledRequests


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_expire_after_the_ttl() -> None:
    clock = _Clock()
    cancelled = CancelledRequests(10, clock=clock)
    cancelled.add("a")
    clock.now = 5
    cancelled.add("b")
    assert "a" in cancelled and "b" in cancelled
    clock.now = 10
    assert "a" not in cancelled and "b" in cancelled
    clock.now = 15
    assert len(cancelled) == 0


def test_adding_again_renews_and_the_size_is_bounded() -> None:
    clock = _Clock()
    cancelled = CancelledRequests(10, max_size=2, clock=clock)
    cancelled.add("a")
    clock.now = 8
    cancelled.add("a")
    clock.now = 12
    assert "a" in cancelled
    cancelled.add("b")
    cancelled.add("c")
    assert len(cancelled) == 2
    assert "a" not in cancelled and "c" in cancelled
