"""One renewal pass: for every configured certificate, decide, issue, validate and store.

Failures are isolated per certificate (STYLE.md §5): one certificate's error is its outcome and the
others go on. `edgecert renew` runs one pass; the agent (F4) runs the same steps inside its loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edgecert.adapters.keyvault import KeyVault, VaultEndpoint
from edgecert.config import EdgecertConfig, ResolvedCertificate, resolve_certificates
from edgecert.core.certinfo import certificate_facts
from edgecert.core.policy import Action, Decision, renewal_decision
from edgecert.core.timefmt import iso
from edgecert.core.validate import Expectations
from edgecert.errors import EdgecertError
from edgecert.issuers.ca import VaultCaIssuer
from edgecert.issuers.fetch import VaultFetchIssuer
from edgecert.issuers.managed import VaultManagedIssuer
from edgecert.ports import CertStore, Issued, Issuer, IssueRequest

__all__ = ["Outcome", "endpoint_of", "expectations", "issue_deadline", "issuer_for", "renew_pass", "worth_an_attempt"]


@dataclass(frozen=True)
class Outcome:
    """What a pass did with one certificate."""

    name: str
    result: str  # renewed | up-to-date | not-due | would-renew | failed
    reason: str
    action: str | None = None
    error: EdgecertError | None = None
    thumbprint: str | None = None
    not_after: datetime | None = None
    version: str | None = None

    def report(self) -> dict[str, Any]:
        """JSON form (errors as code, message, remedy)."""
        data: dict[str, Any] = {"result": self.result, "reason": self.reason}
        if self.action:
            data["action"] = self.action
        if self.thumbprint:
            data["thumbprintSha256"] = self.thumbprint
        if self.not_after:
            data["notAfter"] = iso(self.not_after)
        if self.version:
            data["version"] = self.version
        if self.error is not None:
            data["error"] = self.error.report()
        return data


def endpoint_of(config: EdgecertConfig) -> VaultEndpoint:
    """The vault endpoint a configuration names."""
    if config.vault is None:
        raise ValueError("the configuration names no vault")
    vault = config.vault
    return VaultEndpoint(
        vault.url,
        client_id=vault.client_id,
        ca_file=Path(vault.ca_file) if vault.ca_file else None,
        verify_challenge_resource=vault.verify_challenge_resource,
    )


def worth_an_attempt(decision: Decision | None, cert: ResolvedCertificate, *, force: bool) -> bool:
    """Whether to call the issuer: forced, nothing installed, due, or vault-fetch (a newer version costs one read)."""
    return force or decision is None or decision.action is not Action.WAIT or cert.mode == "vault-fetch"


def issue_deadline(decision: Decision | None, now: datetime) -> datetime | None:
    """When issuance gives up: the installed certificate's expiry while it is still ahead, else no limit."""
    deadline = decision.thresholds.not_after if decision is not None else None
    return deadline if deadline is not None and deadline > now else None


def issuer_for(cert: ResolvedCertificate, vault: KeyVault) -> Issuer:
    """The issuer of a certificate's mode."""
    if cert.mode == "vault-ca":
        return VaultCaIssuer(vault)
    if cert.mode == "vault-managed":
        return VaultManagedIssuer(vault)
    return VaultFetchIssuer(vault)


def expectations(cert: ResolvedCertificate, issued: Issued) -> Expectations:
    """What the store must check before installing an issued bundle for this certificate."""
    is_ca = {"edge-ca": True, "device-identity": False}.get(cert.role)
    return Expectations(anchors=issued.anchors, subject=cert.subject, key_type=cert.key_type, is_ca=is_ca)


async def renew_pass(
    config: EdgecertConfig,
    *,
    device_id: str,
    module_id: str,
    store: CertStore,
    now: Callable[[], datetime],
    force: bool = False,
    dry_run: bool = False,
    make_issuer: Callable[[ResolvedCertificate, KeyVault], Issuer] = issuer_for,
) -> list[Outcome]:
    """Renew what is due (everything with `force`; nothing, only saying what, with `dry_run`)."""
    certificates = resolve_certificates(config, device_id=device_id, module_id=module_id)
    outcomes: list[Outcome] = []
    if not certificates:
        return outcomes
    async with KeyVault(endpoint_of(config)) as vault:
        for cert in certificates:
            outcomes.append(
                await _renew_one(
                    cert,
                    config,
                    vault,
                    store,
                    now=now,
                    force=force,
                    dry_run=dry_run,
                    device_id=device_id,
                    make_issuer=make_issuer,
                )
            )
    return outcomes


async def _renew_one(
    cert: ResolvedCertificate,
    config: EdgecertConfig,
    vault: KeyVault,
    store: CertStore,
    *,
    now: Callable[[], datetime],
    force: bool,
    dry_run: bool,
    device_id: str,
    make_issuer: Callable[[ResolvedCertificate, KeyVault], Issuer],
) -> Outcome:
    try:
        installed = store.load(cert.paths)
    except EdgecertError as exc:
        installed, why = None, f"the installed files are unusable ({exc.code}): replacing them"
    else:
        why = "no certificate is installed yet" if installed is None else ""
    action, decision = None, None
    if installed is not None:
        decision = renewal_decision(
            certificate_facts(installed.leaf), config.renewal.policy(), now=now(), desired=cert.desired_shape()
        )
        action, why = str(decision.action), decision.reason
        if not worth_an_attempt(decision, cert, force=force):
            return Outcome(cert.name, "not-due", why, action)
    if force:
        why = "renewal forced"
    if dry_run:
        return Outcome(cert.name, "would-renew", f"{why}; dry run: nothing issued or stored", action)
    try:
        issued = await make_issuer(cert, vault).issue(
            IssueRequest(cert, device_id, installed, issue_deadline(decision, now()))
        )
        if issued is None:
            return Outcome(cert.name, "up-to-date", "Key Vault has no newer version than the installed one", action)
        store.install(cert.paths, issued.bundle, expectations(cert, issued))
    except EdgecertError as exc:
        if exc.certificate is None:
            exc.certificate = cert.name
        return Outcome(cert.name, "failed", why, action, error=exc)
    facts = certificate_facts(issued.bundle.leaf)
    return Outcome(
        cert.name, "renewed", why, action, thumbprint=facts.thumbprint_sha256, not_after=facts.not_after,
        version=issued.version,
    )  # fmt: skip
