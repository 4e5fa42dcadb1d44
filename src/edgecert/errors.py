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
    │   └── RecoveryError              store.recovery           an interrupted swap could not be repaired
    ├── KeyGenerationError             crypto.keygen            a key or CSR could not be made
    ├── IssuanceError                  issue.failed             Key Vault issuance failed (F3 extends)
    │   ├── TransientError             issue.transient          a retryable failure (timeouts, 5xx)
    │   └── ThrottledError             issue.throttled          Key Vault answered 429
    └── ActivationError                activation.failed        the runtime did not take the new files (F4 extends)

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
    "ActivationError",
    "CertificateError",
    "ChainError",
    "ConfigError",
    "EdgecertError",
    "FieldProblem",
    "IssuanceError",
    "KeyGenerationError",
    "KeyMismatchError",
    "RecoveryError",
    "ShapeError",
    "StoreError",
    "ThrottledError",
    "TransientError",
    "UnreadableError",
    "UsageError",
    "ValidityError",
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


class KeyGenerationError(EdgecertError):
    """A private key or CSR could not be made on the device."""

    code = "crypto.keygen"
    summary = "a private key or certificate signing request could not be made"
    default_remedy = "check key.type and subject in the configuration"


class IssuanceError(EdgecertError):
    """Key Vault could not issue or hand out a certificate."""

    code = "issue.failed"
    summary = "the certificate could not be issued through Key Vault"
    default_remedy = "run 'edgecert check' for a diagnosis of identity, vault and permissions"


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

    def __init__(self, message: str, *, retry_after: timedelta | None = None, **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ActivationError(EdgecertError):
    """The IoT Edge runtime did not take, or did not work with, the new certificate files."""

    code = "activation.failed"
    summary = "the runtime did not come back with the new certificate"
    default_remedy = "see the host helper's result file and 'iotedge system logs'"
