"""Entry point of the `llm-mesh` console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import cast

from pydantic import ValidationError

from plumbing.structured_logs import LogFormat, configure_logging

#: The modules of the subcommands, in `--help` order. Each has `add_parser(commands)`, which
#: adds its subparser with `handler=run` as a default, and `run(args) -> int`; it imports its
#: service only inside `run`, so every command stays light (only `worker --engine vllm`
#: imports vLLM). Adding a command is one line here.
COMMANDS: tuple[str, ...] = (
    "meshctl.gateway",
    "meshctl.keys",
    "meshctl.models",
    "meshctl.scheduler_command",
    "meshctl.settings_reference",
    "meshctl.top",
    "meshctl.up",
    "meshctl.usage",
    "meshctl.worker_command",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `llm-mesh` subcommand."""
    parser = argparse.ArgumentParser(prog="llm-mesh", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or JSON objects (default: LLM_MESH_LOG_FORMAT, else text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one `llm-mesh` subcommand and returns its exit status (2: invalid settings)."""
    args = build_parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("LLM_MESH_LOG_FORMAT", "text")
    if log_format not in ("text", "json"):
        raise SystemExit(f"llm-mesh: LLM_MESH_LOG_FORMAT must be text or json, not {log_format!r}")
    configure_logging(
        args.log_level, cast(LogFormat, log_format), service=f"llm-mesh {args.command}"
    )
    try:
        return cast(int, args.handler(args))
    except ValidationError as exc:
        # Settings are built when a command starts: the message names each invalid setting.
        print(f"llm-mesh {args.command}: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
