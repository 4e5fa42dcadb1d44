"""vault-fetch: Key Vault renews by itself; the agent only installs a newer version.

Key Vault makes new versions with the lifetime action AutoRenew; the agent notices a version newer
than the installed certificate and installs it. Nothing is created.

Least privilege (DESIGN.md): Key Vault Certificate User on `/certificates/<name>` and Key Vault
Secrets User on `/secrets/<name>` (a role at the certificate's scope does not reach its secret).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from edgecert.adapters.keyvault import KeyVault
from edgecert.issuers.common import bundle_from_secret, chain_root
from edgecert.ports import Issued, IssueRequest

__all__ = ["VaultFetchIssuer"]


class VaultFetchIssuer:
    """Downloads the latest version when it is newer than the installed certificate."""

    def __init__(self, vault: KeyVault) -> None:
        self.vault = vault

    async def issue(self, request: IssueRequest) -> Issued | None:
        """The latest version's key and chain, or None when the installed certificate is current."""
        cert = request.certificate
        name = cert.vault_object or ""
        latest = await self.vault.certificate(name, deadline=request.deadline)
        if request.installed is not None:
            installed = request.installed.leaf
            if installed.public_bytes(serialization.Encoding.DER) == latest.cer:
                return None
            if installed.not_valid_before_utc > latest.certificate.not_valid_before_utc:
                return None  # never go back to an older version
        secret = await self.vault.secret(name, latest.version, deadline=request.deadline)
        bundle = bundle_from_secret(secret, latest.cer, certificate=cert.name)
        return Issued(bundle, chain_root(bundle), latest.version)
