"""IoT Hub's authentication rules as pure functions: the MQTT user name, SAS tokens, X.509 certificates.

Every function takes what it judges and the time (`now`, timezone-aware UTC) as arguments and
returns a `Verdict` whose reason is fit for a debug log: it names what failed, never a key, token
or signature. Specification: reference iothub-and-edge.md §1.3 (SAS), §1.5 (CONNECT), §4 (X.509).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "Verdict",
    "check_certificate",
    "check_sas",
    "check_username",
    "common_name",
    "normalize_thumbprint",
    "resource_uri",
    "sign",
    "thumbprint",
]

_SAS_PREFIX = "SharedAccessSignature "


@dataclass(frozen=True)
class Verdict:
    """Whether a credential is accepted, and why (safe to log: no secrets)."""

    accepted: bool
    reason: str


def resource_uri(hostname: str, device_id: str, module_id: str | None = None) -> str:
    """The SAS resource of an identity, not yet URL-encoded: `{hostname}/devices/{d}[/modules/{m}]`."""
    uri = f"{hostname}/devices/{device_id}"
    return f"{uri}/modules/{module_id}" if module_id else uri


def sign(key: str, message: bytes) -> str:
    """Base64 HMAC-SHA256 of `message` under a base64 key: a SAS `sig`, or a workload API digest."""
    digest = hmac.new(base64.b64decode(key), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def check_username(username: str | None, *, hostname: str, client_id: str) -> Verdict:
    """The user name is `{hostname}/{clientId}/?api-version=...` (reference §1.5)."""
    if username is None:
        return Verdict(accepted=False, reason="no user name")
    # Host names are case-insensitive (RFC 4343); device and module ids are not.
    host, _, rest = username.partition("/")
    if host.lower() != hostname.lower() or not rest.startswith(f"{client_id}/?"):
        return Verdict(accepted=False, reason=f"user name does not start with {hostname}/{client_id}/?")
    query = rest[len(client_id) + 2 :]
    if not any(part.startswith("api-version=") for part in query.split("&")):
        return Verdict(accepted=False, reason="user name has no api-version")
    return Verdict(accepted=True, reason="user name")


def check_sas(token: str, *, resource: str, keys: Iterable[str], now: datetime) -> Verdict:
    """A device or module SAS token: `sr` is this identity, `se` is in the future, `sig` is one key's HMAC."""
    if not token.startswith(_SAS_PREFIX):
        return Verdict(accepted=False, reason="the password is not a SharedAccessSignature")
    fields: dict[str, str] = {}
    for part in token[len(_SAS_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            return Verdict(accepted=False, reason="the SAS token is malformed")
        fields[name] = value
    if "skn" in fields:
        return Verdict(accepted=False, reason="shared access policy tokens (skn) are not emulated")
    if not {"sr", "sig", "se"} <= fields.keys():
        return Verdict(accepted=False, reason="the SAS token lacks sr, sig or se")
    if unquote(fields["sr"]) != resource:
        return Verdict(accepted=False, reason=f"the SAS token is for another resource, not {quote(resource, safe='')}")
    try:
        expiry = int(fields["se"])
    except ValueError:
        return Verdict(accepted=False, reason="the SAS expiry is not a number")
    if expiry <= now.timestamp():
        return Verdict(accepted=False, reason="the SAS token has expired")
    try:
        given = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        return Verdict(accepted=False, reason="the SAS signature is not base64")
    to_sign = f"{fields['sr']}\n{fields['se']}".encode()
    for key in keys:
        if hmac.compare_digest(base64.b64decode(sign(key, to_sign)), given):
            return Verdict(accepted=True, reason="SAS token")
    return Verdict(accepted=False, reason="the SAS signature does not match the identity's keys")


def thumbprint(der: bytes) -> str:
    """SHA-256 of a DER certificate in upper-case hex: IoT Hub's X.509 thumbprint."""
    return hashlib.sha256(der).hexdigest().upper()


def normalize_thumbprint(text: str) -> str:
    """Upper-case hex without separators; `ValueError` unless it is a SHA-256 thumbprint."""
    cleaned = text.replace(":", "").replace(" ", "").upper()
    if len(cleaned) != 64 or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise ValueError(f"{text!r} is not a SHA-256 thumbprint (64 hex digits)")
    return cleaned


def _ca_flag(_policy: Policy, _cert: x509.Certificate, constraints: x509.BasicConstraints) -> None:
    if not constraints.ca:
        raise ValueError("basicConstraints does not say CA")


# IoT Hub does not hold device certificates to the Web PKI profile (no SAN, EKU or AKI needed);
# an issuer must still be a CA.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _ca_flag)
_LEAF_POLICY = ExtensionPolicy.permit_all()


def common_name(cert: x509.Certificate) -> str | None:
    """The certificate's subject CN, if it has exactly one."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_certificate(
    chain: Sequence[bytes],
    *,
    client_id: str,
    cas: Sequence[x509.Certificate],
    thumbprints: Iterable[str],
    now: datetime,
) -> Verdict:
    """An X.509 client: a registered thumbprint (self-signed), or a chain to a registered CA with CN = client id."""
    if not chain:
        return Verdict(accepted=False, reason="no client certificate and no password")
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return Verdict(accepted=False, reason="the client certificate cannot be read")
    leaf = certs[0]
    if thumbprint(chain[0]) in set(thumbprints):
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return Verdict(accepted=False, reason="the thumbprint matches but the certificate is not valid now")
        return Verdict(accepted=True, reason="registered thumbprint")
    if not cas:
        return Verdict(accepted=False, reason="the thumbprint is not registered and no CA is")
    verifier = (
        PolicyBuilder()
        .store(Store(list(cas)))
        .time(now)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, certs[1:])
    except VerificationError as exc:
        return Verdict(accepted=False, reason=f"the thumbprint is not registered and the chain does not verify: {exc}")
    name = common_name(leaf)
    if name != client_id:
        return Verdict(accepted=False, reason=f"the certificate's CN {name!r} is not the client id {client_id!r}")
    return Verdict(accepted=True, reason="certificate from a registered CA")
