"""Certificates for the gRPC TLS tests, made with `cryptography`: CAs and the leaves they sign.

Each leaf is written as `<name>.crt` and `<name>.key` (PEM, unencrypted PKCS#8), a CA as
`<name>.crt`; server leaves name 127.0.0.1 and localhost, client leaves only a common name.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY: Final = datetime.timedelta(days=1)
_BACKDATE: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Leaf:
    """A certificate and its private key, as PEM files."""

    certfile: Path
    keyfile: Path


class CertificateAuthority:
    """A self-signed CA whose certificate is `<directory>/<name>.crt`."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        certificate = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.certfile = directory / f"{name}.crt"
        self.certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def server(self, name: str) -> Leaf:
        """A server certificate for 127.0.0.1 and localhost."""
        names = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        return self._leaf(name, ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, name: str) -> Leaf:
        """A client certificate (common name `name`)."""
        return self._leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def _leaf(
        self, name: str, usage: x509.ObjectIdentifier, names: x509.SubjectAlternativeName | None
    ) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names is not None:
            builder = builder.add_extension(names, critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        leaf = Leaf(self._directory / f"{name}.crt", self._directory / f"{name}.key")
        leaf.certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        leaf.keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return leaf

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
            .not_valid_after(now + _VALIDITY)
        )
