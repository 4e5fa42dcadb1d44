"""`edgecert check`: what works and what does not, before any renewal is attempted.

Every probe is a read without side effects: the identity's token, the vault's answer, the permission
model (read from the 403 a deliberately unknown secret name draws), and for each configured
certificate the reads its mode needs. The CA key of vault-ca is probed with a sign of a random digest,
checked against the CA certificate (a sign changes nothing in the vault). What cannot be probed
without side effects (creating a version in vault-managed) is listed as unverified.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from edgecert.adapters.keyvault import KeyVault, RequestRetry
from edgecert.config import EdgecertConfig, ResolvedCertificate, resolve_certificates
from edgecert.core.certinfo import ParseError, load_certificates
from edgecert.core.der import ecdsa_raw_to_der
from edgecert.errors import (
    AccessPolicyDeniedError,
    EdgecertError,
    ObjectNotFoundError,
    RbacDeniedError,
)
from edgecert.issuers.ca import DIGESTS, check_issuer
from edgecert.issuers.managed import ROLE_HINT
from edgecert.renewal import endpoint_of

__all__ = ["Check", "run_checks"]

PROBE_SECRET = "edgecert-permission-probe"  # noqa: S105 - a name that must not exist, not a secret


@dataclass(frozen=True)
class Check:
    """One probe's result."""

    name: str
    status: str  # pass | fail | unverified
    message: str
    code: str | None = None
    remedy: str | None = None

    def report(self) -> dict[str, Any]:
        """The JSON form of `edgecert check --json`."""
        return {"name": self.name, "status": self.status, "code": self.code, "message": self.message,
                "remedy": self.remedy}  # fmt: skip


def _failed(name: str, error: EdgecertError) -> Check:
    return Check(name, "fail", error.message, error.code, error.remedy)


async def run_checks(config: EdgecertConfig, *, device_id: str, module_id: str) -> list[Check]:
    """Run every probe; a failed probe never stops the others."""
    checks: list[Check] = []
    try:
        certificates = resolve_certificates(config, device_id=device_id, module_id=module_id)
    except EdgecertError as exc:
        return [_failed("configuration", exc)]
    if config.vault is None:
        return [Check("configuration", "pass", "no certificates configured: nothing to check")]
    # a diagnosis answers quickly: one retry for a passing failure, not the renewal's patience
    async with KeyVault(endpoint_of(config), retry=RequestRetry(attempts=2, total=timedelta(seconds=20))) as vault:
        try:
            claims = await vault.caller()
        except EdgecertError as exc:
            return [_failed("identity", exc)]
        oid = claims.get("oid", "?")
        checks.append(Check("identity", "pass", f"token obtained for object id {oid} (tenant {claims.get('tid')})"))
        checks += await _vault_and_model(vault)
        for cert in certificates:
            checks += await _certificate(vault, cert)
    return checks


async def _vault_and_model(vault: KeyVault) -> list[Check]:
    """Reachability and the permission model, from what a secret nobody should read draws."""
    url = vault.endpoint.url
    try:
        await vault.secret(PROBE_SECRET)
    except RbacDeniedError:
        model = "Azure RBAC (access policies are ignored on this vault)"
    except AccessPolicyDeniedError:
        model = "access policies (Azure RBAC role assignments are ignored on this vault)"
    except ObjectNotFoundError:
        return [
            Check("vault", "pass", f"{url} answered"),
            Check(
                "least privilege",
                "fail",
                "the identity may read every secret of the vault (a secret that does not exist drew 404, not 403)",
                "kv.too-broad",
                "grant roles at the scope of each object (/secrets/<name>) instead of the whole vault",
            ),
        ]
    except EdgecertError as exc:
        return [_failed("vault", exc)]
    else:  # pragma: no cover - nobody creates the probe secret
        return [Check("vault", "pass", f"{url} answered")]
    return [Check("vault", "pass", f"{url} answered"), Check("permission model", "pass", model)]


async def _certificate(vault: KeyVault, cert: ResolvedCertificate) -> list[Check]:
    prefix = f"{cert.name} ({cert.mode})"
    if cert.mode == "vault-ca":
        return await _vault_ca(vault, cert, prefix)
    name = cert.vault_object or ""
    checks = []
    try:
        if cert.mode == "vault-managed":
            await vault.policy(name, role_hint=ROLE_HINT)
            found = await vault.certificate(name, role_hint=ROLE_HINT)
        else:
            found = await vault.certificate(name)
        checks.append(Check(f"{prefix}: read certificate '{name}'", "pass", f"version {found.version}"))
    except EdgecertError as exc:
        checks.append(_failed(f"{prefix}: read certificate '{name}'", exc))
        found = None
    if found is not None:
        try:
            await vault.secret(name, found.version)
            checks.append(Check(f"{prefix}: read secret '{name}'", "pass", "the key and chain can be downloaded"))
        except EdgecertError as exc:
            checks.append(_failed(f"{prefix}: read secret '{name}'", exc))
    if cert.mode == "vault-managed":
        checks.append(
            Check(
                f"{prefix}: create a version of '{name}'",
                "unverified",
                "creating a version cannot be probed without making one; it needs certificates/create/action "
                "(Key Vault Certificates Officer on the certificate)",
            )
        )
    return checks


async def _vault_ca(vault: KeyVault, cert: ResolvedCertificate, prefix: str) -> list[Check]:
    checks = []
    ca: x509.Certificate | None = None
    if cert.issuer_chain is not None:
        try:
            ca = load_certificates(cert.issuer_chain.read_bytes())[0]
            checks.append(Check(f"{prefix}: pinned CA chain", "pass", f"{cert.issuer_chain}"))
        except (OSError, ParseError) as exc:
            checks.append(Check(f"{prefix}: pinned CA chain", "fail", str(exc), "issue.failed", "fix issuerChain"))
    else:
        try:
            ca = (await vault.certificate(cert.issuer_certificate or "")).certificate
            checks.append(Check(f"{prefix}: read CA certificate '{cert.issuer_certificate}'", "pass",
                                ca.subject.rfc4514_string()))  # fmt: skip
        except EdgecertError as exc:
            checks.append(_failed(f"{prefix}: read CA certificate '{cert.issuer_certificate}'", exc))
    if ca is not None:
        try:
            check_issuer(ca, cert)
            checks.append(Check(f"{prefix}: CA may issue role {cert.role}", "pass", "a CA with room below it"))
        except EdgecertError as exc:
            checks.append(_failed(f"{prefix}: CA may issue role {cert.role}", exc))
    name = f"{prefix}: sign with CA key '{cert.issuer_key}'"
    try:
        algorithm = _algorithm(ca)
        digest = DIGESTS[algorithm](secrets.token_bytes(32))
        signature = await vault.sign(cert.issuer_key or "", None, algorithm, digest)
        if ca is not None and not _verifies(ca, algorithm, digest, signature):
            message = "the key's signature does not verify against the CA certificate"
            remedy = "issuerKeyName must be the key of issuerCertificateName"
            checks.append(Check(name, "fail", message, "issue.bad-material", remedy))
        else:
            checks.append(Check(name, "pass", "a test digest was signed" + (" and verified" if ca else "")))
    except EdgecertError as exc:
        checks.append(_failed(name, exc))
    return checks


def _algorithm(ca: x509.Certificate | None) -> str:
    public = ca.public_key() if ca is not None else None
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ES384" if public.curve.key_size > 256 else "ES256"
    return "RS256" if isinstance(public, rsa.RSAPublicKey) else "ES256"


def _verifies(ca: x509.Certificate, algorithm: str, digest: bytes, signature: bytes) -> bool:
    public = ca.public_key()
    chosen: hashes.HashAlgorithm = hashes.SHA384() if algorithm == "ES384" else hashes.SHA256()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(ecdsa_raw_to_der(signature), digest, ec.ECDSA(utils.Prehashed(chosen)))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(chosen))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
