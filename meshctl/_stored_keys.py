"""API keys `llm-mesh up` keeps in its data directory, so later runs print the same key.

Each key is one file holding the full key (mode 0600, written atomically). A stored key is
reused only while the keystore still accepts it with the same owner and kind; a revoked,
deleted or foreign key is replaced by a new one.
"""

from __future__ import annotations

import os
from pathlib import Path

from plumbing.keystore import InvalidKey, Keystore

__all__ = ["stored_key"]


def stored_key(keystore: Keystore, path: Path, *, owner: str, service: bool = False) -> str:
    """The key stored at `path` if the keystore still accepts it, else a new one stored there."""
    try:
        api_key = path.read_text().strip()
    except FileNotFoundError:
        api_key = ""
    if api_key:
        try:
            record = keystore.authenticate(api_key)
        except InvalidKey:
            pass
        else:
            if record.owner == owner and record.service == service:
                return api_key
    api_key, _record = keystore.create_key(owner, service=service)
    _write_private(path, api_key)
    return api_key


def _write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` (mode 0600) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text + "\n")
    os.chmod(temporary, 0o600)  # an older temporary file keeps its mode through O_TRUNC
    os.replace(temporary, path)
