"""On-device key generation and PKCS#10 certificate signing requests.

Keys are made on the device with the OS random source (through `cryptography`) and never leave
it: only the CSR goes to the issuer. Supported key types: `ec-p256` (default), `ec-p384`,
`rsa-2048`, `rsa-3072`, `rsa-4096`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgecert.core.certinfo import KEY_TYPES, PrivateKey
from edgecert.errors import KeyGenerationError

__all__ = [
    "DEFAULT_KEY_TYPE",
    "build_csr",
    "generate_key",
    "key_to_pem",
    "parse_subject",
    "signature_hash",
]

DEFAULT_KEY_TYPE = "ec-p256"
_CURVES: dict[str, ec.EllipticCurve] = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a new private key of a supported type (RSA with public exponent 65537)."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    if key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.split("-")[1]))
    raise KeyGenerationError(
        f"unknown key type {key_type!r}",
        remedy=f"set key.type to one of: {', '.join(KEY_TYPES)}",
    )


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash a key signs with: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def key_to_pem(key: PrivateKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM (what IoT Edge's file URIs read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_subject(text: str) -> x509.Name:
    """Parse an RFC 4514 distinguished name such as `CN=device-1,O=Contoso`."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise KeyGenerationError(
            f"subject {text!r} is not a distinguished name ({exc})",
            remedy="write the subject as RFC 4514 attributes, e.g. 'CN={deviceId},O=Contoso'",
        ) from None
    if not list(name):
        raise KeyGenerationError("the subject is empty", remedy="give at least a common name, e.g. 'CN={deviceId}'")
    return name


def build_csr(
    key: PrivateKey,
    subject: x509.Name,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> x509.CertificateSigningRequest:
    """Build and sign a PKCS#10 request for `key` with `subject` and the given SANs."""
    general_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    for address in ip_addresses:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise KeyGenerationError(
                f"{address!r} is not an IP address", remedy="write IPv4 or IPv6 addresses"
            ) from None
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    return builder.sign(key, signature_hash(key))
