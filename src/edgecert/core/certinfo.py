"""Certificate facts: parse certificates, chains and keys, and describe them.

Pure: every function takes bytes or parsed objects and returns values. Handles PEM and DER
certificates and chains; PKCS#8, PKCS#1 and SEC1 private keys in PEM or DER; PKCS#12; and the two
forms in which Key Vault returns a certificate-backed secret (`application/x-pkcs12`: standard
base64 of a PFX with an empty password; `application/x-pem-file`: PEM key followed by the chain).
All times are timezone-aware UTC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "KEY_TYPES",
    "CertFacts",
    "ChainResult",
    "KeyAndChain",
    "ParseError",
    "PrivateKey",
    "build_chain",
    "certificate_facts",
    "extension",
    "key_matches_certificate",
    "key_type_of",
    "load_certificates",
    "load_keyvault_secret",
    "load_pem_bundle",
    "load_pkcs12",
    "load_private_key",
    "sha256_thumbprint",
    "x5t",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: The key types edgecert generates and accepts, by their config names.
KEY_TYPES: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_E = TypeVar("_E", bound=x509.ExtensionType)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
_CERT_LABELS = (b"CERTIFICATE", b"TRUSTED CERTIFICATE")
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH.dotted_string: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING.dotted_string: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING.dotted_string: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING.dotted_string: "OCSPSigning",
}


class ParseError(ValueError):
    """Bytes could not be read as the certificate, key or bundle they were meant to be.

    The message says what was expected and never includes the bytes themselves (they may hold a key).
    """


@dataclass(frozen=True, slots=True)
class KeyAndChain:
    """A private key with its certificate chain, leaf first."""

    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate (first of the chain)."""
        return self.chain[0]


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What a certificate says about itself, in the terms renewal decisions and reports need."""

    subject: str
    common_name: str | None
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    thumbprint_sha256: str
    x5t: str
    key_type: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    ekus: tuple[str, ...]
    is_ca: bool
    path_length: int | None
    self_signed: bool

    @property
    def lifetime(self) -> timedelta:
        """notAfter - notBefore (zero or negative for a malformed certificate)."""
        return self.not_after - self.not_before


@dataclass(frozen=True, slots=True)
class ChainResult:
    """The outcome of building a path from a leaf to a trust anchor."""

    ok: bool
    path: tuple[x509.Certificate, ...]
    reason: str


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Read every certificate from PEM text (any number of blocks) or one DER certificate."""
    if b"-----BEGIN" in data:
        certs = [
            _load_pem_cert(block.group(1), block.group(0))
            for block in _PEM_BLOCK.finditer(data)
            if block.group(1) in _CERT_LABELS
        ]
        if not certs:
            raise ParseError("no CERTIFICATE block in the PEM data")
        return certs
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ParseError("neither PEM certificates nor one DER certificate") from None


def load_private_key(data: bytes, password: bytes | None = None) -> PrivateKey:
    """Read an RSA or EC private key: PKCS#8, PKCS#1 or SEC1, in PEM or DER."""
    pem = b"-----BEGIN" in data
    blocks = [b.group(0) for b in _PEM_BLOCK.finditer(data) if b.group(1) in _KEY_LABELS] if pem else []
    if pem and not blocks and b"ENCRYPTED PRIVATE KEY" not in data:
        raise ParseError("no PRIVATE KEY block in the PEM data (it holds only certificates or other blocks)")
    try:
        if pem:
            key = serialization.load_pem_private_key(blocks[0] if blocks else data, password=password)
        else:
            key = serialization.load_der_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ParseError(
            "not a readable private key (expected PKCS#8, PKCS#1 or SEC1, PEM or DER, unencrypted)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ParseError(f"unsupported private key type {type(key).__name__}; use an RSA or EC key")
    return key


def load_pem_bundle(data: bytes) -> KeyAndChain:
    """Read a PEM bundle holding one private key and its chain (Key Vault's `x-pem-file` form)."""
    key = load_private_key(data)
    certs = load_certificates(data)
    return KeyAndChain(key=key, chain=tuple(order_chain(key, certs)))


def load_pkcs12(data: bytes, password: bytes | None = None) -> KeyAndChain:
    """Read a PKCS#12 (PFX) file holding a key, its certificate and optional CA certificates."""
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ParseError("not a readable PKCS#12 file (or the password is wrong)") from None
    if key is None or cert is None:
        raise ParseError("the PKCS#12 file holds no private key with its certificate")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ParseError(f"unsupported private key type {type(key).__name__}; use an RSA or EC key")
    return KeyAndChain(key=key, chain=(cert, *order_intermediates(cert, extra)))


def load_keyvault_secret(value: str, content_type: str | None) -> KeyAndChain:
    """Read the value of a certificate-backed Key Vault secret in either content type."""
    kind = (content_type or "").strip().lower()
    if kind == "application/x-pkcs12":
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ParseError("the PKCS#12 secret value is not standard base64") from None
        return load_pkcs12(raw, None)
    if kind == "application/x-pem-file":
        return load_pem_bundle(value.encode("ascii", errors="replace"))
    raise ParseError(
        f"secret content type {content_type!r} is neither 'application/x-pkcs12' nor "
        "'application/x-pem-file'; it is not a certificate-backed secret"
    )


def order_chain(key: PrivateKey, certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Put the certificate that matches `key` first and its issuers after it, in issuing order."""
    leaf = next((c for c in certs if key_matches_certificate(key, c)), None)
    if leaf is None:
        raise ParseError("none of the certificates in the bundle matches its private key")
    rest = [c for c in certs if c is not leaf]
    return [leaf, *order_intermediates(leaf, rest)]


def order_intermediates(leaf: x509.Certificate, others: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """Order `others` from the leaf's issuer upwards; certificates that are not on the path follow."""
    pool = list(others)
    ordered: list[x509.Certificate] = []
    current = leaf
    while pool:
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            break
        ordered.append(parent)
        pool.remove(parent)
        if parent.subject == parent.issuer:
            break
        current = parent
    return ordered + pool


def sha256_thumbprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, upper-case hex (the form IoT Hub registers)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def x5t(cert: x509.Certificate) -> str:
    """Base64url SHA-1 of the DER certificate without padding (Key Vault's `x5t`)."""
    digest = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()  # noqa: S324 - x5t is defined as SHA-1
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def key_type_of(public_key: object) -> str | None:
    """The config name of a key (`ec-p256`, `rsa-2048`, ...), or None for a type we do not issue."""
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        name = f"rsa-{public_key.key_size}"
    elif isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        name = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(public_key.curve.name, "")
    else:
        return None
    return name if name in KEY_TYPES else None


def key_matches_certificate(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True when `cert` carries the public half of `key`."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    except (ValueError, UnsupportedAlgorithm):
        return False


def certificate_facts(cert: x509.Certificate) -> CertFacts:
    """Describe one certificate."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    san = extension(cert, x509.SubjectAlternativeName)
    if san is not None:
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    eku = extension(cert, x509.ExtendedKeyUsage)
    ekus = tuple(_EKU_NAMES.get(oid.dotted_string, oid.dotted_string) for oid in eku or ())
    bc = extension(cert, x509.BasicConstraints)
    try:
        public_key: object = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        public_key = None
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        common_name=str(cns[0].value) if cns else None,
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        thumbprint_sha256=sha256_thumbprint(cert),
        x5t=x5t(cert),
        key_type=key_type_of(public_key),
        dns_names=dns,
        ip_addresses=ips,
        uris=uris,
        ekus=ekus,
        is_ca=bool(bc and bc.ca),
        path_length=bc.path_length if bc else None,
        self_signed=cert.subject == cert.issuer and _issued_by(cert, cert),
    )


def build_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime,
    max_depth: int = 8,
) -> ChainResult:
    """Build a path from `leaf` through `intermediates` to one of `anchors`, valid at `now`.

    Each link's signature is checked, every issuer must be a CA allowed to sign certificates (keyUsage
    keyCertSign when keyUsage is present) with room below it (pathLenConstraint), and every certificate on
    the path must be within its validity period at `now`. Anchors are trusted as given (their own validity
    is still checked, as IoT Edge's trust bundle is).
    """
    anchor_ders = {a.public_bytes(serialization.Encoding.DER) for a in anchors}
    path = [leaf]
    current = leaf
    for _ in range(max_depth):
        problem = _validity_problem(current, now)
        if problem:
            return ChainResult(ok=False, path=tuple(path), reason=problem)
        if current.public_bytes(serialization.Encoding.DER) in anchor_ders:
            return ChainResult(ok=True, path=tuple(path), reason="the chain ends at a trust anchor")
        issuer = next(
            (a for a in anchors if _issued_by(current, a)),
            None,
        ) or next((c for c in intermediates if c is not current and _issued_by(current, c)), None)
        if issuer is None:
            return ChainResult(
                ok=False,
                path=tuple(path),
                reason=f"no issuer for '{current.subject.rfc4514_string()}' "
                f"(issuer '{current.issuer.rfc4514_string()}') among the chain and the trust anchors",
            )
        bc = extension(issuer, x509.BasicConstraints)
        if not (bc and bc.ca):
            return ChainResult(
                ok=False,
                path=tuple(path),
                reason=f"issuer '{issuer.subject.rfc4514_string()}' is not a CA (basicConstraints CA:FALSE)",
            )
        usage = extension(issuer, x509.KeyUsage)
        if usage is not None and not usage.key_cert_sign:
            return ChainResult(
                ok=False,
                path=tuple(path),
                reason=f"issuer '{issuer.subject.rfc4514_string()}' may not sign certificates (keyUsage without "
                "keyCertSign)",
            )
        # RFC 5280 pathLenConstraint: how many CA certificates may follow the issuer. A CA at the bottom (an Edge
        # CA) counts too: it exists to issue certificates, and each of those paths would run through it.
        below = sum(1 for cert in path if _is_ca(cert) and cert.issuer != cert.subject)
        if bc.path_length is not None and below > bc.path_length:
            return ChainResult(
                ok=False,
                path=tuple(path),
                reason=f"issuer '{issuer.subject.rfc4514_string()}' allows {bc.path_length} CA certificate(s) below "
                f"it (pathLenConstraint) and the chain puts {below} there",
            )
        if issuer in path:
            return ChainResult(ok=False, path=tuple(path), reason="the chain loops")
        path.append(issuer)
        current = issuer
    return ChainResult(ok=False, path=tuple(path), reason=f"no trust anchor within {max_depth} certificates")


def _is_ca(cert: x509.Certificate) -> bool:
    bc = extension(cert, x509.BasicConstraints)
    return bool(bc and bc.ca)


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    name = cert.subject.rfc4514_string()
    if now < cert.not_valid_before_utc:
        return f"'{name}' is not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"'{name}' expired at {cert.not_valid_after_utc.isoformat()}"
    return None


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _load_pem_cert(label: bytes, block: bytes) -> x509.Certificate:
    try:
        if label == b"TRUSTED CERTIFICATE":
            # OpenSSL's trusted form (`openssl x509 -trustout`) is the DER certificate followed by its
            # trust settings (X509_CERT_AUX); cryptography reads neither the label nor the trailing data.
            der = base64.b64decode(b"".join(block.splitlines()[1:-1]))
            return x509.load_der_x509_certificate(_first_der_element(der))
        return x509.load_pem_x509_certificate(block)
    except (ValueError, IndexError):
        raise ParseError("a CERTIFICATE block is not a valid certificate") from None


def _first_der_element(der: bytes) -> bytes:
    """The first DER TLV of `der` (definite length, as DER requires)."""
    if der[1] < 0x80:
        return der[: 2 + der[1]]
    size = der[1] & 0x7F
    return der[: 2 + size + int.from_bytes(der[2 : 2 + size], "big")]


def extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    """The value of `cert`'s extension of type `kind`, or None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
