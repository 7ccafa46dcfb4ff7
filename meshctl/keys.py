"""`llm-mesh keys create|list|revoke`: API keys in the keys database (`LLM_MESH_DATABASE_URL`).

A key is shown once, when it is created (`API key: lm-...` on its own line); the database keeps
only its id and the SHA-256 of its secret.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

__all__ = ["add_parser"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the `keys` command and its actions to the `llm-mesh` parser."""
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="API keys of the gateway and the scheduler's gRPC API.",
    )
    actions = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--owner", required=True, help="who the key belongs to")
    create.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="a model the key may use (repeat; default: every model)",
    )
    create.add_argument("--requests-per-minute", type=_positive, help="request quota")
    create.add_argument("--tokens-per-day", type=_positive, help="token quota (UTC days)")
    create.add_argument(
        "--service",
        action="store_true",
        help="a service credential (the gateway's key for the scheduler: not metered there)",
    )

    actions.add_parser("list", help="list keys (never their secrets)")

    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the key id (the part between 'lm-' and '.')")

    keys.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Runs one `keys` action; returns the exit status."""
    from plumbing.keystore import Keystore
    from plumbing.settings import MeshSettings

    keystore = Keystore.from_settings(MeshSettings())
    try:
        if args.keys_action == "create":
            api_key, record = keystore.create_key(
                args.owner,
                allowed_models=args.models,
                requests_per_minute=args.requests_per_minute,
                tokens_per_day=args.tokens_per_day,
                service=args.service,
            )
            print(f"key id: {record.key_id}")
            print(f"API key: {api_key}")
            return 0
        if args.keys_action == "list":
            table = Table(
                "KEY ID",
                "OWNER",
                "MODELS",
                "REQ/MIN",
                "TOKENS/DAY",
                "KIND",
                "CREATED",
                "REVOKED",
                box=None,
            )
            for key in keystore.list_keys():
                table.add_row(
                    key.key_id,
                    key.owner,
                    "*" if key.allowed_models is None else ",".join(sorted(key.allowed_models)),
                    str(key.requests_per_minute or "-"),
                    str(key.tokens_per_day or "-"),
                    "service" if key.service else "user",
                    key.created_at.isoformat(timespec="seconds"),
                    key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-",
                )
            # Piped output keeps whole columns (key ids are copied from it).
            Console(width=None if sys.stdout.isatty() else 200).print(table)
            return 0
        if keystore.revoke_key(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"llm-mesh keys revoke: no active key {args.key_id}", file=sys.stderr)
        return 1
    finally:
        keystore.close()
