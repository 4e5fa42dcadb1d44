"""The sandbox's own CA: server certificates for the emulators and a CA file clients trust.

Everything is made fresh in memory at start (EC P-256, SHA-256); `write_ca_file` puts the CA
certificate where SDK clients can be pointed at it (`connection_verify=<caFile>`,
`server_verification_cert=<PEM>`). The CA key never leaves the process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecert.core.certinfo import PrivateKey
from edgecert.crypto import generate_key, key_to_pem, signature_hash

__all__ = ["SandboxCA", "ServerCredentials"]

_PEM = serialization.Encoding.PEM
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class ServerCredentials:
    """A TLS server certificate (chain PEM) and its key (PEM) for one emulator listener."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.pem` and `<name>.key.pem` (0600) for `ssl.SSLContext.load_cert_chain`."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{name}.pem", folder / f"{name}.key.pem"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600, exist_ok=True)
        key.chmod(0o600)
        key.write_bytes(self.key_pem)
        return cert, key


class SandboxCA:
    """A throw-away CA that issues the emulators' TLS server certificates."""

    def __init__(self, name: str = "edgecert sandbox CA", *, now: datetime | None = None) -> None:
        self._now = (now or datetime.now(UTC)).replace(microsecond=0)
        self._key = generate_key("ec-p256")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - timedelta(hours=1))
            .not_valid_after(self._now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, signature_hash(self._key))
        )

    def signing_pair(self) -> tuple[x509.Certificate, PrivateKey]:
        """The CA certificate and key, for an emulator that issues certificates with this CA."""
        return self.certificate, self._key

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(_PEM)

    def write_ca_file(self, path: Path) -> Path:
        """Write the CA certificate for clients to trust."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.pem)
        return path

    def server(self, *names: str, days: int = 30) -> ServerCredentials:
        """Issue a TLS server certificate whose SANs are `names` (DNS names or IP addresses)."""
        key = generate_key("ec-p256")
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - timedelta(hours=1))
            .not_valid_after(self._now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_public()), critical=False)
            .sign(self._key, signature_hash(self._key))
        )
        return ServerCredentials(cert.public_bytes(_PEM) + self.pem, key_to_pem(key))

    def _ca_public(self) -> ec.EllipticCurvePublicKey:
        public = self._key.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # noqa: S101 - made as EC P-256 above
        return public
