"""vault-managed: Key Vault makes the key and a new version of the device's certificate object.

The agent creates a new version with the object's policy (adjusted when the configuration asks for
another subject, SANs, key type or validity), polls the pending operation at a configurable
interval for a bounded time, then downloads the secret of exactly the version that operation made
(its key is pinned by the operation's CSR) and returns key and chain.

Least privilege (DESIGN.md): Key Vault Certificates Officer on `/certificates/<name>` and Key Vault
Secrets User on `/secrets/<name>`.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgecert.adapters.keyvault import KeyVault, PendingOperation
from edgecert.config import ResolvedCertificate
from edgecert.errors import IssuanceError, IssuedMaterialError, ObjectNotFoundError, TransientError
from edgecert.issuers.common import bundle_from_secret, chain_root
from edgecert.ports import Issued, IssueRequest

__all__ = ["ROLE_HINT", "VaultManagedIssuer", "desired_policy"]

#: vault-managed needs Certificates Officer on the certificate, which also grants the reads.
ROLE_HINT = {
    "Microsoft.KeyVault/vaults/certificates/read": "Key Vault Certificates Officer",
    "Microsoft.KeyVault/vaults/certificates/create/action": "Key Vault Certificates Officer",
}
_KEY_PROPS: dict[str, dict[str, Any]] = {
    "ec-p256": {"kty": "EC", "crv": "P-256"},
    "ec-p384": {"kty": "EC", "crv": "P-384"},
    "rsa-2048": {"kty": "RSA", "key_size": 2048},
    "rsa-3072": {"kty": "RSA", "key_size": 3072},
    "rsa-4096": {"kty": "RSA", "key_size": 4096},
}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def desired_policy(existing: dict[str, Any], cert: ResolvedCertificate) -> dict[str, Any]:
    """The object's policy with the configured subject, SANs, key type and validity (read-only fields dropped)."""
    policy = {k: copy.deepcopy(v) for k, v in existing.items() if k not in ("id", "attributes")}
    x509_props = policy.setdefault("x509_props", {})
    x509_props["subject"] = cert.subject
    sans = {k: v for k, v in (x509_props.get("sans") or {}).items() if k not in ("dns_names", "ipAddresses")}
    if cert.dns_names:
        sans["dns_names"] = list(cert.dns_names)
    if cert.ip_addresses:
        sans["ipAddresses"] = list(cert.ip_addresses)
    x509_props["sans"] = sans
    if cert.validity_days is not None:
        x509_props["validity_months"] = max(1, math.ceil(cert.validity_days / 30))
    if cert.key_type is not None:
        key_props = {k: v for k, v in (policy.get("key_props") or {}).items() if k not in ("kty", "crv", "key_size")}
        policy["key_props"] = {**key_props, **_KEY_PROPS[cert.key_type]}
    return policy


class VaultManagedIssuer:
    """Creates a new version in Key Vault and downloads its key and chain."""

    def __init__(
        self,
        vault: KeyVault,
        *,
        poll_interval: timedelta = timedelta(seconds=2),
        poll_limit: timedelta = timedelta(minutes=5),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.vault = vault
        self.poll_interval = poll_interval
        self.poll_limit = poll_limit
        self._sleep = sleep

    async def issue(self, request: IssueRequest) -> Issued:
        """Create, wait, download."""
        cert = request.certificate
        name = cert.vault_object or ""
        deadline = request.deadline
        try:
            existing = await self.vault.policy(name, deadline=deadline, role_hint=ROLE_HINT)
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(
                f"certificate object '{name}' does not exist in {self.vault.endpoint.url}",
                remedy=(
                    f"create it once with its issuer and policy, e.g. az keyvault certificate create --vault-name "
                    f'<vault> -n {name} -p "$(az keyvault certificate get-default-policy)"; vault-managed then makes '
                    "new versions of it"
                ),
                certificate=cert.name,
            ) from exc
        operation = await self.vault.create_certificate(
            name, desired_policy(existing, cert), deadline=deadline, role_hint=ROLE_HINT
        )
        operation = await self._wait(name, operation, deadline)
        latest = await self.vault.certificate(name, deadline=deadline, role_hint=ROLE_HINT)
        if operation.csr is not None:
            requested = x509.load_der_x509_csr(operation.csr).public_key().public_bytes(*_SPKI)
            if latest.certificate.public_key().public_bytes(*_SPKI) != requested:
                raise IssuedMaterialError(
                    f"the latest version of '{name}' is not the one this renewal created (another writer?)",
                    remedy="make sure only this device creates versions of its certificate object",
                    certificate=cert.name,
                )
        secret = await self.vault.secret(name, latest.version, deadline=deadline)
        bundle = bundle_from_secret(secret, latest.cer, certificate=cert.name)
        return Issued(bundle, chain_root(bundle), latest.version)

    async def _wait(self, name: str, operation: PendingOperation, deadline: datetime | None) -> PendingOperation:
        waited = timedelta(0)
        limit = self.poll_limit
        if deadline is not None:
            limit = min(limit, max(timedelta(0), deadline - datetime.now(UTC)))
        while operation.status.lower() == "inprogress":
            if "Perform Merge" in (operation.status_details or ""):
                raise IssuanceError(
                    f"certificate '{name}' has issuer Unknown: Key Vault waits for a merge that nobody will do",
                    remedy="give the certificate policy an issuer that completes on its own (Self or an integrated "
                    "CA such as DigiCert), or use mode vault-ca",
                )
            if waited >= limit:
                raise TransientError(
                    f"certificate '{name}' is still being issued after {waited.total_seconds():.0f} s",
                    remedy="the next attempt polls the same operation again; if it never completes, check the issuer",
                )
            await self._sleep(self.poll_interval.total_seconds())
            waited += self.poll_interval
            operation = await self.vault.operation(name, deadline=deadline, role_hint=ROLE_HINT)
        if operation.status.lower() != "completed":
            raise IssuanceError(
                f"the issuer did not complete certificate '{name}': {operation.status}"
                + (f" ({operation.error_code}: {operation.error_message})" if operation.error_code else ""),
                remedy="check the certificate's issuer in Key Vault (its account, its policy, the CA's answer)",
            )
        return operation
