"""`llm-mesh top`: a live table of the mesh, one row per model, from the schedulers' /metrics.

Columns: workers (ready/live, from the heartbeats), the task queue's consumers, its ready
messages and its unacknowledged ones, i.e. tasks being run (as the broker counts them; the
latter only through the management API, see the scheduler's `broker_management_url`, else
"-"), tokens/s and chunks/s relayed to clients (rates between two scrapes), time to first
token p50/p95 (over the last `--window` seconds, or since the schedulers started when that
window saw no request), completed and failed requests.

Several scheduler replicas are summed (the queue figures, which every replica reads from the
same broker, are not). `--once` prints the table once, after two scrapes `--interval` apart,
and exits: for scripts and terminals without a screen.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["Snapshot", "add_parser", "quantile", "rows", "run"]

_DEFAULT_SCHEDULER: Final = "http://127.0.0.1:9101"
_TOKENS: Final = "llm_mesh_scheduler_tokens"
_CHUNKS: Final = "llm_mesh_scheduler_relayed_chunks"
_ENDED: Final = "llm_mesh_scheduler_tasks_ended"
_TTFT: Final = "llm_mesh_scheduler_time_to_first_token_seconds"
_WORKERS: Final = "llm_mesh_scheduler_workers"
_QUEUE_MESSAGES: Final = "llm_mesh_scheduler_queue_messages"
_QUEUE_UNACKNOWLEDGED: Final = "llm_mesh_scheduler_queue_messages_unacknowledged"
_QUEUE_CONSUMERS: Final = "llm_mesh_scheduler_queue_consumers"
#: Every replica reads these from the same broker: merged by maximum, not summed.
_SHARED: Final = frozenset({_QUEUE_MESSAGES, _QUEUE_UNACKNOWLEDGED, _QUEUE_CONSUMERS})
_FAILED_OUTCOMES: Final = frozenset({"failed", "expired", "rejected"})

#: A sample's identity: the metric family's name and its sorted labels.
_Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Snapshot:
    """The merged samples of every scheduler at one moment (`taken`, monotonic seconds)."""

    taken: float
    samples: dict[_Key, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        """Merges one scheduler's exposition text."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if name.endswith("_total"):
                    name = name[: -len("_total")]
                key = (name, tuple(sorted(sample.labels.items())))
                if family.name in _SHARED:
                    self.samples[key] = max(self.samples.get(key, 0.0), sample.value)
                else:
                    self.samples[key] = self.samples.get(key, 0.0) + sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples that carry `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= set(sample_labels)
        )

    def models(self) -> list[str]:
        """Every model some per-model sample names."""
        return sorted(
            {dict(labels)["model"] for _, labels in self.samples if "model" in dict(labels)}
            - {"other"}
        )

    def buckets(self, name: str, model: str) -> dict[float, float]:
        """The cumulative bucket counts of histogram `name` for `model`, by upper bound."""
        counts: dict[float, float] = {}
        for (sample, labels), value in self.samples.items():
            label = dict(labels)
            if sample == f"{name}_bucket" and label.get("model") == model:
                bound = float(label["le"])
                counts[bound] = counts.get(bound, 0.0) + value
        return counts


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The `q` quantile of a histogram's cumulative buckets, interpolated linearly within
    the bucket that holds it (as PromQL's `histogram_quantile`); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _difference(now: Mapping[float, float], then: Mapping[float, float]) -> dict[float, float]:
    return {bound: count - then.get(bound, 0.0) for bound, count in now.items()}


@dataclass
class _Row:
    model: str
    workers: str
    consumers: str
    queued: str
    unacknowledged: str
    tokens_per_second: str
    chunks_per_second: str
    ttft_p50: str
    ttft_p95: str
    completed: str
    failed: str


def _rate(name: str, model: str, now: Snapshot, previous: Snapshot | None) -> str:
    if previous is None or now.taken <= previous.taken:
        return "-"
    delta = now.value(name, model=model) - previous.value(name, model=model)
    return f"{max(delta, 0.0) / (now.taken - previous.taken):.1f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _shared(now: Snapshot, name: str, model: str) -> str:
    key = (name, (("model", model),))
    return f"{now.samples[key]:.0f}" if key in now.samples else "-"


def rows(now: Snapshot, previous: Snapshot | None, window_start: Snapshot | None) -> list[_Row]:
    """One row per model: `previous` is the last scrape (for rates), `window_start` the
    oldest scrape in the TTFT window."""
    table: list[_Row] = []
    for model in now.models():
        buckets = now.buckets(_TTFT, model)
        if window_start is not None:
            recent = _difference(buckets, window_start.buckets(_TTFT, model))
            if quantile(0.5, recent) is not None:
                buckets = recent
        ready = now.value(_WORKERS, model=model, state="ready")
        live = ready + now.value(_WORKERS, model=model, state="loading")
        failed = sum(
            now.value(_ENDED, model=model, outcome=outcome) for outcome in _FAILED_OUTCOMES
        )
        table.append(
            _Row(
                model=model,
                workers=f"{ready:.0f}/{live:.0f}",
                consumers=_shared(now, _QUEUE_CONSUMERS, model),
                queued=_shared(now, _QUEUE_MESSAGES, model),
                unacknowledged=_shared(now, _QUEUE_UNACKNOWLEDGED, model),
                tokens_per_second=_rate(_TOKENS, model, now, previous),
                chunks_per_second=_rate(_CHUNKS, model, now, previous),
                ttft_p50=_seconds(quantile(0.5, buckets)),
                ttft_p95=_seconds(quantile(0.95, buckets)),
                completed=f"{now.value(_ENDED, model=model, outcome='completed'):.0f}",
                failed=f"{failed:.0f}",
            )
        )
    return table


def _table(
    now: Snapshot, previous: Snapshot | None, window_start: Snapshot | None
) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="llm-mesh top", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("MODEL", no_wrap=True)
    for heading in (
        "WORKERS",
        "CONSUMERS",
        "QUEUED",
        "UNACKED",
        "TOKENS/S",
        "CHUNKS/S",
        "TTFT P50",
        "TTFT P95",
        "DONE",
        "FAILED",
    ):
        table.add_column(heading, justify="right", no_wrap=True)
    for row in rows(now, previous, window_start):
        table.add_row(
            row.model,
            row.workers,
            row.consumers,
            row.queued,
            row.unacknowledged,
            row.tokens_per_second,
            row.chunks_per_second,
            row.ttft_p50,
            row.ttft_p95,
            row.completed,
            row.failed,
        )
    if not table.rows:
        table.caption = "no model has been served yet"
    return Group(table, *(Text(error, style="red") for error in now.errors))


def _scrape(http: object, urls: Iterable[str]) -> Snapshot:
    import httpx

    assert isinstance(http, httpx.Client)
    snapshot = Snapshot(time.monotonic())
    for url in urls:
        try:
            response = http.get(f"{url.rstrip('/')}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            snapshot.errors.append(f"{url}: {exc!r}")
            continue
        snapshot.add(response.text)
    return snapshot


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `top` command to the `llm-mesh` parser."""
    top = commands.add_parser(
        "top",
        help="a live per-model view of the mesh (queues, tokens/s, TTFT)",
        description=__doc__,
    )
    top.add_argument(
        "--scheduler",
        action="append",
        metavar="URL",
        help=f"a scheduler's probe address (repeatable; default {_DEFAULT_SCHEDULER})",
    )
    top.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    top.add_argument(
        "--window", type=float, default=60.0, help="seconds of TTFT percentiles (default 60)"
    )
    top.add_argument("--once", action="store_true", help="print the table once and exit")
    top.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Shows the table until Ctrl-C (or once); exit status 1 when no scheduler answered."""
    import httpx
    from rich.console import Console
    from rich.live import Live

    urls = [
        url.strip()
        for value in (args.scheduler or [_DEFAULT_SCHEDULER])
        for url in value.split(",")
        if url.strip()
    ]
    history: deque[Snapshot] = deque()
    # Piped (`--once` in a script): wide enough that no column is cut.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    with httpx.Client(timeout=5.0) as http:
        previous = _scrape(http, urls)
        history.append(previous)
        if args.once:
            time.sleep(args.interval)
            now = _scrape(http, urls)
            console.print(_table(now, previous, previous))
            return 1 if len(now.errors) == len(urls) else 0
        try:
            with Live(_table(previous, None, None), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(args.interval)
                    now = _scrape(http, urls)
                    while len(history) > 1 and now.taken - history[1].taken >= args.window:
                        history.popleft()
                    live.update(_table(now, previous, history[0]), refresh=True)
                    history.append(now)
                    previous = now
        except KeyboardInterrupt:
            return 0
