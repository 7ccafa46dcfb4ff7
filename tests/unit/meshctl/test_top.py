"""`llm-mesh top`'s arithmetic: merged scrapes, rates and histogram percentiles."""

from __future__ import annotations

import math

import pytest

from meshctl.top import Snapshot, quantile, rows

_SCRAPE = """\
# TYPE llm_mesh_scheduler_tokens counter
llm_mesh_scheduler_tokens_total{{model="m"}} {tokens}
# TYPE llm_mesh_scheduler_relayed_chunks counter
llm_mesh_scheduler_relayed_chunks_total{{model="m"}} {chunks}
# TYPE llm_mesh_scheduler_tasks_ended counter
llm_mesh_scheduler_tasks_ended_total{{model="m",outcome="completed"}} {done}
llm_mesh_scheduler_tasks_ended_total{{model="m",outcome="expired"}} 1
# TYPE llm_mesh_scheduler_queue_messages gauge
llm_mesh_scheduler_queue_messages{{model="m"}} 5
# TYPE llm_mesh_scheduler_queue_messages_unacknowledged gauge
llm_mesh_scheduler_queue_messages_unacknowledged{{model="m"}} 3
# TYPE llm_mesh_scheduler_queue_consumers gauge
llm_mesh_scheduler_queue_consumers{{model="m"}} 2
# TYPE llm_mesh_scheduler_workers gauge
llm_mesh_scheduler_workers{{model="m",state="ready"}} 2
llm_mesh_scheduler_workers{{model="m",state="loading"}} 1
# TYPE llm_mesh_scheduler_time_to_first_token_seconds histogram
llm_mesh_scheduler_time_to_first_token_seconds_bucket{{model="m",le="0.1"}} {fast}
llm_mesh_scheduler_time_to_first_token_seconds_bucket{{model="m",le="1.0"}} {total}
llm_mesh_scheduler_time_to_first_token_seconds_bucket{{model="m",le="+Inf"}} {total}
llm_mesh_scheduler_time_to_first_token_seconds_count{{model="m"}} {total}
llm_mesh_scheduler_time_to_first_token_seconds_sum{{model="m"}} 1.0
"""


def _scrape(taken: float, replicas: int = 1, **values: float) -> Snapshot:
    snapshot = Snapshot(taken)
    for _ in range(replicas):
        snapshot.add(_SCRAPE.format(**values))
    return snapshot


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = {0.1: 50.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.55)
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # Past the last finite bound, the bound is the best answer.
    assert quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == pytest.approx(0.1)


def test_replicas_add_up_but_the_broker_queue_does_not() -> None:
    now = _scrape(12.0, replicas=2, tokens=300, chunks=30, done=10, fast=8, total=10)
    before = _scrape(10.0, replicas=2, tokens=100, chunks=10, done=5, fast=4, total=5)
    [row] = rows(now, before, before)
    assert row.model == "m"
    assert row.workers == "4/6"
    assert (row.queued, row.unacknowledged, row.consumers) == ("5", "3", "2")  # not doubled
    assert row.tokens_per_second == "200.0"  # (600 - 200) / 2 s
    assert row.chunks_per_second == "20.0"
    assert (row.completed, row.failed) == ("20", "2")
    # The window saw 10 requests: 8 under 100 ms.
    assert row.ttft_p50 == "62 ms"


def test_an_idle_window_shows_the_percentiles_since_start() -> None:
    now = _scrape(12.0, tokens=1, chunks=1, done=1, fast=1, total=4)
    before = _scrape(10.0, tokens=1, chunks=1, done=1, fast=1, total=4)
    [row] = rows(now, before, before)
    assert row.tokens_per_second == "0.0"
    assert row.ttft_p50 == "400 ms"  # all 4 since start: rank 2 in (0.1, 1.0]
    [first] = rows(now, None, None)
    assert first.tokens_per_second == "-"


def test_unacknowledged_is_unknown_without_the_management_api() -> None:
    snapshot = Snapshot(1.0)
    snapshot.add(
        "# TYPE llm_mesh_scheduler_queue_messages gauge\n"
        'llm_mesh_scheduler_queue_messages{model="m"} 0\n'
    )
    [row] = rows(snapshot, None, None)
    assert (row.queued, row.unacknowledged) == ("0", "-")
