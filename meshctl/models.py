"""`llm-mesh models push|list|pull|rm`: the model delivery pipeline (S3 from `LLM_MESH_S3_*`).

Storage and terminal libraries are imported inside `run`, so `llm-mesh --help` stays light.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plumbing.model_store import ModelStore
    from plumbing.settings import MeshSettings
    from plumbing.transfer import ProgressCallback

__all__ = ["add_parser", "run"]

#: The revision `pull` takes by default (plumbing.model_manifest.LATEST).
_LATEST = "latest"

_Action = Callable[[argparse.Namespace, "ModelStore", "MeshSettings"], Coroutine[Any, Any, None]]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `models` command, its actions and options (`handler=run`)."""
    parser = commands.add_parser(
        "models",
        help="push, list, pull and remove models in S3 storage",
        description="Model delivery through S3 (LLM_MESH_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY).",
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(dest="models_action", required=True, metavar="ACTION")

    push = actions.add_parser("push", help="upload a model directory as a new revision")
    push.add_argument("directory", type=Path, help="the model directory (e.g. Hugging Face format)")
    push.add_argument("--name", required=True, help="the model's name")
    push.add_argument("--revision", help="the revision (default: derived from the contents)")
    push.add_argument("--engine", default="vllm", help="the engine it is meant for")
    push.set_defaults(models_run=_push)

    list_ = actions.add_parser("list", help="list stored models and revisions")
    list_.add_argument("name", nargs="?", help="only this model")
    list_.set_defaults(models_run=_list)

    pull = actions.add_parser("pull", help="download a revision into the local model cache")
    pull.add_argument("name")
    pull.add_argument("--revision", default=_LATEST, help=f"the revision (default: {_LATEST})")
    pull.set_defaults(models_run=_pull)

    rm = actions.add_parser("rm", help="delete a revision (default: every revision) from S3")
    rm.add_argument("name")
    rm.add_argument("--revision", help="only this revision")
    rm.set_defaults(models_run=_rm)


def run(args: argparse.Namespace) -> int:
    """Runs one `models` action; returns the exit status (1 on storage or input errors)."""
    from plumbing.model_store import ModelStore
    from plumbing.s3_client import connect_s3
    from plumbing.settings import MeshSettings
    from plumbing.storage_errors import StorageError

    settings = MeshSettings()
    try:
        store = ModelStore(connect_s3(settings))
        action: _Action = args.models_run
        asyncio.run(action(args, store, settings))
    except (StorageError, ValueError, TimeoutError) as exc:
        print(f"llm-mesh models {args.models_action}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _push(args: argparse.Namespace, store: ModelStore, settings: MeshSettings) -> None:
    from rich.filesize import decimal

    with _progress_bar(f"pushing {args.name}") as progress:
        manifest = await store.push(
            args.directory, args.name, args.revision, engine=args.engine, progress=progress
        )
    print(
        f"{manifest.name} {manifest.revision}: {len(manifest.files)} files, "
        f"{decimal(manifest.total_size)}"
    )


async def _list(args: argparse.Namespace, store: ModelStore, settings: MeshSettings) -> None:
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("NAME", "REVISION", "CREATED", "SIZE", "FILES", "FORMAT", "ENGINE", box=None)
    for manifest in await store.list(args.name):
        table.add_row(
            manifest.name,
            manifest.revision,
            manifest.created.strftime("%Y-%m-%d %H:%M:%S"),
            decimal(manifest.total_size),
            str(len(manifest.files)),
            manifest.format,
            manifest.engine,
        )
    # Piped output is for scripts: never truncate cells to a guessed terminal width.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


async def _pull(args: argparse.Namespace, store: ModelStore, settings: MeshSettings) -> None:
    from plumbing.model_store import local_models_dir

    with _progress_bar(f"pulling {args.name}") as progress:
        path = await store.ensure_local(
            args.name, args.revision, cache_dir=local_models_dir(settings), progress=progress
        )
    print(path)


async def _rm(args: argparse.Namespace, store: ModelStore, settings: MeshSettings) -> None:
    for revision in await store.rm(args.name, args.revision):
        print(f"deleted {args.name} {revision}")


@contextmanager
def _progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A byte progress bar on stderr, and the callback that feeds it (from any thread)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from plumbing.transfer import TransferProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(step: TransferProgress) -> None:
            bar.update(task, total=step.total, completed=step.done)

        yield update
