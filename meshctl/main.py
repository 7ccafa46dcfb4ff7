"""Entry point of the `llm-mesh` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import cast

#: The modules of the subcommands, in `--help` order. Each has `add_parser(commands)`, which
#: adds its subparser with `handler=run` as a default, and `run(args) -> int`; it imports its
#: service only inside `run`, so every command stays light (only `worker --engine vllm`
#: imports vLLM). Adding a command is one line here.
COMMANDS: tuple[str, ...] = (
    "meshctl.gateway",
    "meshctl.keys",
    "meshctl.models",
    "meshctl.scheduler_command",
    "meshctl.up",
    "meshctl.usage",
    "meshctl.worker_command",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `llm-mesh` subcommand."""
    parser = argparse.ArgumentParser(prog="llm-mesh", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one `llm-mesh` subcommand and returns its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return cast(int, args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
