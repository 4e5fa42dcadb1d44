"""The objects of one emulated vault and what the REST operations do to them.

Certificates, their pending operations, keys and secrets, with the REST shapes of reference
keyvault-and-identity.md §2: ids with the vault's exact scheme://host:port, Unix-second timestamps,
std-base64 `cer`/`csr`/`x5c`, base64url `x5t`, and certificate-backed secrets (`managed: true`, PEM
or PFX per the policy's content type, `kid`). A certificate version has a key and a secret of the
same name and version. Methods raise `VaultError` with the service's error code and message; the
HTTP layer turns it into the real error envelope.
"""

from __future__ import annotations

import base64
import calendar
import copy
import ipaddress
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgecert.core.certinfo import KeyAndChain, ParseError, PrivateKey, load_pem_bundle, load_pkcs12, x5t
from edgecert.crypto import key_to_pem, signature_hash

__all__ = ["ISSUER_SANDBOX", "VaultError", "VaultObjects", "VaultSettings"]

ISSUER_SELF = "self"
ISSUER_UNKNOWN = "unknown"
#: The issuer name of the sandbox's own CA (the stand-in for an integrated CA such as DigiCert).
ISSUER_SANDBOX = "Sandbox"
PFX = "application/x-pkcs12"
PEM = "application/x-pem-file"
_RECOVERY = {"recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}
_EKU_NAMES = {
    "1.3.6.1.5.5.7.3.1": ExtendedKeyUsageOID.SERVER_AUTH,
    "1.3.6.1.5.5.7.3.2": ExtendedKeyUsageOID.CLIENT_AUTH,
}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
    "PS256": hashes.SHA256(),
    "PS384": hashes.SHA384(),
    "PS512": hashes.SHA512(),
    "ES256": hashes.SHA256(),
    "ES384": hashes.SHA384(),
    "ES512": hashes.SHA512(),
}
_NOT_FOUND = (
    "A {kind} with (name/id) {name} was not found in this key vault. If you recently deleted this {kind} you may "
    "be able to recover it using the correct recovery command. For help resolving this issue, please see "
    "https://go.microsoft.com/fwlink/?linkid=2125182"
)


class VaultError(Exception):
    """A REST failure: HTTP status, error code, message and optional inner code."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner

    def body(self) -> dict[str, Any]:
        """The Key Vault error envelope."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


def bad(message: str) -> VaultError:
    """400 BadParameter."""
    return VaultError(400, "BadParameter", message)


@dataclass
class VaultSettings:
    """Behaviour switches of one vault (the unconfirmed parts of the service are choices here)."""

    #: Seconds a Self/Sandbox-issued certificate stays `inProgress` before it completes.
    completion_delay: float = 0.0
    #: What the secret of a certificate with a non-exportable key holds: "chain" (certificates only)
    #: or "forbidden" (403 on get). Unconfirmed for the real service.
    non_exportable_secret: str = "chain"  # noqa: S105 - a mode name, not a password
    #: Lifetime of issued certificates in seconds instead of validity_months (sandbox demos renew fast).
    lifetime_seconds: int | None = None
    #: How far notBefore is set back from the issuing instant (the real service: 10 minutes).
    backdate_seconds: int = 600


@dataclass
class Attributes:
    """The `attributes` of a version (Unix seconds)."""

    created: int
    updated: int
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None

    def rest(self, *, recovery: bool = True) -> dict[str, Any]:
        """The REST form."""
        data: dict[str, Any] = {"enabled": self.enabled}
        if self.nbf is not None:
            data["nbf"] = self.nbf
        if self.exp is not None:
            data["exp"] = self.exp
        data.update(created=self.created, updated=self.updated)
        if recovery:
            data.update(_RECOVERY)
        return data


@dataclass
class KeyVersion:
    """One version of a key: the private key never leaves unless the key is exportable."""

    name: str
    version: str
    key: PrivateKey
    kty: str
    key_ops: list[str]
    exportable: bool
    managed: bool
    attributes: Attributes
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class SecretVersion:
    """One version of a secret."""

    name: str
    version: str
    value: str
    content_type: str | None
    attributes: Attributes
    managed: bool = False
    kid: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class CertVersion:
    """One version of a certificate (its key and secret share name and version)."""

    name: str
    version: str
    chain: tuple[x509.Certificate, ...]
    attributes: Attributes
    policy: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Pending:
    """A certificate operation: create in progress, waiting for merge, completed or failed."""

    name: str
    request_id: str
    issuer: str
    key: PrivateKey
    csr: x509.CertificateSigningRequest
    policy: dict[str, Any]
    ready_at: float
    status: str = "inProgress"
    target_version: str | None = None
    error: dict[str, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


class VaultObjects:
    """The certificates, keys and secrets of one vault, and the operations on them (thread-safe)."""

    def __init__(
        self,
        url: str,
        issuing_ca: tuple[x509.Certificate, PrivateKey],
        *,
        now: Callable[[], datetime],
        settings: VaultSettings | None = None,
    ) -> None:
        self.url = url
        self._ca_cert, self._ca_key = issuing_ca
        self._now = now
        self.settings = settings or VaultSettings()
        self._lock = threading.RLock()
        self.certificates: dict[str, list[CertVersion]] = {}
        self.keys: dict[str, list[KeyVersion]] = {}
        self.secrets: dict[str, list[SecretVersion]] = {}
        self.pending: dict[str, Pending] = {}

    # -- ids and time ----------------------------------------------------------------------------

    def _id(self, collection: str, name: str, version: str | None = None) -> str:
        return f"{self.url}/{collection}/{name}" + (f"/{version}" if version else "")

    def _stamp(self) -> int:
        return int(self._now().timestamp())

    # -- certificates ----------------------------------------------------------------------------

    def create_certificate(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /certificates/{n}/create: start a pending operation (202)."""
        with self._lock:
            policy = self._policy(name, body.get("policy"))
            key = self._certificate_key(name, policy)
            csr = _csr(key, policy)
            issuer = str(policy["issuer"]["name"])
            attributes = body.get("attributes") or {}
            pending = Pending(
                name=name,
                request_id=uuid.uuid4().hex,
                issuer=issuer,
                key=key,
                csr=csr,
                policy=policy,
                ready_at=self._now().timestamp() + self.settings.completion_delay,
                tags=dict(body.get("tags") or {}),
                enabled=bool(attributes.get("enabled", True)),
            )
            self.pending[name] = pending
            return self._operation(pending)

    def fail_pending(self, name: str, code: str, message: str) -> None:
        """Make the pending operation of `name` fail (fault injection: the issuer rejected it)."""
        with self._lock:
            pending = self._pending(name)
            pending.status, pending.error = "failed", {"code": code, "message": message}

    def get_operation(self, name: str) -> dict[str, Any]:
        """GET /certificates/{n}/pending."""
        with self._lock:
            pending = self._pending(name)
            self._settle(pending)
            return self._operation(pending)

    def merge(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /certificates/{n}/pending/merge: complete an Unknown-issuer operation (201)."""
        with self._lock:
            pending = self._pending(name)
            if pending.status != "inProgress" or pending.issuer.lower() != ISSUER_UNKNOWN:
                raise bad(f"Pending certificate not found for certificate {name}, or it cannot be merged")
            try:
                chain = tuple(x509.load_der_x509_certificate(base64.b64decode(item)) for item in body["x5c"])
            except (KeyError, TypeError, ValueError):
                raise bad("Property x5c must hold standard base64 DER certificates") from None
            if not chain or chain[0].public_key().public_bytes(*_SPKI) != pending.key.public_key().public_bytes(*_SPKI):
                raise bad("Public key from x5c property value did not match with the one in pending request")
            version = self._add_version(pending, chain)
            pending.status, pending.target_version = "completed", version.version
            return self._certificate(version)

    def get_certificate(self, name: str, version: str | None) -> dict[str, Any]:
        """GET /certificates/{n}/ or /certificates/{n}/{v}."""
        with self._lock:
            if name in self.pending:
                self._settle(self.pending[name])
            return self._certificate(self._cert_version(name, version))

    def certificate_versions(self, name: str) -> dict[str, Any]:
        """GET /certificates/{n}/versions (one page)."""
        with self._lock:
            if name in self.pending:
                self._settle(self.pending[name])
            versions = self.certificates.get(name)
            if not versions:
                raise _not_found("certificate", name)
            items = [
                {
                    "id": self._id("certificates", name, v.version),
                    "x5t": x5t(v.chain[0]),
                    "attributes": v.attributes.rest(),
                    "tags": v.tags,
                }
                for v in versions
            ]
            return {"value": items, "nextLink": None}

    def certificate_policy(self, name: str) -> dict[str, Any]:
        """GET /certificates/{n}/policy."""
        with self._lock:
            return self._rest_policy(name, self._cert_version(name, None).policy)

    def update_certificate(self, name: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH /certificates/{n}/ or /{v}: enabled flag and tags."""
        with self._lock:
            target = self._cert_version(name, version)
            attributes = body.get("attributes") or {}
            if "enabled" in attributes:
                target.attributes.enabled = bool(attributes["enabled"])
                for kind in (self.keys, self.secrets):
                    for other in kind.get(name, []):
                        if other.version == target.version:
                            other.attributes.enabled = target.attributes.enabled
            if body.get("tags") is not None:
                target.tags = dict(body["tags"])
            if body.get("policy"):
                target.policy = self._policy(name, body["policy"])
            target.attributes.updated = self._stamp()
            return self._certificate(target)

    def import_certificate(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /certificates/{n}/import: a PFX or PEM bundle with its key."""
        with self._lock:
            try:
                raw = base64.b64decode(body["value"])
            except (KeyError, TypeError, ValueError):
                raise bad("Property value must hold the standard base64 of a PFX or PEM file") from None
            try:
                if b"-----BEGIN" in raw:
                    bundle = load_pem_bundle(raw)
                    content_type = PEM
                else:
                    password = body.get("pwd")
                    bundle = load_pkcs12(raw, password.encode() if password else None)
                    content_type = PFX
            except ParseError as exc:
                raise bad(f"The specified PEM X.509 certificate content is in an unexpected format: {exc}") from None
            given = body.get("policy") or {}
            derived = _policy_of(bundle)
            merged = {**derived, **given, "issuer": {"name": "Unknown"}}
            for part in ("key_props", "x509_props"):  # the key's own type and size win over the request's
                merged[part] = {**(given.get(part) or {}), **derived[part]}
                if part == "key_props" and "exportable" in (given.get(part) or {}):
                    merged[part]["exportable"] = given[part]["exportable"]
            policy = self._policy(name, merged)
            policy["secret_props"] = given.get("secret_props") or {"contentType": content_type}
            attributes = body.get("attributes") or {}
            pending = Pending(
                name=name,
                request_id=uuid.uuid4().hex,
                issuer="Unknown",
                key=bundle.key,
                csr=_csr(bundle.key, policy),
                policy=policy,
                ready_at=0,
                tags=dict(body.get("tags") or {}),
                enabled=bool(attributes.get("enabled", True)),
            )
            return self._certificate(self._add_version(pending, bundle.chain))

    # -- secrets ---------------------------------------------------------------------------------

    def get_secret(self, name: str, version: str | None, out_content_type: str | None) -> dict[str, Any]:
        """GET /secrets/{n}/ or /secrets/{n}/{v} (optionally converted with outContentType)."""
        with self._lock:
            if name in self.pending:
                self._settle(self.pending[name])
            secret = self._version(self.secrets, "secret", name, version)
            if not secret.attributes.enabled:
                raise VaultError(
                    403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
                )
            if secret.value == "" and secret.managed:
                raise VaultError(
                    403, "Forbidden", "The private key of this certificate is not exportable.", "KeyNotExportable"
                )
            value, content_type = secret.value, secret.content_type
            if out_content_type and secret.managed and out_content_type != content_type:
                value, content_type = _convert(value, content_type, out_content_type), out_content_type
            body: dict[str, Any] = {
                "value": value,
                "contentType": content_type,
                "id": self._id("secrets", name, secret.version),
                "attributes": secret.attributes.rest(),
                "tags": secret.tags,
            }
            if secret.managed:
                body.update(managed=True, kid=secret.kid)
            return body

    def set_secret(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /secrets/{n}: a new version."""
        with self._lock:
            if not isinstance(body.get("value"), str):
                raise bad("Property value is required and must be a string")
            if self.certificates.get(name):
                raise VaultError(
                    409, "Conflict", f"Secret {name} is managed by a certificate and cannot be set", "Conflict"
                )
            stamp = self._stamp()
            attributes = body.get("attributes") or {}
            secret = SecretVersion(
                name=name,
                version=uuid.uuid4().hex,
                value=body["value"],
                content_type=body.get("contentType"),
                attributes=Attributes(stamp, stamp, bool(attributes.get("enabled", True))),
                tags=dict(body.get("tags") or {}),
            )
            self.secrets.setdefault(name, []).append(secret)
            return {
                "value": secret.value,
                "contentType": secret.content_type,
                "id": self._id("secrets", name, secret.version),
                "attributes": secret.attributes.rest(),
                "tags": secret.tags,
            }

    def secret_versions(self, name: str) -> dict[str, Any]:
        """GET /secrets/{n}/versions (one page, no values)."""
        with self._lock:
            versions = self.secrets.get(name)
            if not versions:
                raise _not_found("secret", name)
            items = [
                {
                    "id": self._id("secrets", name, v.version),
                    "contentType": v.content_type,
                    "attributes": v.attributes.rest(),
                    "tags": v.tags,
                    **({"managed": True} if v.managed else {}),
                }
                for v in versions
            ]
            return {"value": items, "nextLink": None}

    # -- keys ------------------------------------------------------------------------------------

    def create_key(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/{n}/create."""
        with self._lock:
            kty = str(body.get("kty", ""))
            key = _generate(kty, body.get("key_size"), body.get("crv"))
            stamp = self._stamp()
            attributes = body.get("attributes") or {}
            version = KeyVersion(
                name=name,
                version=uuid.uuid4().hex,
                key=key,
                kty=kty,
                key_ops=list(body.get("key_ops") or _default_ops(kty)),
                exportable=bool(attributes.get("exportable", False)),
                managed=False,
                attributes=Attributes(stamp, stamp, bool(attributes.get("enabled", True))),
                tags=dict(body.get("tags") or {}),
            )
            self.keys.setdefault(name, []).append(version)
            return self._key(version)

    def get_key(self, name: str, version: str | None) -> dict[str, Any]:
        """GET /keys/{n}/ or /keys/{n}/{v}: the public JWK."""
        with self._lock:
            if name in self.pending:
                self._settle(self.pending[name])
            return self._key(self._version(self.keys, "key", name, version))

    def key_versions(self, name: str) -> dict[str, Any]:
        """GET /keys/{n}/versions."""
        with self._lock:
            versions = self.keys.get(name)
            if not versions:
                raise _not_found("key", name)
            items = [
                {"kid": self._id("keys", name, v.version), "attributes": v.attributes.rest(), "tags": v.tags}
                for v in versions
            ]
            return {"value": items, "nextLink": None}

    def key_info(self, name: str, version: str | None) -> KeyVersion | None:
        """The key version a request names, if it exists (for throttling by key type)."""
        with self._lock:
            try:
                return self._version(self.keys, "key", name, version)
            except VaultError:
                return None

    def sign(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/{n}/{v}/sign: sign a digest (EC signatures as raw r||s, PSS salt = digest length)."""
        with self._lock:
            target = self._usable_key(name, version, "sign")
            alg, digest = _alg_and_digest(body, "value")
            signature = _sign(target.key, alg, digest)
            return {"kid": self._id("keys", name, target.version), "value": _b64url(signature)}

    def verify(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /keys/{n}/{v}/verify."""
        with self._lock:
            target = self._usable_key(name, version, "verify")
            alg, digest = _alg_and_digest(body, "digest")
            try:
                signature = _unb64url(str(body["value"]))
            except (KeyError, ValueError):
                raise bad("Property value must be a base64url signature") from None
            return {"value": _verify(target.key, alg, digest, signature)}

    # -- internals -------------------------------------------------------------------------------

    def _pending(self, name: str) -> Pending:
        pending = self.pending.get(name)
        if pending is None:
            raise VaultError(404, "PendingCertificateNotFound", f"Pending certificate not found: {name}")
        return pending

    def _settle(self, pending: Pending) -> None:
        """Finish a Self or Sandbox issuance once its completion delay has passed."""
        if pending.status != "inProgress" or pending.issuer.lower() == ISSUER_UNKNOWN:
            return
        if self._now().timestamp() < pending.ready_at:
            return
        if pending.issuer.lower() == ISSUER_SELF:
            certificate = _issue(
                pending.csr, pending.key, issuer=None, policy=pending.policy, now=self._now(), settings=self.settings
            )
            chain: tuple[x509.Certificate, ...] = (certificate,)
        elif pending.issuer == ISSUER_SANDBOX:
            issued = _issue(
                pending.csr,
                self._ca_key,
                issuer=self._ca_cert,
                policy=pending.policy,
                now=self._now(),
                settings=self.settings,
            )
            chain = (issued, self._ca_cert)
        else:
            pending.status = "failed"
            pending.error = {"code": "Unknown issuer", "message": f"Issuer {pending.issuer} is not configured"}
            return
        version = self._add_version(pending, chain)
        pending.status, pending.target_version = "completed", version.version

    def _add_version(self, pending: Pending, chain: tuple[x509.Certificate, ...]) -> CertVersion:
        name, policy = pending.name, pending.policy
        version_id = uuid.uuid4().hex
        stamp = self._stamp()
        leaf = chain[0]

        def attributes() -> Attributes:
            return Attributes(
                stamp,
                stamp,
                pending.enabled,
                int(leaf.not_valid_before_utc.timestamp()),
                int(leaf.not_valid_after_utc.timestamp()),
            )

        key_props = policy["key_props"]
        exportable = bool(key_props.get("exportable", True))
        kty = str(key_props.get("kty", "RSA"))
        kid = self._id("keys", name, version_id)
        self.keys.setdefault(name, []).append(
            KeyVersion(
                name,
                version_id,
                pending.key,
                kty,
                _default_ops(kty),
                exportable=exportable,
                managed=True,
                attributes=attributes(),
            )
        )
        content_type = str(policy["secret_props"].get("contentType", PFX))
        if exportable:
            value = _secret_value(KeyAndChain(pending.key, chain), content_type)
        elif self.settings.non_exportable_secret == "chain":  # noqa: S105 - a mode name
            value = _chain_value(chain, content_type)
        else:
            value = ""
        self.secrets.setdefault(name, []).append(
            SecretVersion(name, version_id, value, content_type, attributes(), managed=True, kid=kid)
        )
        version = CertVersion(name, version_id, chain, attributes(), policy, dict(pending.tags))
        self.certificates.setdefault(name, []).append(version)
        return version

    def _operation(self, pending: Pending) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self._id("certificates", pending.name, "pending"),
            "issuer": {"name": pending.issuer},
            "csr": base64.b64encode(pending.csr.public_bytes(serialization.Encoding.DER)).decode(),
            "cancellation_requested": False,
            "status": pending.status,
        }
        if pending.status == "inProgress":
            body["status_details"] = (
                "Pending certificate created. Please Perform Merge to complete the request."
                if pending.issuer.lower() == ISSUER_UNKNOWN
                else "Pending certificate created. Certificate request is in progress. This may take some time "
                "based on the issuer provider. Please check again later."
            )
        elif pending.status == "completed":
            body["target"] = self._id("certificates", pending.name)
        elif pending.error is not None:
            body["status_details"] = pending.error["message"]
            body["error"] = dict(pending.error)
        body["request_id"] = pending.request_id
        return body

    def _certificate(self, version: CertVersion) -> dict[str, Any]:
        name = version.name
        return {
            "id": self._id("certificates", name, version.version),
            "kid": self._id("keys", name, version.version),
            "sid": self._id("secrets", name, version.version),
            "x5t": x5t(version.chain[0]),
            "cer": base64.b64encode(version.chain[0].public_bytes(serialization.Encoding.DER)).decode(),
            "attributes": version.attributes.rest(),
            "tags": version.tags,
            "policy": self._rest_policy(name, version.policy),
            "pending": {"id": self._id("certificates", name, "pending")},
        }

    def _key(self, version: KeyVersion) -> dict[str, Any]:
        jwk = _jwk(version.key)
        jwk.update(kid=self._id("keys", version.name, version.version), kty=version.kty, key_ops=version.key_ops)
        body: dict[str, Any] = {"key": jwk, "attributes": version.attributes.rest(), "tags": version.tags}
        if version.managed:
            body["managed"] = True
        return body

    def _rest_policy(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        rest = copy.deepcopy(policy)
        rest["id"] = self._id("certificates", name, "policy")
        return rest

    def _cert_version(self, name: str, version: str | None) -> CertVersion:
        return self._version(self.certificates, "certificate", name, version)

    def _version(self, store: dict[str, list[_V]], kind: str, name: str, version: str | None) -> _V:
        versions = store.get(name) or []
        if not version:
            if versions:
                return versions[-1]
            raise _not_found(kind, name)
        found = next((v for v in versions if v.version == version), None)
        if found is None:
            raise _not_found(kind, f"{name}/{version}")
        return found

    def _usable_key(self, name: str, version: str, operation: str) -> KeyVersion:
        target = self._version(self.keys, "key", name, version or None)
        if not target.attributes.enabled:
            raise VaultError(
                403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled"
            )
        if operation not in target.key_ops:
            raise VaultError(
                403, "Forbidden", f"Operation {operation} is not permitted on this key.", "KeyOperationForbidden"
            )
        return target

    def _certificate_key(self, name: str, policy: dict[str, Any]) -> PrivateKey:
        props = policy["key_props"]
        existing = self.keys.get(name)
        if props.get("reuse_key") and existing:
            return existing[-1].key
        return _generate(str(props.get("kty", "RSA")), props.get("key_size"), props.get("crv"))

    def _policy(self, name: str, given: dict[str, Any] | None) -> dict[str, Any]:
        """A full policy: the request's, or the current one, with the service's defaults filled in."""
        if not given:
            current = self.certificates.get(name)
            if not current:
                raise bad("Property policy is required when the certificate does not exist yet")
            return copy.deepcopy(current[-1].policy)
        policy = copy.deepcopy(given)
        x509_props = policy.setdefault("x509_props", {})
        if not x509_props.get("subject") and not any((x509_props.get("sans") or {}).values()):
            raise bad("The policy must have a subject or at least one subject alternative name")
        key_props = policy.setdefault("key_props", {})
        key_props.setdefault("exportable", True)
        kty = key_props.setdefault("kty", "RSA")
        if kty not in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
            raise bad(f"Invalid key type {kty}")
        if kty.startswith("RSA"):
            key_props.setdefault("key_size", 2048)
            if key_props["key_size"] not in (2048, 3072, 4096):
                raise bad(f"Invalid key size {key_props['key_size']}")
        else:
            key_props.setdefault("crv", "P-256")
            if key_props["crv"] not in _CURVES:
                raise bad(f"Invalid curve {key_props['crv']}")
        key_props.setdefault("reuse_key", False)
        policy.setdefault("secret_props", {}).setdefault("contentType", PFX)
        if policy["secret_props"]["contentType"] not in (PFX, PEM):
            raise bad(f"Invalid content type {policy['secret_props']['contentType']}")
        x509_props.setdefault("sans", {})
        x509_props.setdefault("ekus", ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"])
        x509_props.setdefault("key_usage", ["digitalSignature", "keyEncipherment"])
        x509_props.setdefault("validity_months", 12)
        x509_props.setdefault("basic_constraints", {"ca": False})
        issuer = policy.setdefault("issuer", {})
        issuer.setdefault("name", "Self")
        issuer.setdefault("cert_transparency", False)
        action = "EmailContacts" if str(issuer["name"]).lower() == ISSUER_UNKNOWN else "AutoRenew"
        policy.setdefault(
            "lifetime_actions", [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": action}}]
        )
        stamp = self._stamp()
        policy["attributes"] = {"enabled": True, "created": stamp, "updated": stamp}
        return policy


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_V = TypeVar("_V", CertVersion, KeyVersion, SecretVersion)


def _not_found(kind: str, name: str) -> VaultError:
    code = {"certificate": "CertificateNotFound", "secret": "SecretNotFound", "key": "KeyNotFound"}[kind]
    return VaultError(404, code, _NOT_FOUND.format(kind=kind, name=name))


def _generate(kty: str, key_size: object, crv: object) -> PrivateKey:
    if kty.startswith("RSA"):
        size = int(key_size) if isinstance(key_size, int) else 2048
        if size not in (2048, 3072, 4096):
            raise bad(f"Invalid key size {size}")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if kty.startswith("EC"):
        curve = _CURVES.get(str(crv or "P-256"))
        if curve is None:
            raise bad(f"Invalid curve {crv}")
        return ec.generate_private_key(curve)
    raise bad(f"Invalid key type {kty!r}; use RSA, RSA-HSM, EC or EC-HSM")


def _default_ops(kty: str) -> list[str]:
    if kty.startswith("EC"):
        return ["sign", "verify"]
    return ["sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"]


def _csr(key: PrivateKey, policy: dict[str, Any]) -> x509.CertificateSigningRequest:
    props = policy.get("x509_props") or {}
    subject = props.get("subject") or ""
    try:
        name = x509.Name.from_rfc4514_string(subject) if subject else x509.Name([])
    except ValueError:
        raise bad(f"The subject name {subject!r} is not a valid X500 name") from None
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    sans = _sans(props.get("sans") or {})
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, signature_hash(key))


def _sans(sans: dict[str, Any]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.get("dns_names") or []]
    found += [x509.RFC822Name(e) for e in sans.get("emails") or []]
    found += [x509.UniformResourceIdentifier(u) for u in sans.get("uris") or []]
    found += [
        x509.IPAddress(ipaddress.ip_address(i)) for i in sans.get("ipAddresses") or sans.get("ip_addresses") or []
    ]
    return found


def _issue(
    csr: x509.CertificateSigningRequest,
    signer: PrivateKey,
    *,
    issuer: x509.Certificate | None,
    policy: dict[str, Any],
    now: datetime,
    settings: VaultSettings,
) -> x509.Certificate:
    props = policy.get("x509_props") or {}
    start = now.replace(microsecond=0) - timedelta(seconds=settings.backdate_seconds)  # as the service does
    if settings.lifetime_seconds is not None:
        end = now.replace(microsecond=0) + timedelta(seconds=settings.lifetime_seconds)
    else:
        end = _add_months(now.replace(microsecond=0), int(props.get("validity_months", 12)))
    public = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuer.subject if issuer is not None else csr.subject)
        .public_key(public)
        .serial_number(uuid.uuid4().int >> 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    ca = bool((props.get("basic_constraints") or {}).get("ca", False))
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    ekus = [_EKU_NAMES.get(o, x509.ObjectIdentifier(o)) for o in props.get("ekus") or []]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if issuer is not None:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    for extension in csr.extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(extension.value, critical=False)
    return builder.sign(signer, signature_hash(signer))


def _add_months(start: datetime, months: int) -> datetime:
    """Calendar months later, on the same day or the month's last day (validity_months)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))


def _secret_value(bundle: KeyAndChain, content_type: str) -> str:
    if content_type == PEM:
        certs = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.chain)
        return (key_to_pem(bundle.key) + certs).decode()
    pfx = pkcs12.serialize_key_and_certificates(
        None, bundle.key, bundle.chain[0], list(bundle.chain[1:]) or None, serialization.NoEncryption()
    )
    return base64.b64encode(pfx).decode()


def _chain_value(chain: tuple[x509.Certificate, ...], content_type: str) -> str:
    if content_type == PEM:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain).decode()
    pfx = pkcs12.serialize_java_truststore(
        [pkcs12.PKCS12Certificate(c, None) for c in chain], serialization.NoEncryption()
    )
    return base64.b64encode(pfx).decode()


def _convert(value: str, content_type: str | None, wanted: str) -> str:
    try:
        bundle = load_pkcs12(base64.b64decode(value)) if content_type == PFX else load_pem_bundle(value.encode())
    except ParseError:
        raise bad(f"The secret cannot be converted to {wanted}") from None
    return _secret_value(bundle, wanted)


def _policy_of(bundle: KeyAndChain) -> dict[str, Any]:
    leaf = bundle.leaf
    key = bundle.key
    key_props: dict[str, Any] = {"exportable": True, "reuse_key": False}
    if isinstance(key, rsa.RSAPrivateKey):
        key_props.update(kty="RSA", key_size=key.key_size)
    else:
        key_props.update(kty="EC", crv={"secp256r1": "P-256", "secp384r1": "P-384"}.get(key.curve.name, "P-521"))
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return {
        "key_props": key_props,
        "x509_props": {
            "subject": leaf.subject.rfc4514_string(),
            "validity_months": max(1, round(validity.days / 30)),
        },
    }


def _jwk(key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"n": _b64url(_int_bytes(numbers.n)), "e": _b64url(_int_bytes(numbers.e))}
    public = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    return {"crv": crv, "x": _b64url(public.x.to_bytes(size, "big")), "y": _b64url(public.y.to_bytes(size, "big"))}


def _alg_and_digest(body: dict[str, Any], field_name: str) -> tuple[str, bytes]:
    alg = str(body.get("alg", ""))
    if alg not in _HASHES:
        raise bad(f"Invalid algorithm {alg!r}")
    try:
        digest = _unb64url(str(body[field_name]))
    except (KeyError, ValueError):
        raise bad(f"Property {field_name} must be a base64url digest") from None
    if len(digest) != _HASHES[alg].digest_size:
        raise bad(f"The digest length {len(digest)} does not match algorithm {alg}")
    return alg, digest


def _sign(key: PrivateKey, alg: str, digest: bytes) -> bytes:
    prehashed = utils.Prehashed(_HASHES[alg])
    if alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise bad(f"Algorithm {alg} needs an EC key")
        r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(prehashed)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise bad(f"Algorithm {alg} needs an RSA key")
    return key.sign(digest, _rsa_padding(alg), prehashed)


def _verify(key: PrivateKey, alg: str, digest: bytes, signature: bytes) -> bool:
    prehashed = utils.Prehashed(_HASHES[alg])
    try:
        if alg.startswith("ES"):
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise bad(f"Algorithm {alg} needs an EC key")
            half = len(signature) // 2
            der = utils.encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            key.public_key().verify(der, digest, ec.ECDSA(prehashed))
        else:
            if not isinstance(key, rsa.RSAPrivateKey):
                raise bad(f"Algorithm {alg} needs an RSA key")
            key.public_key().verify(signature, digest, _rsa_padding(alg), prehashed)
    except InvalidSignature:
        return False
    return True


def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg.startswith("PS"):
        return padding.PSS(mgf=padding.MGF1(_HASHES[alg]), salt_length=_HASHES[alg].digest_size)
    return padding.PKCS1v15()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
