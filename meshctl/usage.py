"""`llm-mesh usage [--since WHEN] [--until WHEN]`: usage totals per key and model.

WHEN is an ISO 8601 date or date-time (UTC when it names no zone) or an age such as `90m`,
`24h`, `7d` (that long before now).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

__all__ = ["add_parser", "parse_instant"]

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """An instant from an ISO 8601 text or an age (`24h`); raises `ArgumentTypeError`."""
    age = _AGE.match(text.strip())
    if age is not None:
        reference = now or datetime.now(UTC)
        return reference - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date, date-time or age: {text!r}") from exc
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `usage` command to the `llm-mesh` parser."""
    usage = commands.add_parser(
        "usage",
        help="usage totals per key and model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage.add_argument("--since", type=parse_instant, help="from this instant (inclusive)")
    usage.add_argument("--until", type=parse_instant, help="to this instant (exclusive)")
    usage.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    usage.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Prints the totals; returns the exit status."""
    from plumbing.keystore import Keystore
    from plumbing.settings import MeshSettings

    keystore = Keystore.from_settings(MeshSettings())
    try:
        totals = keystore.usage_totals(since=args.since, until=args.until)
    finally:
        keystore.close()
    if args.json:
        for total in totals:
            print(json.dumps(total.__dict__))
        return 0
    table = Table(
        "KEY ID",
        "OWNER",
        "MODEL",
        "REQUESTS",
        "OK",
        "ERROR",
        "CANCELLED",
        "PROMPT",
        "COMPLETION",
        box=None,
    )
    for total in totals:
        table.add_row(
            total.key_id,
            total.owner,
            total.model,
            str(total.requests),
            str(total.ok),
            str(total.errors),
            str(total.cancelled),
            str(total.prompt_tokens),
            str(total.completion_tokens),
        )
    # Piped output keeps whole columns (key ids are copied from it).
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0
