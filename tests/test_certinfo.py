"""certinfo and validate: certificates, keys, PKCS#12 and Key Vault secrets; thumbprints; chains; install checks.

Certificates come from `cryptography`'s builder with explicit validity around the fixed instant `NOW` (no clock
reads); keys and PKCS#12 files also come from the real `openssl` binary to prove interop; the Key Vault cases
read real recorded service responses (tests/fixtures/keyvault/, see tests/fixtures/SOURCES.md).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from edgecert.core.certinfo import (
    KeyAndChain,
    ParseError,
    PrivateKey,
    build_chain,
    certificate_facts,
    key_matches_certificate,
    load_certificates,
    load_keyvault_secret,
    load_pem_bundle,
    load_pkcs12,
    load_private_key,
    order_chain,
    order_intermediates,
    sha256_thumbprint,
    x5t,
)
from edgecert.core.validate import Expectations, check_bundle
from tests.conftest import openssl

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
KEYVAULT = Path(__file__).parent / "fixtures" / "keyvault"
PFX_PASSWORD = "s3cret"  # noqa: S105 - a throwaway password for files made inside the test
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC
PLAIN = serialization.NoEncryption()
OID_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")  # DER of 1.2.840.113549.1.1.1, present only in PKCS#8
OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # DER of 1.2.840.10045.2.1, present only in PKCS#8
UNKNOWN_EKU = ObjectIdentifier("1.3.6.1.4.1.311.99.7")
AnyKey = PrivateKey | ed25519.Ed25519PrivateKey


# -- a tiny PKI --------------------------------------------------------------------------------------------------


def key(kind: str, n: int = 0) -> PrivateKey:
    """A private key of a config-style kind ("ec-p256", "rsa-2048", ...); `n` tells keys of one kind apart.

    Cached for the run, so the one RSA-4096 key is generated once (and only if a test asks for it).
    """
    return _key(kind, n)  # one cache entry per (kind, n), however the call spells it


@functools.cache
def _key(kind: str, n: int) -> PrivateKey:
    family, size = kind.split("-")
    if family == "ec":
        curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[size]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=int(size))


def name(common_name: str | None, organization: str | None = None) -> x509.Name:
    attributes = []
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def make_cert(
    subject: str | x509.Name,
    subject_key: AnyKey,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 90 * DAY,
    ca: bool | None = False,
    path_length: int | None = None,
    sans: Sequence[x509.GeneralName] = (),
    ekus: Sequence[ObjectIdentifier] = (),
    key_usage: x509.KeyUsage | None = None,
    serial: int = 0x1000,
) -> x509.Certificate:
    """A certificate for `subject_key`, signed by `issuer` (cert, key) or self-signed; `ca=None` omits basicConstraints.

    A forgery is `issuer=(real_issuer_cert, some_other_key)`: the issuer name matches, the signature does not.
    """
    subject_name = name(subject) if isinstance(subject, str) else subject
    issuer_name, signing_key = (subject_name, subject_key) if issuer is None else (issuer[0].subject, issuer[1])
    assert not isinstance(signing_key, ed25519.Ed25519PrivateKey), "the helper signs with RSA or EC keys"
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    # deterministic ECDSA (RFC 6979): the same inputs give the same certificate, so cases can rebuild what they expect
    deterministic = True if isinstance(signing_key, ec.EllipticCurvePrivateKey) else None
    return builder.sign(signing_key, hashes.SHA256(), ecdsa_deterministic=deterministic)


@dataclass(frozen=True)
class Pki:
    """Root CA → intermediate CA → device leaf, all valid at NOW."""

    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate
    intermediate_key: PrivateKey
    leaf: x509.Certificate
    leaf_key: PrivateKey

    def leaf_issued(self, **kwargs: Any) -> x509.Certificate:
        """Another certificate for the leaf key from the intermediate, changed by `kwargs`."""
        kwargs.setdefault("serial", 0x2000)
        return make_cert(self.leaf.subject, self.leaf_key, issuer=(self.intermediate, self.intermediate_key), **kwargs)

    def ca_issued(self, subject: str, **kwargs: Any) -> tuple[x509.Certificate, x509.Certificate]:
        """A leaf, and the other intermediate (own key, under the root, changed by `kwargs`) that issued it."""
        cert = make_cert(subject, key("ec-p256", 5), issuer=(self.root, self.root_key), **kwargs)
        return make_cert("device-under-" + subject, self.leaf_key, issuer=(cert, key("ec-p256", 5))), cert


def _make_pki() -> Pki:
    root_key, intermediate_key, leaf_key = key("ec-p256", 1), key("ec-p384", 1), key("ec-p256", 2)
    root = make_cert("Edgecert Test Root", root_key, ca=True, path_length=1, not_before=NOW - 365 * DAY)
    intermediate = make_cert(
        "Edgecert Test Intermediate", intermediate_key, issuer=(root, root_key), ca=True, path_length=0, serial=0x1001
    )
    leaf = make_cert(
        name("device-1", "Contoso"),
        leaf_key,
        issuer=(intermediate, intermediate_key),
        serial=0x1002,
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return Pki(root, root_key, intermediate, intermediate_key, leaf, leaf_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return _make_pki()


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def key_bytes(private_key: AnyKey, encoding: serialization.Encoding, form: serialization.PrivateFormat) -> bytes:
    return private_key.private_bytes(encoding, form, PLAIN)


def fragments(data: bytes) -> list[str]:
    """Substrings an error message would show if it quoted `data`: PEM body lines, or base64/hex/repr of DER."""
    if b"-----BEGIN" in data:
        return [line.decode() for line in data.splitlines() if len(line) >= 40 and not line.startswith(b"-----")]
    middle = data[8:40]
    return [f for f in (base64.b64encode(middle).decode()[:24], middle.hex()[:24], repr(middle)[2:26]) if f]


def assert_quiet(exc: pytest.ExceptionInfo[ParseError], data: bytes) -> None:
    """The error neither quotes `data` nor chains a foreign exception (whose text or traceback could quote it)."""
    message = str(exc.value)
    assert message
    for fragment in fragments(data):
        assert fragment not in message
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__


# -- load_certificates -------------------------------------------------------------------------------------------


def _openssl_text(*certs: x509.Certificate) -> str:
    """`openssl x509 -text` output (a text dump, then the PEM block) for each certificate."""
    return "".join(openssl("x509", "-text", stdin=pem(c).decode()) for c in certs)


CERT_INPUTS: dict[str, tuple[Callable[[Pki], bytes], Callable[[Pki], list[x509.Certificate]]]] = {
    "one PEM certificate": (lambda p: pem(p.leaf), lambda p: [p.leaf]),
    "PEM chain of three keeps its order": (
        lambda p: pem(p.leaf, p.intermediate, p.root),
        lambda p: [p.leaf, p.intermediate, p.root],
    ),
    "PEM chain given root first keeps that order": (
        lambda p: pem(p.root, p.leaf, p.intermediate),
        lambda p: [p.root, p.leaf, p.intermediate],
    ),
    "one DER certificate": (lambda p: der(p.leaf), lambda p: [p.leaf]),
    "openssl -text dumps with CRLF endings and notes before and after": (
        lambda p: (
            (
                "Bag Attributes\n    friendlyName: device-1\nsubject=CN=device-1\n"
                + _openssl_text(p.leaf, p.intermediate)
                + "notes after the last block\n"
            )
            .replace("\n", "\r\n")
            .encode()
        ),
        lambda p: [p.leaf, p.intermediate],
    ),
    "TRUSTED CERTIFICATE from openssl -trustout, with trust settings": (
        lambda p: openssl("x509", "-trustout", "-addtrust", "serverAuth", stdin=pem(p.root).decode()).encode(),
        lambda p: [p.root],
    ),
    "TRUSTED CERTIFICATE then a plain CERTIFICATE": (
        lambda p: (
            openssl("x509", "-trustout", "-addreject", "emailProtection", stdin=pem(p.leaf).decode()).encode()
            + pem(p.intermediate)
        ),
        lambda p: [p.leaf, p.intermediate],
    ),
}


@pytest.mark.parametrize(("make", "expect"), CERT_INPUTS.values(), ids=CERT_INPUTS.keys())
def test_load_certificates_reads_every_form(
    pki: Pki, make: Callable[[Pki], bytes], expect: Callable[[Pki], list[x509.Certificate]]
) -> None:
    data = make(pki)
    assert load_certificates(data) == expect(pki)


def test_trusted_certificate_fixture_really_carries_trust_settings(pki: Pki) -> None:
    # guards the case above: the block is more than a relabelled certificate
    trusted = openssl("x509", "-trustout", "-addtrust", "serverAuth", stdin=pem(pki.root).decode())
    assert "-----BEGIN TRUSTED CERTIFICATE-----" in trusted
    body = base64.b64decode("".join(trusted.strip().splitlines()[1:-1]))
    assert len(body) > len(der(pki.root))
    assert body.startswith(der(pki.root))


BAD_CERT_INPUTS: dict[str, tuple[Callable[[Pki], bytes], str]] = {
    "binary garbage": (lambda _: b"\x30\x82\x01\x00 certificate? no: secret-garbage-0451 \xff\xfe" * 4, "DER"),
    "empty input": (lambda _: b"", "DER"),
    "text that is not PEM": (lambda _: b"hello, this is plainly text and not a certificate at all\n", "DER"),
    "PEM holding only a private key": (
        lambda p: key_bytes(p.leaf_key, PEM, PKCS8),
        "no CERTIFICATE block",
    ),
    "PEM holding only an RSA key": (
        lambda _: key_bytes(key("rsa-2048"), PEM, TRADITIONAL),
        "no CERTIFICATE block",
    ),
    "CERTIFICATE block whose body is a key": (
        lambda p: key_bytes(p.leaf_key, PEM, PKCS8).replace(b"PRIVATE KEY", b"CERTIFICATE"),
        "not a valid certificate",
    ),
    "truncated DER certificate": (lambda p: der(p.leaf)[:-20], "DER"),
}


@pytest.mark.parametrize(("make", "says"), BAD_CERT_INPUTS.values(), ids=BAD_CERT_INPUTS.keys())
def test_load_certificates_rejects_without_quoting_input(pki: Pki, make: Callable[[Pki], bytes], says: str) -> None:
    data = make(pki)
    with pytest.raises(ParseError, match=says) as exc:
        load_certificates(data)
    assert_quiet(exc, data)


# -- load_private_key --------------------------------------------------------------------------------------------

KEY_FORMS: dict[str, tuple[str, serialization.Encoding, serialization.PrivateFormat, bytes]] = {
    # each case, by id: (key kind, encoding, format, a marker the bytes must hold so the case tests the form it names)
    "EC PKCS#8 PEM": ("ec-p256", PEM, PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    "RSA PKCS#8 PEM": ("rsa-2048", PEM, PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    "EC P-384 PKCS#8 PEM": ("ec-p384", PEM, PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    "RSA PKCS#1 PEM": ("rsa-2048", PEM, TRADITIONAL, b"-----BEGIN RSA PRIVATE KEY-----"),
    "EC SEC1 PEM": ("ec-p256", PEM, TRADITIONAL, b"-----BEGIN EC PRIVATE KEY-----"),
    "EC PKCS#8 DER": ("ec-p256", DER, PKCS8, OID_EC_PUBLIC_KEY),
    "RSA PKCS#8 DER": ("rsa-2048", DER, PKCS8, OID_RSA_ENCRYPTION),
    "RSA PKCS#1 DER": ("rsa-2048", DER, TRADITIONAL, b"\x02\x01\x00\x02\x82\x01\x01\x00"),  # version 0, then n
    "EC SEC1 DER": ("ec-p256", DER, TRADITIONAL, b"\x02\x01\x01\x04\x20"),  # version 1, then the 32-byte secret
}


@pytest.mark.parametrize(("kind", "encoding", "form", "marker"), KEY_FORMS.values(), ids=KEY_FORMS.keys())
def test_load_private_key_reads_every_form(
    kind: str, encoding: serialization.Encoding, form: serialization.PrivateFormat, marker: bytes
) -> None:
    original = key(kind)
    data = key_bytes(original, encoding, form)
    assert marker in data
    if encoding is DER and form is TRADITIONAL:
        assert OID_RSA_ENCRYPTION not in data
        assert OID_EC_PUBLIC_KEY not in data
    loaded = load_private_key(data)
    assert type(loaded) is type(original)
    assert loaded.private_numbers() == original.private_numbers()


@pytest.mark.parametrize(
    ("kind", "form"),
    [("ec-p256", PKCS8), ("rsa-2048", TRADITIONAL), ("ec-p384", TRADITIONAL)],
    ids=["certificate first, then an EC PKCS#8 key", "certificate first, then an RSA PKCS#1 key", "SEC1 after a chain"],
)
def test_load_private_key_skips_certificates_before_the_key(
    pki: Pki, kind: str, form: serialization.PrivateFormat
) -> None:
    original = key(kind)
    data = pem(pki.leaf, pki.intermediate) + key_bytes(original, PEM, form) + pem(pki.root)
    assert load_private_key(data).private_numbers() == original.private_numbers()


@dataclass(frozen=True)
class OpensslKeys:
    files: dict[str, bytes]

    def public_pem(self, family: str) -> bytes:
        return self.files[f"{family}-public.pem"]


@pytest.fixture(scope="module")
def openssl_keys(tmp_path_factory: pytest.TempPathFactory) -> OpensslKeys:
    """One EC and one RSA key made by `openssl genpkey`, rewritten by `openssl ec|rsa|pkcs8` into every form."""
    folder = tmp_path_factory.mktemp("openssl-keys")
    steps = [
        ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec-pkcs8.pem"),
        ("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa-pkcs8.pem"),
        ("genpkey", "-algorithm", "ED25519", "-out", "ed25519.pem"),
        ("ec", "-in", "ec-pkcs8.pem", "-out", "ec-sec1.pem"),
        ("ec", "-in", "ec-pkcs8.pem", "-outform", "DER", "-out", "ec-sec1.der"),
        ("rsa", "-traditional", "-in", "rsa-pkcs8.pem", "-out", "rsa-pkcs1.pem"),
        ("rsa", "-traditional", "-in", "rsa-pkcs8.pem", "-outform", "DER", "-out", "rsa-pkcs1.der"),
        ("pkcs8", "-topk8", "-nocrypt", "-in", "ec-sec1.pem", "-outform", "DER", "-out", "ec-pkcs8.der"),
        ("pkcs8", "-topk8", "-nocrypt", "-in", "rsa-pkcs1.pem", "-outform", "DER", "-out", "rsa-pkcs8.der"),
        ("pkcs8", "-topk8", "-in", "ec-sec1.pem", "-passout", f"pass:{PFX_PASSWORD}", "-out", "ec-encrypted.pem"),
        ("pkey", "-in", "ec-pkcs8.pem", "-pubout", "-out", "ec-public.pem"),
        ("pkey", "-in", "rsa-pkcs8.pem", "-pubout", "-out", "rsa-public.pem"),
    ]
    for step in steps:
        openssl(*step, cwd=folder)
    return OpensslKeys({path.name: path.read_bytes() for path in folder.iterdir()})


OPENSSL_KEY_FORMS: dict[str, tuple[str, str, bytes, bytes | None]] = {
    # each case, by id: (file, family, marker the bytes must hold, marker they must not hold)
    "openssl genpkey EC (PKCS#8 PEM)": ("ec-pkcs8.pem", "ec", b"-----BEGIN PRIVATE KEY-----", None),
    "openssl genpkey RSA (PKCS#8 PEM)": ("rsa-pkcs8.pem", "rsa", b"-----BEGIN PRIVATE KEY-----", None),
    "openssl ec (SEC1 PEM)": ("ec-sec1.pem", "ec", b"-----BEGIN EC PRIVATE KEY-----", None),
    "openssl ec -outform DER (SEC1 DER)": ("ec-sec1.der", "ec", b"\x02\x01\x01\x04\x20", OID_EC_PUBLIC_KEY),
    "openssl rsa -traditional (PKCS#1 PEM)": ("rsa-pkcs1.pem", "rsa", b"-----BEGIN RSA PRIVATE KEY-----", None),
    "openssl rsa -traditional -outform DER (PKCS#1 DER)": ("rsa-pkcs1.der", "rsa", b"\x02\x01\x00", OID_RSA_ENCRYPTION),
    "openssl pkcs8 -topk8 EC (PKCS#8 DER)": ("ec-pkcs8.der", "ec", OID_EC_PUBLIC_KEY, None),
    "openssl pkcs8 -topk8 RSA (PKCS#8 DER)": ("rsa-pkcs8.der", "rsa", OID_RSA_ENCRYPTION, None),
}


@pytest.mark.parametrize(("file", "family", "has", "lacks"), OPENSSL_KEY_FORMS.values(), ids=OPENSSL_KEY_FORMS.keys())
def test_load_private_key_reads_keys_made_by_openssl(
    openssl_keys: OpensslKeys, file: str, family: str, has: bytes, lacks: bytes | None
) -> None:
    data = openssl_keys.files[file]
    assert has in data
    assert lacks is None or lacks not in data
    loaded = load_private_key(data)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey if family == "ec" else rsa.RSAPrivateKey)
    public = loaded.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public == openssl_keys.public_pem(family)


def test_load_private_key_reads_an_openssl_encrypted_key_with_its_password(openssl_keys: OpensslKeys) -> None:
    loaded = load_private_key(openssl_keys.files["ec-encrypted.pem"], PFX_PASSWORD.encode())
    public = loaded.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public == openssl_keys.public_pem("ec")


def _encrypted(encoding: serialization.Encoding) -> bytes:
    encryption = serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
    return key("ec-p256").private_bytes(encoding, PKCS8, encryption)


def _ed25519(encoding: serialization.Encoding) -> bytes:
    return key_bytes(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), encoding, PKCS8)


def _corrupt(pem_data: bytes) -> bytes:
    """The PEM block with its second body line reversed: still base64, no longer DER."""
    lines = pem_data.splitlines(keepends=True)
    lines[2] = lines[2].rstrip(b"\n")[::-1] + b"\n"
    return b"".join(lines)


BAD_KEYS: dict[str, tuple[Callable[[OpensslKeys, Pki], bytes], bytes | None, str]] = {
    # each case, by id: (input, password, what the message must say)
    "openssl-encrypted PKCS#8 PEM, no password": (
        lambda o, _: o.files["ec-encrypted.pem"],
        None,
        "unencrypted",
    ),
    "encrypted PKCS#8 PEM, no password": (lambda *_: _encrypted(PEM), None, "unencrypted"),
    "encrypted PKCS#8 DER, no password": (lambda *_: _encrypted(DER), None, "unencrypted"),
    "encrypted PKCS#8 PEM, wrong password": (lambda *_: _encrypted(PEM), b"not-it", "not a readable private key"),
    "encrypted RSA PKCS#1 PEM (Proc-Type header), no password": (
        lambda *_: key("rsa-2048").private_bytes(
            PEM, TRADITIONAL, serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
        ),
        None,
        "unencrypted",
    ),
    "openssl genpkey Ed25519": (lambda o, _: o.files["ed25519.pem"], None, "unsupported private key type Ed25519"),
    "Ed25519 PKCS#8 PEM": (lambda *_: _ed25519(PEM), None, "unsupported private key type Ed25519"),
    "Ed25519 PKCS#8 DER": (lambda *_: _ed25519(DER), None, "unsupported private key type Ed25519"),
    "PEM with only certificates": (lambda _, p: pem(p.leaf, p.root), None, "no PRIVATE KEY block"),
    "a DER certificate": (lambda _, p: der(p.leaf), None, "not a readable private key"),
    "empty input": (lambda *_: b"", None, "not a readable private key"),
    "truncated PKCS#8 DER": (lambda *_: key_bytes(key("rsa-2048"), DER, PKCS8)[:-40], None, "not a readable"),
    "PRIVATE KEY block with a corrupted body": (
        lambda *_: _corrupt(key_bytes(key("rsa-2048"), PEM, PKCS8)),
        None,
        "not a readable private key",
    ),
}


@pytest.mark.parametrize(("make", "password", "says"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_load_private_key_rejects_without_quoting_the_key(
    openssl_keys: OpensslKeys, pki: Pki, make: Callable[[OpensslKeys, Pki], bytes], password: bytes | None, says: str
) -> None:
    data = make(openssl_keys, pki)
    with pytest.raises(ParseError, match=says) as exc:
        load_private_key(data, password)
    assert_quiet(exc, data)


# -- load_pkcs12 -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pfx(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """PKCS#12 files made by `openssl pkcs12 -export` from the test PKI."""
    folder = tmp_path_factory.mktemp("pfx")
    (folder / "leaf.pem").write_bytes(pem(pki.leaf))
    (folder / "leaf-key.pem").write_bytes(key_bytes(pki.leaf_key, PEM, PKCS8))
    (folder / "cas.pem").write_bytes(pem(pki.root, pki.intermediate))  # root first: the reader must reorder
    rsa_key = key("rsa-2048")
    rsa_leaf = make_cert("rsa-device", rsa_key, issuer=(pki.intermediate, pki.intermediate_key), serial=0x3000)
    (folder / "rsa-leaf.pem").write_bytes(pem(rsa_leaf))
    (folder / "rsa-key.pem").write_bytes(key_bytes(rsa_key, PEM, TRADITIONAL))
    empty, password = "pass:", f"pass:{PFX_PASSWORD}"
    ec_pair, rsa_pair = ("-in", "leaf.pem", "-inkey", "leaf-key.pem"), ("-in", "rsa-leaf.pem", "-inkey", "rsa-key.pem")
    with_cas, no_crypto = ("-certfile", "cas.pem"), ("-keypbe", "NONE", "-certpbe", "NONE", "-nomac")
    steps = {
        "empty-password.pfx": (*ec_pair, "-passout", empty),
        "password.pfx": (*ec_pair, "-passout", password),
        "unencrypted.pfx": (*ec_pair, *no_crypto, "-passout", empty),
        "chain-password.pfx": (*ec_pair, *with_cas, "-passout", password),
        "chain-empty-password.pfx": (*ec_pair, *with_cas, "-passout", empty),
        "rsa-chain.pfx": (*rsa_pair, *with_cas, "-passout", empty),
        "certificates-only.pfx": ("-in", "leaf.pem", "-nokeys", *with_cas, "-passout", empty),
    }
    for out, step in steps.items():
        openssl("pkcs12", "-export", *step, "-out", out, cwd=folder)
    files = {out: (folder / out).read_bytes() for out in steps}
    files["rsa-leaf.der"] = der(rsa_leaf)
    return files


PFX_CASES: dict[str, tuple[str, bytes | None, Callable[[Pki], tuple[x509.Certificate, ...]]]] = {
    # each case, by id: (file, password, expected chain)
    "empty password (Key Vault's form), read with None": ("empty-password.pfx", None, lambda p: (p.leaf,)),
    "empty password, read with b''": ("empty-password.pfx", b"", lambda p: (p.leaf,)),
    "a real password": ("password.pfx", PFX_PASSWORD.encode(), lambda p: (p.leaf,)),
    "no encryption and no MAC": ("unencrypted.pfx", None, lambda p: (p.leaf,)),
    "CA chain via -certfile (root first in the file), comes back leaf first": (
        "chain-password.pfx",
        PFX_PASSWORD.encode(),
        lambda p: (p.leaf, p.intermediate, p.root),
    ),
    "CA chain, empty password": ("chain-empty-password.pfx", None, lambda p: (p.leaf, p.intermediate, p.root)),
}


@pytest.mark.parametrize(("file", "password", "chain"), PFX_CASES.values(), ids=PFX_CASES.keys())
def test_load_pkcs12_reads_openssl_exports(
    pki: Pki,
    pfx: dict[str, bytes],
    file: str,
    password: bytes | None,
    chain: Callable[[Pki], tuple[x509.Certificate, ...]],
) -> None:
    bundle = load_pkcs12(pfx[file], password)
    assert bundle.chain == chain(pki)
    assert bundle.leaf == pki.leaf
    assert isinstance(bundle.key, ec.EllipticCurvePrivateKey)
    assert bundle.key.private_numbers() == pki.leaf_key.private_numbers()


def test_load_pkcs12_reads_an_rsa_export(pki: Pki, pfx: dict[str, bytes]) -> None:
    bundle = load_pkcs12(pfx["rsa-chain.pfx"])
    assert der(bundle.leaf) == pfx["rsa-leaf.der"]
    assert bundle.chain[1:] == (pki.intermediate, pki.root)
    assert isinstance(bundle.key, rsa.RSAPrivateKey)
    assert bundle.key.private_numbers() == key("rsa-2048").private_numbers()


BAD_PFX: dict[str, tuple[Callable[[dict[str, bytes]], bytes], bytes | None, str]] = {
    "only certificates (-nokeys)": (lambda f: f["certificates-only.pfx"], None, "no private key"),
    "wrong password": (lambda f: f["password.pfx"], b"not-the-password", "password"),
    "password needed, none given": (lambda f: f["password.pfx"], None, "password"),
    "a password given for an empty-password file": (lambda f: f["empty-password.pfx"], b"x", "password"),
    "not PKCS#12 at all": (lambda f: f["rsa-leaf.der"], None, "not a readable PKCS#12"),
    "truncated": (lambda f: f["chain-empty-password.pfx"][:-100], None, "not a readable PKCS#12"),
}


@pytest.mark.parametrize(("make", "password", "says"), BAD_PFX.values(), ids=BAD_PFX.keys())
def test_load_pkcs12_rejects(
    pfx: dict[str, bytes], make: Callable[[dict[str, bytes]], bytes], password: bytes | None, says: str
) -> None:
    data = make(pfx)
    with pytest.raises(ParseError, match=says) as exc:
        load_pkcs12(data, password)
    assert_quiet(exc, data)


# -- load_keyvault_secret on real recorded Key Vault responses ---------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """The two responses of a recorded .NET `DownloadLatestCertificate` session this test needs."""

    secret: dict[str, Any]  # GET /secrets/{name}/{version}: a SecretBundle
    certificate: dict[str, Any]  # GET /certificates/{name}/: a CertificateBundle


def read_recording(file: str, content_type: str) -> Recording:
    entries = json.loads((KEYVAULT / file).read_text(encoding="utf-8"))["Entries"]
    gets = [e for e in entries if e["RequestMethod"] == "GET" and e["StatusCode"] == 200]
    secrets = [
        e["ResponseBody"]
        for e in gets
        if "/secrets/" in e["RequestUri"] and e["ResponseBody"].get("contentType") == content_type
    ]
    certificates = [
        e["ResponseBody"] for e in gets if "/certificates/" in e["RequestUri"] and "cer" in e["ResponseBody"]
    ]
    assert len(secrets) == 1, f"{file}: expected one GET /secrets/ response of {content_type}"
    assert certificates, f"{file}: no GET /certificates/ response with a 'cer'"
    return Recording(secret=secrets[0], certificate=certificates[-1])


RECORDINGS = {
    "Key Vault PEM secret (application/x-pem-file)": (
        "net_DownloadLatestCertificate_application-x-pem-file.json",
        "application/x-pem-file",
    ),
    "Key Vault PFX secret (application/x-pkcs12)": (
        "net_DownloadLatestCertificate_application-x-pkcs12.json",
        "application/x-pkcs12",
    ),
}


@pytest.mark.parametrize(("file", "content_type"), RECORDINGS.values(), ids=RECORDINGS.keys())
def test_load_keyvault_secret_reads_the_recorded_service_response(file: str, content_type: str) -> None:
    recorded = read_recording(file, content_type)
    secret, certificate = recorded.secret, recorded.certificate
    assert secret["id"] == certificate["sid"]
    assert secret["kid"] == certificate["kid"]

    bundle = load_keyvault_secret(secret["value"], secret["contentType"])

    assert key_matches_certificate(bundle.key, bundle.leaf)
    assert der(bundle.leaf) == base64.b64decode(certificate["cer"], validate=True)
    assert x5t(bundle.leaf) == certificate["x5t"]
    # what the certificate says agrees with the policy and attributes Key Vault reported for it
    facts = certificate_facts(bundle.leaf)
    policy = certificate["policy"]
    assert facts.subject == policy["x509_props"]["subject"]
    assert facts.key_type == f"{policy['key_props']['kty'].lower()}-{policy['key_props']['key_size']}"
    assert facts.ekus == ("serverAuth", "clientAuth")
    assert policy["x509_props"]["ekus"] == [ExtendedKeyUsageOID.SERVER_AUTH.dotted_string, "1.3.6.1.5.5.7.3.2"]
    assert facts.not_before == datetime.fromtimestamp(certificate["attributes"]["nbf"], UTC)
    assert facts.not_after == datetime.fromtimestamp(certificate["attributes"]["exp"], UTC)
    assert facts.self_signed  # issuer "Self"
    assert facts.is_ca is policy["x509_props"]["basic_constraints"]["ca"]
    # and the install checks accept it at a moment inside its validity, trusting itself
    inside = facts.not_before + facts.lifetime / 2
    assert check_bundle(bundle, Expectations(anchors=(bundle.leaf,), subject="CN=default"), now=inside) == []


def _recorded_value(content_type: str) -> str:
    file, _ = next(v for v in RECORDINGS.values() if v[1] == content_type)
    return str(read_recording(file, content_type).secret["value"])


BAD_SECRETS: dict[str, tuple[Callable[[], str], str | None, str]] = {
    # each case, by id: (value, content type, what the message must say)
    "PEM value with an unknown content type": (
        lambda: _recorded_value("application/x-pem-file"),
        "application/octet-stream",
        "neither 'application/x-pkcs12' nor 'application/x-pem-file'",
    ),
    "PFX value without a content type (a plain secret)": (
        lambda: _recorded_value("application/x-pkcs12"),
        None,
        "not a certificate-backed secret",
    ),
    "PKCS#12 value that is not base64": (lambda: "this is not base64!", "application/x-pkcs12", "not standard base64"),
    "PEM value labelled as PKCS#12": (
        lambda: _recorded_value("application/x-pem-file"),
        "application/x-pkcs12",
        "not standard base64",
    ),
    "base64url PFX labelled as PKCS#12 (Key Vault sends standard base64)": (
        lambda: _recorded_value("application/x-pkcs12").replace("+", "-").replace("/", "_"),
        "application/x-pkcs12",
        "not standard base64",
    ),
    "base64 that is not a PFX": (
        lambda: base64.b64encode(b"plain bytes, no PKCS#12 here").decode(),
        "application/x-pkcs12",
        "not a readable PKCS#12",
    ),
    "PFX value labelled as PEM": (
        lambda: _recorded_value("application/x-pkcs12"),
        "application/x-pem-file",
        "not a readable private key",
    ),
}


@pytest.mark.parametrize(("make", "content_type", "says"), BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_load_keyvault_secret_rejects(make: Callable[[], str], content_type: str | None, says: str) -> None:
    value = make()
    with pytest.raises(ParseError, match=says) as exc:
        load_keyvault_secret(value, content_type)
    assert_quiet(exc, value.encode())
    if len(value) > 64:
        assert value[-60:-20] not in str(exc.value)


def test_base64url_fixture_really_differs_from_the_recorded_value() -> None:
    # guards the case above: the recorded PFX holds '+' or '/', so the base64url rewrite is not a no-op
    value = _recorded_value("application/x-pkcs12")
    assert "+" in value or "/" in value


# -- thumbprints -------------------------------------------------------------------------------------------------


def _openssl_fingerprint(cert: x509.Certificate, digest: str) -> bytes:
    """`openssl x509 -noout -fingerprint -<digest>` as bytes (the hex after '=', colons removed)."""
    out = openssl("x509", "-noout", "-fingerprint", f"-{digest}", stdin=pem(cert).decode())
    label, _, value = out.strip().partition("=")
    assert label.lower() == f"{digest} fingerprint"
    return bytes.fromhex(value.replace(":", ""))


THUMBPRINT_CERTS: dict[str, Callable[[Pki], x509.Certificate]] = {
    "EC device leaf": lambda p: p.leaf,
    "EC root CA": lambda p: p.root,
    "RSA leaf": lambda p: make_cert("rsa-device", key("rsa-2048"), issuer=(p.root, p.root_key)),
    "Key Vault certificate (recorded)": lambda _: x509.load_der_x509_certificate(
        base64.b64decode(
            read_recording(
                "net_DownloadLatestCertificate_application-x-pkcs12.json", "application/x-pkcs12"
            ).certificate["cer"]
        )
    ),
}


@pytest.mark.parametrize("make", THUMBPRINT_CERTS.values(), ids=THUMBPRINT_CERTS.keys())
def test_sha256_thumbprint_matches_openssl(pki: Pki, make: Callable[[Pki], x509.Certificate]) -> None:
    cert = make(pki)
    expected = _openssl_fingerprint(cert, "sha256")
    thumbprint = sha256_thumbprint(cert)
    assert thumbprint == expected.hex().upper()
    assert len(thumbprint) == 64
    assert thumbprint == thumbprint.upper()


@pytest.mark.parametrize("make", THUMBPRINT_CERTS.values(), ids=THUMBPRINT_CERTS.keys())
def test_x5t_is_unpadded_base64url_of_the_openssl_sha1_fingerprint(
    pki: Pki, make: Callable[[Pki], x509.Certificate]
) -> None:
    cert = make(pki)
    sha1 = _openssl_fingerprint(cert, "sha1")
    value = x5t(cert)
    assert value == base64.urlsafe_b64encode(sha1).decode().rstrip("=")
    assert len(value) == 27
    assert not set(value) & set("=+/")
    assert base64.urlsafe_b64decode(value + "=") == sha1


def test_x5t_uses_the_url_safe_alphabet() -> None:
    # about a third of x5t values hold a '-' (or a '_'), so 40 certificates all but surely show both
    issued = [
        make_cert(f"x5t-{n}", key("ec-p256"), serial=n + 1, not_before=NOW, not_after=NOW + DAY) for n in range(40)
    ]
    values = [x5t(c) for c in issued]
    assert any("-" in v for v in values)
    assert any("_" in v for v in values)
    for cert, value in zip(issued, values, strict=True):
        assert base64.urlsafe_b64decode(value + "=") == _sha1_of(cert)


def _sha1_of(cert: x509.Certificate) -> bytes:
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - x5t is defined over SHA-1
    digest.update(der(cert))
    return digest.finalize()


# -- key_matches_certificate -------------------------------------------------------------------------------------

KEY_PAIRS: dict[str, tuple[str, str, bool]] = {
    # each case, by id: (certificate key, key offered, matches)
    "EC P-256 certificate and its key": ("ec-p256", "ec-p256", True),
    "RSA-2048 certificate and its key": ("rsa-2048", "rsa-2048", True),
    "EC P-256 certificate, another P-256 key": ("ec-p256", "ec-p256#2", False),
    "RSA-2048 certificate, another RSA-2048 key": ("rsa-2048", "rsa-2048#2", False),
    "EC certificate, an RSA key": ("ec-p256", "rsa-2048", False),
    "RSA certificate, an EC key": ("rsa-2048", "ec-p256", False),
    "EC P-256 certificate, a P-384 key": ("ec-p256", "ec-p384", False),
}


@pytest.mark.parametrize(("cert_key", "offered", "matches"), KEY_PAIRS.values(), ids=KEY_PAIRS.keys())
def test_key_matches_certificate(cert_key: str, offered: str, matches: bool) -> None:
    cert = make_cert("pair", key(cert_key))
    kind, _, n = offered.partition("#")
    assert key_matches_certificate(key(kind, int(n or 0)), cert) is matches


# -- certificate_facts -------------------------------------------------------------------------------------------


def test_certificate_facts_of_a_device_leaf(pki: Pki) -> None:
    cert = make_cert(
        name("device-7", "Contoso"),
        pki.leaf_key,
        issuer=(pki.intermediate, pki.intermediate_key),
        not_before=NOW - 10 * DAY,
        not_after=NOW + 80 * DAY,
        serial=0xABCDEF0123456789,
        sans=[
            x509.DNSName("device-7.example.net"),
            x509.DNSName("edge.local"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
            x509.IPAddress(ipaddress.ip_address("fd00::7")),
            x509.UniformResourceIdentifier("spiffe://example.net/device-7"),
            x509.RFC822Name("ops@example.net"),
        ],
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, UNKNOWN_EKU],
    )
    facts = certificate_facts(cert)
    assert facts.subject == "CN=device-7,O=Contoso"
    assert facts.common_name == "device-7"
    assert facts.issuer == "CN=Edgecert Test Intermediate"
    assert facts.serial == "abcdef0123456789"
    assert facts.dns_names == ("device-7.example.net", "edge.local")
    assert facts.ip_addresses == ("10.0.0.7", "fd00::7")
    assert facts.uris == ("spiffe://example.net/device-7",)
    assert facts.ekus == ("serverAuth", "clientAuth", "1.3.6.1.4.1.311.99.7")
    assert facts.is_ca is False
    assert facts.path_length is None
    assert facts.self_signed is False
    assert facts.key_type == "ec-p256"
    assert facts.not_before == NOW - 10 * DAY
    assert facts.not_after == NOW + 80 * DAY
    for instant in (facts.not_before, facts.not_after):
        assert instant.tzinfo is not None
        assert instant.utcoffset() == timedelta(0)
    assert facts.lifetime == 90 * DAY
    assert facts.thumbprint_sha256 == sha256_thumbprint(cert)
    assert facts.x5t == x5t(cert)


CA_FACTS: dict[str, tuple[Callable[[Pki], x509.Certificate], bool, int | None, bool]] = {
    # each case, by id: (certificate, is_ca, path_length, self_signed)
    "self-signed root, pathlen 1": (lambda p: p.root, True, 1, True),
    "intermediate, pathlen 0": (lambda p: p.intermediate, True, 0, False),
    "CA without a path length": (lambda p: make_cert("free CA", key("ec-p256"), ca=True), True, None, True),
    "leaf with CA:FALSE": (lambda p: p.leaf, False, None, False),
    "no basicConstraints at all": (lambda p: make_cert("bare", key("ec-p256"), ca=None), False, None, True),
    "self-named but signed by another key": (
        lambda p: make_cert("impostor", key("ec-p256"), issuer=(make_cert("impostor", p.root_key), key("ec-p256", 3))),
        False,
        None,
        False,
    ),
}


@pytest.mark.parametrize(("make", "is_ca", "path_length", "self_signed"), CA_FACTS.values(), ids=CA_FACTS.keys())
def test_certificate_facts_basic_constraints(
    pki: Pki, make: Callable[[Pki], x509.Certificate], is_ca: bool, path_length: int | None, self_signed: bool
) -> None:
    facts = certificate_facts(make(pki))
    assert (facts.is_ca, facts.path_length, facts.self_signed) == (is_ca, path_length, self_signed)


def test_certificate_facts_without_extensions_or_common_name() -> None:
    facts = certificate_facts(make_cert(name(None, "Contoso"), key("ec-p256"), ca=None))
    assert facts.subject == "O=Contoso"
    assert facts.common_name is None
    assert (facts.dns_names, facts.ip_addresses, facts.uris, facts.ekus) == ((), (), (), ())


KEY_TYPE_NAMES: dict[str, tuple[Callable[[], AnyKey], str | None]] = {
    "EC P-256": (lambda: key("ec-p256"), "ec-p256"),
    "EC P-384": (lambda: key("ec-p384"), "ec-p384"),
    "RSA-2048": (lambda: key("rsa-2048"), "rsa-2048"),
    "RSA-3072": (lambda: key("rsa-3072"), "rsa-3072"),
    "RSA-4096": (lambda: key("rsa-4096"), "rsa-4096"),
    "RSA-1024 is not a type edgecert issues": (lambda: key("rsa-1024"), None),
    "EC P-521 is not a type edgecert issues": (lambda: key("ec-p521"), None),
    "Ed25519 is not a type edgecert issues": (lambda: ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32), None),
}


@pytest.mark.parametrize(("make", "expected"), KEY_TYPE_NAMES.values(), ids=KEY_TYPE_NAMES.keys())
def test_certificate_facts_key_type(pki: Pki, make: Callable[[], AnyKey], expected: str | None) -> None:
    cert = make_cert("typed", make(), issuer=(pki.root, pki.root_key))
    assert certificate_facts(cert).key_type == expected


# -- build_chain, order_chain, order_intermediates ---------------------------------------------------------------

ChainInput = tuple[x509.Certificate, list[x509.Certificate], list[x509.Certificate]]


def _not_ca_intermediate(p: Pki, ca: bool | None) -> ChainInput:
    leaf, issuer = p.ca_issued("Edgecert Not A CA", ca=ca)
    return leaf, [issuer], [p.root]


def _under_expired_ca(p: Pki) -> ChainInput:
    leaf, issuer = p.ca_issued("Old CA", ca=True, not_after=NOW - SECOND)
    return leaf, [issuer], [p.root]


def _expired_root(p: Pki) -> x509.Certificate:
    return make_cert("Old Root", p.root_key, ca=True, not_before=NOW - 10 * DAY, not_after=NOW - DAY)


def _usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _edge_ca_under(p: Pki, issuer: x509.Certificate, issuer_key: PrivateKey) -> x509.Certificate:
    return make_cert("Edge CA", p.leaf_key, issuer=(issuer, issuer_key), ca=True, path_length=0, serial=0x3003)


def _under_usage(p: Pki, *, key_cert_sign: bool) -> ChainInput:
    leaf, issuer = p.ca_issued("Edgecert Usage", ca=True, key_usage=_usage(key_cert_sign=key_cert_sign))
    return leaf, [issuer], [p.root]


def _under_tight_root(p: Pki) -> ChainInput:
    # a root with pathlen 0 over an intermediate: no CA may sit between them and the leaf
    root = make_cert("Tight Root", p.root_key, ca=True, path_length=0, serial=0x3001)
    intermediate = make_cert(
        "Tight Intermediate", p.intermediate_key, issuer=(root, p.root_key), ca=True, serial=0x3002
    )
    return make_cert("device-2", p.leaf_key, issuer=(intermediate, p.intermediate_key)), [intermediate], [root]


def _forged_leaf(p: Pki) -> ChainInput:
    forged = make_cert(p.leaf.subject, p.leaf_key, issuer=(p.intermediate, key("ec-p384", 9)), serial=0x6666)
    assert forged.issuer == p.intermediate.subject
    return forged, [p.intermediate], [p.root]


def _forged_intermediate(p: Pki) -> ChainInput:
    # an intermediate with the real one's name and key, claiming the root as issuer but signed by another key
    fake = make_cert(p.intermediate.subject, p.intermediate_key, issuer=(p.root, key("ec-p256", 9)), ca=True)
    return p.leaf, [fake], [p.root]


CHAINS: dict[str, tuple[Callable[[Pki], ChainInput], bool, Callable[[Pki], tuple[x509.Certificate, ...]], str]] = {
    # each case, by id: (leaf, intermediates, anchors; ok; expected path; words the reason must hold)
    "leaf, intermediate, root anchor": (
        lambda p: (p.leaf, [p.intermediate], [p.root]),
        True,
        lambda p: (p.leaf, p.intermediate, p.root),
        "trust anchor",
    ),
    "root also sent among the intermediates": (
        lambda p: (p.leaf, [p.root, p.intermediate], [p.root]),
        True,
        lambda p: (p.leaf, p.intermediate, p.root),
        "trust anchor",
    ),
    "the anchor itself as the leaf": (lambda p: (p.root, [], [p.root]), True, lambda p: (p.root,), "trust anchor"),
    "leaf expiring this very second": (
        lambda p: (p.leaf_issued(not_after=NOW), [p.intermediate], [p.root]),
        True,
        lambda p: (p.leaf_issued(not_after=NOW), p.intermediate, p.root),
        "trust anchor",
    ),
    "leaf valid from this very second": (
        lambda p: (p.leaf_issued(not_before=NOW), [p.intermediate], [p.root]),
        True,
        lambda p: (p.leaf_issued(not_before=NOW), p.intermediate, p.root),
        "trust anchor",
    ),
    "missing intermediate names the issuer": (
        lambda p: (p.leaf, [], [p.root]),
        False,
        lambda p: (p.leaf,),
        "issuer 'CN=Edgecert Test Intermediate'",
    ),
    "anchor is another root": (
        lambda p: (p.leaf, [p.intermediate, p.root], [make_cert("Other Root", key("ec-p256", 7), ca=True)]),
        False,
        lambda p: (p.leaf, p.intermediate, p.root),
        "no issuer for 'CN=Edgecert Test Root'",
    ),
    "no anchors at all": (
        lambda p: (p.leaf, [p.intermediate, p.root], []),
        False,
        lambda p: (p.leaf, p.intermediate, p.root),
        "no issuer",
    ),
    "intermediate with CA:FALSE": (
        lambda p: _not_ca_intermediate(p, False),
        False,
        lambda p: (p.ca_issued("Edgecert Not A CA", ca=False)[0],),
        "'CN=Edgecert Not A CA' is not a CA",
    ),
    "intermediate without basicConstraints": (
        lambda p: _not_ca_intermediate(p, None),
        False,
        lambda p: (p.ca_issued("Edgecert Not A CA", ca=None)[0],),
        "is not a CA",
    ),
    "intermediate expired one second ago": (
        _under_expired_ca,
        False,
        lambda p: p.ca_issued("Old CA", ca=True, not_after=NOW - SECOND),
        "'CN=Old CA' expired at",
    ),
    "leaf expired one second ago": (
        lambda p: (p.leaf_issued(not_after=NOW - SECOND), [p.intermediate], [p.root]),
        False,
        lambda p: (p.leaf_issued(not_after=NOW - SECOND),),
        "expired at 2026-03-01T11:59:59+00:00",
    ),
    "leaf not valid for another second": (
        lambda p: (p.leaf_issued(not_before=NOW + SECOND), [p.intermediate], [p.root]),
        False,
        lambda p: (p.leaf_issued(not_before=NOW + SECOND),),
        "not valid before 2026-03-01T12:00:01+00:00",
    ),
    "expired anchor": (
        lambda p: (_expired_root(p), [], [_expired_root(p)]),
        False,
        lambda p: (_expired_root(p),),
        "'CN=Old Root' expired",
    ),
    "forged leaf: issuer name matches, signature by another key": (
        _forged_leaf,
        False,
        lambda p: (_forged_leaf(p)[0],),
        "no issuer for 'CN=device-1,O=Contoso'",
    ),
    "forged intermediate under the real root": (
        _forged_intermediate,
        False,
        lambda p: (p.leaf, _forged_intermediate(p)[1][0]),
        "no issuer for 'CN=Edgecert Test Intermediate'",
    ),
    "intermediate whose keyUsage lacks keyCertSign": (
        lambda p: _under_usage(p, key_cert_sign=False),
        False,
        lambda p: (_under_usage(p, key_cert_sign=False)[0],),
        "'CN=Edgecert Usage' may not sign certificates (keyUsage without keyCertSign)",
    ),
    "intermediate whose keyUsage has keyCertSign": (
        lambda p: _under_usage(p, key_cert_sign=True),
        True,
        lambda p: (_under_usage(p, key_cert_sign=True)[0], *_under_usage(p, key_cert_sign=True)[1], p.root),
        "trust anchor",
    ),
    "root pathlen 0 over an intermediate": (
        _under_tight_root,
        False,
        lambda p: (_under_tight_root(p)[0], _under_tight_root(p)[1][0]),
        "'CN=Tight Root' allows 0 CA certificate(s) below it (pathLenConstraint) and the chain puts 1 there",
    ),
    "Edge CA under an intermediate with pathlen 0": (
        lambda p: (_edge_ca_under(p, p.intermediate, p.intermediate_key), [p.intermediate], [p.root]),
        False,
        lambda p: (_edge_ca_under(p, p.intermediate, p.intermediate_key),),
        "'CN=Edgecert Test Intermediate' allows 0 CA certificate(s) below it",
    ),
    "Edge CA directly under a root with pathlen 1": (
        lambda p: (_edge_ca_under(p, p.root, p.root_key), [], [p.root]),
        True,
        lambda p: (_edge_ca_under(p, p.root, p.root_key), p.root),
        "trust anchor",
    ),
    "self-signed leaf that is not an anchor": (
        lambda p: (make_cert("lonely", p.leaf_key, ca=False), [], [p.root]),
        False,
        lambda p: (make_cert("lonely", p.leaf_key, ca=False),),
        "no issuer for 'CN=lonely'",
    ),
}


@pytest.mark.parametrize(("make", "ok", "path", "reason"), CHAINS.values(), ids=CHAINS.keys())
def test_build_chain(
    pki: Pki,
    make: Callable[[Pki], ChainInput],
    ok: bool,
    path: Callable[[Pki], tuple[x509.Certificate, ...]],
    reason: str,
) -> None:
    leaf, intermediates, anchors = make(pki)
    result = build_chain(leaf, intermediates, anchors, now=NOW)
    assert result.ok is ok, result.reason
    assert reason in result.reason
    assert result.path == path(pki)


def test_build_chain_stops_at_max_depth(pki: Pki) -> None:
    result = build_chain(pki.leaf, [pki.intermediate], [pki.root], now=NOW, max_depth=2)
    assert not result.ok
    assert "within 2 certificates" in result.reason


CHAIN_ORDERS = list(itertools.permutations(range(3)))


@pytest.mark.parametrize("order", CHAIN_ORDERS, ids=[f"given as {'-'.join(map(str, o))}" for o in CHAIN_ORDERS])
def test_order_chain_puts_a_shuffled_chain_in_issuing_order(pki: Pki, order: tuple[int, ...]) -> None:
    chain = [pki.leaf, pki.intermediate, pki.root]
    shuffled = [chain[i] for i in order]
    assert order_chain(pki.leaf_key, shuffled) == chain
    others = [c for c in shuffled if c is not pki.leaf]
    assert order_intermediates(pki.leaf, others) == [pki.intermediate, pki.root]
    # the same through the PEM bundle reader (Key Vault's x-pem-file form with the blocks in any order)
    bundle = load_pem_bundle(pem(*shuffled[:1]) + key_bytes(pki.leaf_key, PEM, PKCS8) + pem(*shuffled[1:]))
    assert bundle.chain == tuple(chain)


def test_order_intermediates_puts_certificates_off_the_path_last(pki: Pki) -> None:
    stranger = make_cert("Stranger CA", key("ec-p256", 4), ca=True)
    assert order_intermediates(pki.leaf, [stranger, pki.root, pki.intermediate]) == [
        pki.intermediate,
        pki.root,
        stranger,
    ]
    assert order_intermediates(pki.leaf, [stranger]) == [stranger]


def test_order_chain_without_a_matching_certificate(pki: Pki) -> None:
    with pytest.raises(ParseError, match="matches its private key"):
        order_chain(key("ec-p256", 8), [pki.leaf, pki.intermediate])


# -- check_bundle ------------------------------------------------------------------------------------------------


def _expect(p: Pki, *, anchors: bool = True) -> Expectations:
    return Expectations(
        anchors=(p.root,) if anchors else (),
        subject="CN=device-1,O=Contoso",
        key_type="ec-p256",
        is_ca=False,
    )


def _good(p: Pki) -> KeyAndChain:
    return KeyAndChain(key=p.leaf_key, chain=(p.leaf, p.intermediate))


def _with_leaf(p: Pki, leaf: x509.Certificate) -> KeyAndChain:
    return KeyAndChain(key=p.leaf_key, chain=(leaf, p.intermediate))


BUNDLES: dict[str, tuple[Callable[[Pki], KeyAndChain], Callable[[Pki], Expectations], list[str], str]] = {
    # each case, by id: (bundle, expectations, problem kinds in order, words the first message must hold)
    "good bundle": (_good, _expect, [], ""),
    "good bundle expiring this very second": (lambda p: _with_leaf(p, p.leaf_issued(not_after=NOW)), _expect, [], ""),
    "key of another device": (
        lambda p: KeyAndChain(key=key("ec-p256", 6), chain=(p.leaf, p.intermediate)),
        _expect,
        ["key"],
        "does not match",
    ),
    "leaf expired one second ago": (
        lambda p: _with_leaf(p, p.leaf_issued(not_after=NOW - SECOND)),
        lambda p: _expect(p, anchors=False),
        ["validity"],
        "expired at 2026-03-01T11:59:59+00:00",
    ),
    "leaf not valid for another second": (
        lambda p: _with_leaf(p, p.leaf_issued(not_before=NOW + SECOND)),
        lambda p: _expect(p, anchors=False),
        ["validity"],
        "not valid before 2026-03-01T12:00:01+00:00",
    ),
    "expired leaf with anchors: the chain check reports it as well": (
        lambda p: _with_leaf(p, p.leaf_issued(not_after=NOW - SECOND)),
        _expect,
        ["validity", "chain"],
        "expired",
    ),
    "intermediate left out of the bundle": (
        lambda p: KeyAndChain(key=p.leaf_key, chain=(p.leaf,)),
        _expect,
        ["chain"],
        "issuer 'CN=Edgecert Test Intermediate'",
    ),
    "chain to a root the device does not trust": (
        _good,
        lambda p: Expectations(anchors=(make_cert("Other Root", key("ec-p256", 7), ca=True),)),
        ["chain"],
        "no issuer",
    ),
    "another subject": (
        _good,
        lambda p: Expectations(anchors=(p.root,), subject="CN=device-2,O=Contoso"),
        ["shape"],
        "subject is 'CN=device-1,O=Contoso', expected 'CN=device-2,O=Contoso'",
    ),
    "another key type": (
        _good,
        lambda p: Expectations(anchors=(p.root,), key_type="rsa-2048"),
        ["shape"],
        "key type is ec-p256, expected rsa-2048",
    ),
    "a CA certificate where a device certificate belongs": (
        # the intermediate (pathlen 0) has no room for a CA below it either
        lambda p: _with_leaf(p, p.leaf_issued(ca=True)),
        _expect,
        ["chain", "shape"],
        "CA:FALSE",
    ),
    "a device certificate where a CA belongs": (
        _good,
        lambda p: Expectations(anchors=(p.root,), is_ca=True),
        ["shape"],
        "CA:TRUE",
    ),
}


@pytest.mark.parametrize(("make", "expect", "kinds", "says"), BUNDLES.values(), ids=BUNDLES.keys())
def test_check_bundle(
    pki: Pki,
    make: Callable[[Pki], KeyAndChain],
    expect: Callable[[Pki], Expectations],
    kinds: list[str],
    says: str,
) -> None:
    problems = check_bundle(make(pki), expect(pki), now=NOW)
    assert [p.kind for p in problems] == kinds, problems
    if problems:
        assert any(says in problem.message for problem in problems), problems
