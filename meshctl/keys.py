"""`llm-mesh keys create|list|revoke`: API keys in the keys database (`LLM_MESH_DATABASE_URL`).

A key is shown once, when it is created (`API key: lm-...` on its own line); the database keeps
only its id and the SHA-256 of its secret.

`keys create --key-from-env NAME` stores the key held by the environment variable NAME instead
of a new one, and does nothing when that key is stored already with the same attributes: a
deployment generates its gateway's service credential once, and its one-shot admin service
registers it at every start (docker-compose.yml).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from plumbing.keystore import KeyRecord, Keystore

__all__ = ["KeyConflict", "add_parser", "register_key"]


class KeyConflict(Exception):
    """A given key cannot be registered: its id is taken, or it is stored with other
    attributes; the message says which."""


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
    create.add_argument(
        "--key-from-env",
        metavar="NAME",
        help="store the key in environment variable NAME (lm-<id>.<secret>, 32+ random bytes of "
        "secret) instead of a new one; nothing to do when it is stored already",
    )

    actions.add_parser("list", help="list keys (never their secrets)")

    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the key id (the part between 'lm-' and '.')")

    keys.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Runs one `keys` action; returns the exit status."""
    from plumbing.keystore import Keystore
    from plumbing.settings import MeshSettings

    if args.keys_action == "create" and args.key_from_env is not None:
        api_key = os.environ.get(args.key_from_env, "").strip()
        if not api_key:
            print(f"llm-mesh keys create: {args.key_from_env} is unset or empty", file=sys.stderr)
            return 1
    keystore = Keystore.from_settings(MeshSettings())
    try:
        if args.keys_action == "create" and args.key_from_env is not None:
            return _register(keystore, api_key, args)
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


def register_key(
    keystore: Keystore,
    api_key: str,
    *,
    owner: str,
    allowed_models: list[str] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    service: bool = False,
) -> tuple[KeyRecord, bool]:
    """Stores `api_key` with these attributes unless it is stored already; returns its record
    and whether it was stored now.

    Raises `InvalidKey` for a malformed key or a short secret, and `KeyConflict` when the key
    is stored with other attributes or its id belongs to another or a revoked key.
    """
    from plumbing.keystore import InvalidKey, parse_key

    wanted = (
        owner,
        None if allowed_models is None else frozenset(allowed_models),
        requests_per_minute,
        tokens_per_day,
        service,
    )
    try:
        record = keystore.authenticate(api_key)
    except InvalidKey:
        key_id, _secret = parse_key(api_key)  # a malformed key raises here
        if any(key.key_id == key_id for key in keystore.list_keys()):
            raise KeyConflict(
                f"key id {key_id} belongs to a revoked key or to another secret: generate a new key"
            ) from None
        _api_key, record = keystore.create_key(
            owner,
            allowed_models=allowed_models,
            requests_per_minute=requests_per_minute,
            tokens_per_day=tokens_per_day,
            service=service,
            api_key=api_key,
        )
        return record, True
    stored = (
        record.owner,
        record.allowed_models,
        record.requests_per_minute,
        record.tokens_per_day,
        record.service,
    )
    if stored != wanted:
        raise KeyConflict(
            f"key {record.key_id} is stored with other attributes (owner {record.owner!r}, "
            f"{'service' if record.service else 'user'} key, models, quotas): revoke it and "
            "register a new key, or use the stored attributes"
        )
    return record, False


def _register(keystore: Keystore, api_key: str, args: argparse.Namespace) -> int:
    """`keys create --key-from-env`: registers the key; never prints its secret."""
    from plumbing.keystore import InvalidKey

    try:
        record, created = register_key(
            keystore,
            api_key,
            owner=args.owner,
            allowed_models=args.models,
            requests_per_minute=args.requests_per_minute,
            tokens_per_day=args.tokens_per_day,
            service=args.service,
        )
    except (InvalidKey, KeyConflict) as exc:
        print(f"llm-mesh keys create: {args.key_from_env}: {exc}", file=sys.stderr)
        return 1
    print(f"key id: {record.key_id} ({'stored' if created else 'already stored'})")
    return 0
