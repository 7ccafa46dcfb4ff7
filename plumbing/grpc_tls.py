"""gRPC TLS credentials from PEM files: the scheduler's port and its clients' channels.

The files are parsed with the standard `ssl` module before grpc gets their bytes: grpc reports
a bad certificate or key only as "Failed to bind" on the server and as UNAVAILABLE on every
call of a client, whereas this fails at start with a `ValueError` naming the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from plumbing.settings import require_together

__all__ = ["channel_credentials", "server_credentials"]


def server_credentials(
    certfile: Path, keyfile: Path, *, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """A TLS port's credentials: the certificate chain `certfile` and its key `keyfile`; with
    `client_ca`, clients must present a certificate signed by it (mutual TLS).

    Raises `ValueError` for a file that is not what it should be, `OSError` for one that
    cannot be read.
    """
    _check_key_pair(certfile, keyfile)
    if client_ca is not None:
        _check_ca(client_ca)
    return grpc.ssl_server_credentials(
        [(keyfile.read_bytes(), certfile.read_bytes())],
        root_certificates=None if client_ca is None else client_ca.read_bytes(),
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path, *, certfile: Path | None = None, keyfile: Path | None = None
) -> grpc.ChannelCredentials:
    """A channel's credentials trusting the CA bundle `ca` only; with `certfile` and `keyfile`
    (both or neither) the channel presents that client certificate (mutual TLS).

    Raises `ValueError` for a file that is not what it should be (or only one of the pair),
    `OSError` for one that cannot be read.
    """
    require_together(certfile=certfile, keyfile=keyfile)
    _check_ca(ca)
    if certfile is not None and keyfile is not None:
        _check_key_pair(certfile, keyfile)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=None if keyfile is None else keyfile.read_bytes(),
        certificate_chain=None if certfile is None else certfile.read_bytes(),
    )


def _check_key_pair(certfile: Path, keyfile: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # An empty password: an encrypted key (which grpc cannot use) fails instead of
        # OpenSSL prompting on the terminal.
        context.load_cert_chain(certfile, keyfile, password=b"")
    except ssl.SSLError as error:
        raise ValueError(
            f"{certfile} and {keyfile} are not a PEM certificate chain and its unencrypted "
            f"private key ({error})"
        ) from error


def _check_ca(ca: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise ValueError(f"{ca} is not a PEM CA bundle ({error})") from error
