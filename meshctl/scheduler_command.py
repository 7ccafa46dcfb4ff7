"""`llm-mesh scheduler`: runs one scheduler replica (gRPC, plus HTTP probes).

Prints `llm-mesh scheduler ready: grpc=HOST:PORT http=HOST:PORT` once it serves.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `scheduler` command to the `llm-mesh` parser."""
    scheduler = commands.add_parser(
        "scheduler",
        help="run a scheduler replica (gRPC 127.0.0.1:50051, probes on 127.0.0.1:9101)",
        description=__doc__,
    )
    scheduler.add_argument("--grpc-bind", help="gRPC address, host:port (port 0 = any)")
    scheduler.add_argument("--http-bind", help="probes address, host:port (port 0 = any)")
    scheduler.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Builds the settings (`LLM_MESH_*`, then the options) and serves until SIGTERM."""
    # Imported here: the other `llm-mesh` commands need none of the scheduler.
    from scheduler.server import main
    from scheduler.settings import Settings

    options = ("grpc_bind", "http_bind")
    overrides = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    return main(Settings(**overrides))
