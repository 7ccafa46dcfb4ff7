"""SeaweedFS's `security.toml` for one `weed mini` run: JWT signing keys and gRPC mutual TLS.

Without it, every component of `weed mini` besides S3 serves anyone who can reach loopback:
the master's HTTP API assigns file ids, uploads (`/submit`) and deletes whole collections
(`/col/delete`, i.e. a bucket's data); the volume server reads and writes needles by file
id; the filer reads and writes every path; and each component's gRPC API (file metadata,
volume copies, deletions) is open. With this file:

- `[jwt.signing]` / `[jwt.signing.read]`: the volume server accepts a write or a read only
  with a JWT signed by these keys, which only the master and the filer (over gRPC) mint;
- `[jwt.filer_signing]` / `[jwt.filer_signing.read]`: the same for the filer's HTTP API
  (which `S3Server` also turns off with `-disableHttp`, as it does the master's write API);
- `[grpc.*]`: every gRPC listener requires a client certificate from a CA made for this run
  (its key is never written), and every component presents the one leaf certificate.

Reference: `weed scaffold -config=security` (SeaweedFS 4.x), and the guard in
weed/security/guard.go. weed reads `./security.toml` first (then `~/.seaweedfs/`, `/etc/...`),
so the server runs in the directory this module writes to.
"""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path
from typing import Final

from plumbing.certificates import CertificateAuthority

__all__ = ["write_security_config"]

#: The sections of security.toml that configure a gRPC server or client certificate.
_GRPC_SECTIONS: Final = (
    "master",
    "volume",
    "filer",
    "s3",
    "admin",
    "worker",
    "msg_broker",
    "msg_agent",
    "mq",
    "client",
)
#: The certificates outlive any run (they are made per run, and deleted with it).
_VALIDITY: Final = datetime.timedelta(days=3650)


def write_security_config(directory: Path, *, host: str) -> Path:
    """Writes `security.toml`, `ca.crt`, `node.crt` and `node.key` into `directory` (mode 0600).

    Every key is new (random JWT keys, a fresh CA and leaf certificate for `host`). Returns
    the path of `security.toml`; weed finds it when started with `directory` as its working
    directory.
    """
    authority = CertificateAuthority(directory, "ca", validity=_VALIDITY)
    node = authority.leaf("node", server=True, client=True, hosts=(host, "localhost"))
    lines = [
        "# Written by llm-mesh (plumbing/_seaweed_security.py) for one weed run.",
        *_section("jwt.signing", key=secrets.token_urlsafe(32)),
        *_section("jwt.signing.read", key=secrets.token_urlsafe(32)),
        *_section("jwt.filer_signing", key=secrets.token_urlsafe(32)),
        *_section("jwt.filer_signing.read", key=secrets.token_urlsafe(32)),
        # The volume server's status UI stays off (it is already, with a signing key).
        *_section("access", ui=False),
        *_section("grpc", ca=str(authority.certfile)),
    ]
    for name in _GRPC_SECTIONS:
        lines += _section(f"grpc.{name}", cert=str(node.certfile), key=str(node.keyfile))
    return _write_private(directory / "security.toml", "\n".join(lines).encode() + b"\n")


def _section(name: str, **values: str | bool) -> list[str]:
    return [f"[{name}]", *(f"{key} = {_toml_value(value)}" for key, value in values.items())]


def _toml_value(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    # Basic strings: the values are paths and URL-safe base64, but escape what TOML requires.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, content: bytes) -> Path:
    path.touch(mode=0o600)
    path.write_bytes(content)
    return path
