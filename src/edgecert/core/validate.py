"""Checks a certificate bundle must pass before it replaces the live files.

Pure: given the parsed key and chain, the expectations and `now`, return the problems found.
The store re-reads what it wrote and runs these checks before the swap (DESIGN.md, "Swap").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from edgecert.core.certinfo import (
    KeyAndChain,
    build_chain,
    certificate_facts,
    key_matches_certificate,
)

__all__ = ["Expectations", "Problem", "check_bundle"]


@dataclass(frozen=True, slots=True)
class Expectations:
    """What an installable bundle must satisfy; None or empty leaves a check out."""

    anchors: tuple[x509.Certificate, ...] = ()
    subject: str | None = None
    key_type: str | None = None
    is_ca: bool | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed check: `kind` names the error class to raise ("key", "chain", "validity", "shape")."""

    kind: str
    message: str


def check_bundle(bundle: KeyAndChain, expect: Expectations, *, now: datetime) -> list[Problem]:
    """Return every reason `bundle` must not be installed (empty when it may be)."""
    leaf = bundle.leaf
    facts = certificate_facts(leaf)
    problems: list[Problem] = []
    if not key_matches_certificate(bundle.key, leaf):
        problems.append(Problem("key", "the private key does not match the certificate"))
    if now < facts.not_before:
        problems.append(Problem("validity", f"the certificate is not valid before {facts.not_before.isoformat()}"))
    elif now > facts.not_after:
        problems.append(Problem("validity", f"the certificate expired at {facts.not_after.isoformat()}"))
    if expect.anchors:
        result = build_chain(leaf, bundle.chain[1:], expect.anchors, now=now)
        if not result.ok:
            problems.append(Problem("chain", result.reason))
    if expect.subject is not None and facts.subject != expect.subject:
        problems.append(Problem("shape", f"subject is '{facts.subject}', expected '{expect.subject}'"))
    if expect.key_type is not None and facts.key_type != expect.key_type:
        problems.append(Problem("shape", f"key type is {facts.key_type}, expected {expect.key_type}"))
    if expect.is_ca is not None and facts.is_ca != expect.is_ca:
        wanted = "CA:TRUE" if expect.is_ca else "CA:FALSE"
        problems.append(Problem("shape", f"basic constraints must be {wanted} for this role"))
    return problems
