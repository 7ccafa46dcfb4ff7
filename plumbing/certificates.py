"""A certificate authority made on the spot, and the leaf certificates it signs (PEM files).

Used where llm-mesh needs private TLS of its own: the mutual TLS between the components of
the SeaweedFS server `llm-mesh up` runs (`plumbing._seaweed_security`), and the tests' gRPC
TLS set-ups. The CA's key stays in memory and is never written. Every file is written with
mode 0600: a CA certificate as `<name>.crt`, a leaf as `<name>.crt` and `<name>.key`
(unencrypted PKCS#8).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "Leaf"]

#: Clock skew tolerated on `not_valid_before`.
_BACKDATE: Final = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Leaf:
    """A certificate and its private key, as PEM files."""

    certfile: Path
    keyfile: Path


class CertificateAuthority:
    """A self-signed CA whose certificate is `<directory>/<name>.crt`, valid for `validity`."""

    def __init__(
        self, directory: Path, name: str, *, validity: datetime.timedelta = datetime.timedelta(1)
    ) -> None:
        self._directory = directory
        self._validity = validity
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        usage = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        certificate = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certfile = _write_private(
            directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM)
        )

    def server(self, name: str, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Leaf:
        """A server certificate for `hosts` (IP addresses or DNS names)."""
        return self.leaf(name, server=True, hosts=hosts)

    def client(self, name: str) -> Leaf:
        """A client certificate (common name `name`)."""
        return self.leaf(name, client=True)

    def leaf(
        self, name: str, *, server: bool = False, client: bool = False, hosts: Sequence[str] = ()
    ) -> Leaf:
        """A leaf certificate for server and/or client authentication, naming `hosts`."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ] * client
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                critical=False,
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        return Leaf(
            _write_private(
                self._directory / f"{name}.crt",
                certificate.public_bytes(serialization.Encoding.PEM),
            ),
            _write_private(
                self._directory / f"{name}.key",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ),
        )

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self._validity)
        )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, content: bytes) -> Path:
    path.touch(mode=0o600)
    path.write_bytes(content)
    return path
