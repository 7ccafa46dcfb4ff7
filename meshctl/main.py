"""Entry point of the `llm-mesh` console script."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `llm-mesh` subcommand."""
    parser = argparse.ArgumentParser(prog="llm-mesh", description=__doc__)
    parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one `llm-mesh` subcommand and returns its exit status."""
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
