"""`llm-mesh worker`: runs one worker for one model.

Prints `llm-mesh worker ready: worker_id=ID model=NAME http=URL` once it consumes tasks.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `worker` command to the `llm-mesh` parser."""
    worker = commands.add_parser(
        "worker",
        help="run a worker for one model (probes on 127.0.0.1:9102)",
        description=__doc__,
    )
    worker.add_argument("--model", help="the model's routing name (default: smollm2-135m)")
    worker.add_argument(
        "--priority", type=int, help="consumer priority of this hardware class (higher first)"
    )
    worker.add_argument(
        "--engine",
        choices=["vllm", "synthetic"],
        help="inference engine (default: vllm; synthetic is for benchmarks and fault tests)",
    )
    worker.add_argument("--capacity", type=int, help="sequences run at once (the prefetch)")
    worker.add_argument("--http-bind", help="probes address, host:port (port 0 = any)")
    worker.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Builds the settings (`LLM_MESH_*`, then the options) and serves until SIGTERM.

    vLLM is imported only when the vLLM engine is used.
    """
    from worker.service import main
    from worker.settings import Settings

    options = ("model", "priority", "engine", "capacity", "http_bind")
    overrides = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    return main(Settings(**overrides))
