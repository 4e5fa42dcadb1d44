"""The one error tree of edgecert. Every error says what went wrong and what a person should do.

Each error carries machine-readable fields (`code`, `retryable`, `certificate`, `vault`) and a
`remedy`: the exact next step, with the command to run where there is one. Messages never contain
key material or tokens. Foreign exceptions are translated at the boundary (`raise Ours(...) from exc`).

    EdgecertError                      (base; code "error")
    ├── UsageError                     usage.invalid            bad command-line arguments or input
    ├── ConfigError                    config.invalid           desired properties / config file rejected
    ├── CertificateError               cert.invalid             a certificate or key is not usable
    │   ├── UnreadableError            cert.unreadable          not a certificate or key we can read
    │   ├── KeyMismatchError           cert.key-mismatch        the key is not the certificate's key
    │   ├── ChainError                 cert.chain-untrusted     no path to the configured trust anchor
    │   ├── ValidityError              cert.not-valid-now       not yet valid, or expired
    │   └── ShapeError                 cert.shape-mismatch      subject, SANs, key type or CA flag wrong
    ├── StoreError                     store.io                 certificate files could not be written
    │   ├── RecoveryError              store.recovery           an interrupted swap could not be repaired
    │   └── OwnershipError             store.ownership          a renewed file could not keep its owner
    ├── KeyGenerationError             crypto.keygen            a key or CSR could not be made
    ├── IssuanceError                  issue.failed             Key Vault issuance failed
    │   ├── TransientError             issue.transient          a retryable failure (timeouts, 5xx, dropped)
    │   ├── ThrottledError             issue.throttled          Key Vault answered 429
    │   ├── IdentityError              identity.unavailable     no managed identity, or no token for it
    │   ├── AuthenticationError        kv.unauthorized          the vault refused the identity's token (401)
    │   ├── PermissionDeniedError      kv.forbidden             403 for another reason (disabled object, ...)
    │   │   ├── RbacDeniedError        kv.forbidden-rbac        an RBAC role is missing (names role and command)
    │   │   ├── AccessPolicyDeniedError kv.forbidden-policy     an access-policy permission is missing
    │   │   └── FirewallDeniedError    kv.forbidden-firewall    the vault firewall refused the device's address
    │   ├── ObjectNotFoundError        kv.not-found             a certificate, secret or key name does not exist
    │   ├── VaultUnreachableError      kv.unreachable           wrong vault URL, DNS or no route to the vault
    │   ├── TlsVerificationError       kv.tls                   the vault's TLS certificate is not trusted
    │   ├── VaultRequestError          kv.bad-request           the vault refused the request as malformed (400/409)
    │   └── IssuedMaterialError        issue.bad-material       what the vault returned is not usable
    ├── ActivationError                activation.failed        the runtime did not take the new files
    └── TwinError                      twin.unavailable         a module twin call failed or timed out

`ERROR_CLASSES` lists every class by code; docs and tests walk it, so a new error cannot be left
undocumented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

__all__ = [
    "ERROR_CLASSES",
    "AccessPolicyDeniedError",
    "ActivationError",
    "AuthenticationError",
    "CertificateError",
    "ChainError",
    "ConfigError",
    "EdgecertError",
    "FieldProblem",
    "FirewallDeniedError",
    "IdentityError",
    "IssuanceError",
    "IssuedMaterialError",
    "KeyGenerationError",
    "KeyMismatchError",
    "ObjectNotFoundError",
    "PermissionDeniedError",
    "RbacDeniedError",
    "RecoveryError",
    "ShapeError",
    "StoreError",
    "ThrottledError",
    "TlsVerificationError",
    "TransientError",
    "TwinError",
    "UnreadableError",
    "UsageError",
    "ValidityError",
    "VaultRequestError",
    "VaultUnreachableError",
]

ERROR_CLASSES: dict[str, type[EdgecertError]] = {}


class EdgecertError(Exception):
    """Base of every error edgecert raises on purpose."""

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False
    #: What the error means, for the troubleshooting guide.
    summary: ClassVar[str] = "edgecert failed"
    #: The remedy when the raiser has nothing more specific.
    default_remedy: ClassVar[str] = "read the message above; run 'edgecert check' for a diagnosis"

    def __init__(
        self,
        message: str,
        *,
        remedy: str | None = None,
        certificate: str | None = None,
        vault: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy or self.default_remedy
        self.certificate = certificate
        self.vault = vault

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in ERROR_CLASSES:
                raise TypeError(f"error code {cls.code!r} is used twice")
            ERROR_CLASSES[cls.code] = cls

    def report(self) -> dict[str, str]:
        """The `lastError` shape of the reported properties: code, message, remedy."""
        return {"code": self.code, "message": self.message, "remedy": self.remedy}

    def __str__(self) -> str:
        where = f"[{self.certificate}] " if self.certificate else ""
        return f"{where}{self.message}"


ERROR_CLASSES[EdgecertError.code] = EdgecertError


class UsageError(EdgecertError):
    """A command was called with arguments or input it cannot use."""

    code = "usage.invalid"
    summary = "a command was given arguments or input it cannot use"
    default_remedy = "run the command with --help to see what it accepts"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem in a config document: where (dotted field path), what, and how to fix it."""

    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}; {self.fix}"

    def report(self) -> dict[str, str]:
        """The shape of one entry of the reported `config.errors`."""
        return {"path": self.path, "message": self.message, "fix": self.fix}


class ConfigError(EdgecertError):
    """A desired-properties document or config file was rejected as a whole."""

    code = "config.invalid"
    summary = "the configuration was rejected; the last good configuration stays in force"
    default_remedy = "fix each listed field in the module twin's desired properties (or the file)"

    def __init__(self, problems: Sequence[FieldProblem], *, source: str = "configuration") -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"{source} rejected ({count} problem{'s' * (count != 1)}):\n{lines}")


class CertificateError(EdgecertError):
    """A certificate or key is not usable as it is."""

    code = "cert.invalid"
    summary = "a certificate or key is not usable"
    default_remedy = "check the certificate files named in the configuration"


class UnreadableError(CertificateError):
    """A file does not hold a certificate or key in a format edgecert reads."""

    code = "cert.unreadable"
    summary = "a file is not a certificate or key in a readable format"
    default_remedy = "certificates must be PEM or DER X.509; keys PEM or DER PKCS#8, PKCS#1 or SEC1, unencrypted"


class KeyMismatchError(CertificateError):
    """The private key does not belong to the certificate."""

    code = "cert.key-mismatch"
    summary = "the private key is not the key of the certificate"
    default_remedy = "install the key that was used to request this certificate, or renew with --force"


class ChainError(CertificateError):
    """The chain does not lead to the configured trust anchor."""

    code = "cert.chain-untrusted"
    summary = "the certificate chain does not build to the configured trust anchor"
    default_remedy = (
        "check that the issuing CA is in the trust bundle (IoT Edge's trust_bundle_cert) "
        "and that the chain file holds the intermediates"
    )


class ValidityError(CertificateError):
    """The certificate is not valid at the time of the check."""

    code = "cert.not-valid-now"
    summary = "the certificate is not yet valid or has expired"
    default_remedy = "check the device clock (timedatectl) and renew with 'edgecert renew --force'"


class ShapeError(CertificateError):
    """The certificate's subject, SANs, key type or CA flag is not what its role needs."""

    code = "cert.shape-mismatch"
    summary = "the certificate's subject, SANs, key type or CA flag differs from the configuration"
    default_remedy = "the agent re-issues it; if it persists, check the issuer's policy in Key Vault"


class StoreError(EdgecertError):
    """Certificate files could not be read or written."""

    code = "store.io"
    retryable = True
    summary = "certificate files could not be written or read"
    default_remedy = (
        "check that the certificate folders are mounted read-write into the module "
        "(createOptions HostConfig.Binds) and that the disk is not full"
    )


class RecoveryError(StoreError):
    """An interrupted swap could not be finished or undone."""

    code = "store.recovery"
    retryable = False
    summary = "an interrupted certificate swap could not be repaired automatically"
    default_remedy = "restore the '.previous' files by hand (cert and key together) and restart the module"


class OwnershipError(StoreError):
    """A new file could not be given the owner of the file it replaces, so its reader would lose access."""

    code = "store.ownership"
    retryable = False
    summary = "a renewed file could not keep the owner of the file it replaces (e.g. aziotks for a key)"
    default_remedy = (
        "run the module as root with only CHOWN, DAC_OVERRIDE and FOWNER kept, as deployment.template.json does "
        "(createOptions User 0:0 and HostConfig.CapDrop), or as the uid that owns the certificate files"
    )


class KeyGenerationError(EdgecertError):
    """A private key or CSR could not be made on the device."""

    code = "crypto.keygen"
    summary = "a private key or certificate signing request could not be made"
    default_remedy = "check key.type and subject in the configuration"


class IssuanceError(EdgecertError):
    """Key Vault could not issue or hand out a certificate.

    `retry_after` carries the server's Retry-After when it sent one.
    """

    code = "issue.failed"
    summary = "the certificate could not be issued through Key Vault"
    default_remedy = "run 'edgecert check' for a diagnosis of identity, vault and permissions"

    def __init__(
        self,
        message: str,
        *,
        retry_after: timedelta | None = None,
        remedy: str | None = None,
        certificate: str | None = None,
        vault: str | None = None,
    ) -> None:
        super().__init__(message, remedy=remedy, certificate=certificate, vault=vault)
        self.retry_after = retry_after


class TransientError(IssuanceError):
    """A failure that may pass by itself: timeouts, dropped connections, 5xx answers."""

    code = "issue.transient"
    retryable = True
    summary = "a passing failure (timeout, dropped connection, server error)"
    default_remedy = "nothing to do if it passes; if it persists, check the network path to the vault"


class ThrottledError(IssuanceError):
    """Key Vault answered 429 Too Many Requests."""

    code = "issue.throttled"
    retryable = True
    summary = "Key Vault throttled the request (429)"
    default_remedy = "spread renewals: widen renewal.spread or renewal.window, or add slots to renewal.autoWindow"


class IdentityError(IssuanceError):
    """The managed identity is missing, or no token could be obtained for it."""

    code = "identity.unavailable"
    summary = "no managed identity is assigned to the device, or no token could be obtained"
    default_remedy = (
        "assign a managed identity to the device's host (VM: 'az vm identity assign'; Arc: the machine's "
        "system identity) and, for a user-assigned identity, set vault.clientId"
    )


class AuthenticationError(IssuanceError):
    """The vault refused the identity's token (401 after the challenge)."""

    code = "kv.unauthorized"
    summary = "Key Vault refused the managed identity's token"
    default_remedy = "check that the vault is in the identity's tenant and that vault.url names the right vault"


class PermissionDeniedError(IssuanceError):
    """Key Vault answered 403."""

    code = "kv.forbidden"
    summary = "Key Vault refused the operation (403)"
    default_remedy = "run 'edgecert check' to see which permission is missing"


class RbacDeniedError(PermissionDeniedError):
    """An Azure RBAC role assignment is missing (403 ForbiddenByRbac)."""

    code = "kv.forbidden-rbac"
    summary = "the identity lacks the Azure RBAC role for this operation on this object"


class AccessPolicyDeniedError(PermissionDeniedError):
    """An access-policy permission is missing (403 AccessDenied / ForbiddenByPolicy)."""

    code = "kv.forbidden-policy"
    summary = "the vault uses access policies and the identity's policy lacks this permission"


class FirewallDeniedError(PermissionDeniedError):
    """The vault's network rules refused the device's address (403 ForbiddenByFirewall)."""

    code = "kv.forbidden-firewall"
    summary = "the vault's firewall refused the device's network address"


class ObjectNotFoundError(IssuanceError):
    """A certificate, secret or key named by the configuration does not exist (404)."""

    code = "kv.not-found"
    summary = "a Key Vault object named by the configuration does not exist"


class VaultUnreachableError(IssuanceError):
    """The vault could not be reached: wrong URL, DNS, or no network path."""

    code = "kv.unreachable"
    retryable = True
    summary = "the vault could not be reached (wrong URL, DNS, proxy or no network)"
    default_remedy = "check vault.url (https://<name>.vault.azure.net) and the device's DNS and outbound HTTPS"


class TlsVerificationError(IssuanceError):
    """The vault's TLS certificate did not verify against the trusted CAs."""

    code = "kv.tls"
    summary = "the vault's TLS certificate is not trusted by the device"
    default_remedy = (
        "if a TLS-inspecting proxy or private CA sits in front of the vault, set vault.caFile to its CA bundle; "
        "never turn verification off"
    )


class VaultRequestError(IssuanceError):
    """The vault refused a request as malformed or conflicting (400, 409)."""

    code = "kv.bad-request"
    summary = "the vault refused a request as malformed or conflicting"
    default_remedy = "check the certificate's policy and names in the configuration"


class IssuedMaterialError(IssuanceError):
    """What the vault returned is not a usable certificate and key."""

    code = "issue.bad-material"
    summary = "the certificate or key returned by the vault is not usable"
    default_remedy = "check the certificate policy in Key Vault (key type, subject, content type)"


class ActivationError(EdgecertError):
    """The IoT Edge runtime did not take, or did not work with, the new certificate files."""

    code = "activation.failed"
    summary = "the runtime did not come back with the new certificate"
    default_remedy = "see the host helper's result file and 'iotedge system logs'"


class TwinError(EdgecertError):
    """A module twin call failed or timed out; `operation` says which."""

    code = "twin.unavailable"
    retryable = True
    summary = "the module could not reach IoT Hub through edgeHub"
    default_remedy = "check edgeHub ('iotedge logs edgeHub') and the device's connection; the agent retries"

    def __init__(self, operation: str, cause: BaseException | str) -> None:
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {str(cause)[:200]}"
        super().__init__(f"{operation}: {text}")
        self.operation = operation
