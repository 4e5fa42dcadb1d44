"""A tiny test PKI built with `cryptography`: a CA and leaves with explicit validity (no clock reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecert.core.certinfo import KeyAndChain, PrivateKey
from edgecert.crypto import generate_key, signature_hash


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(
    common_name: str, *, not_before: datetime, days: int = 3650, key_type: str = "ec-p256", path_length: int = 1
) -> Issued:
    key = generate_key(key_type)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .sign(key, signature_hash(key))
    )
    return Issued(cert, key)


def make_leaf(
    ca: Issued,
    common_name: str,
    *,
    not_before: datetime,
    lifetime: timedelta = timedelta(days=90),
    key_type: str = "ec-p256",
    dns: tuple[str, ...] = (),
) -> Issued:
    key = generate_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return Issued(builder.sign(ca.key, signature_hash(ca.key)), key)


def bundle(leaf: Issued, *chain: Issued) -> KeyAndChain:
    return KeyAndChain(key=leaf.key, chain=(leaf.cert, *(c.cert for c in chain)))
