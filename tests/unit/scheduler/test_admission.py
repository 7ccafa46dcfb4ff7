"""Load shedding's count of waiting interactive requests (scheduler/admission.py)."""

from __future__ import annotations

import pytest
from llmmesh.v1 import chat_pb2

from scheduler.admission import Admission
from scheduler.errors import Overloaded

INTERACTIVE = chat_pb2.PRIORITY_INTERACTIVE
BATCH = chat_pb2.PRIORITY_BATCH


def test_interactive_requests_past_the_limit_are_shed_per_model() -> None:
    admission = Admission(max_queued=2)
    waiting = [
        admission.admit("a", INTERACTIVE),
        admission.admit("a", chat_pb2.PRIORITY_UNSPECIFIED),
    ]
    with pytest.raises(Overloaded) as shed:
        admission.admit("a", INTERACTIVE)
    assert shed.value.retryable and "2 interactive requests waiting" in shed.value.message
    admission.admit("b", INTERACTIVE)  # Another model has its own count.
    waiting[0].release()
    admission.admit("a", INTERACTIVE)
    assert admission.waiting("a") == 2


def test_batch_requests_are_never_shed_nor_counted() -> None:
    admission = Admission(max_queued=1)
    admission.admit("a", INTERACTIVE)
    for _ in range(10):
        admission.admit("a", BATCH).release()
    assert admission.waiting("a") == 1


def test_release_is_idempotent_and_zero_means_no_limit() -> None:
    admission = Admission(max_queued=1)
    waiting = admission.admit("a", INTERACTIVE)
    waiting.release()
    waiting.release()
    assert admission.waiting("a") == 0
    unlimited = Admission(max_queued=0)
    for _ in range(1000):
        unlimited.admit("a", INTERACTIVE)
    assert unlimited.waiting("a") == 1000
