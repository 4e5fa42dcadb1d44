"""The renewal decision: given an installed certificate, a policy and `now`, what should happen.

Pure. `renewal_decision(facts, policy, now=...)` returns one of `wait`, `renew`, `renew-urgent`,
`renew-expired` or `reissue`, the instant the action became (or becomes) due and a reason a person
can read. Thresholds follow DESIGN.md: `renewAt` and `urgentAt` are a share of the lifetime counted
from notBefore ("80%") or an amount of time before notAfter ("30d"). A certificate is valid through
its notAfter second (RFC 5280 §4.1.2.5), so it is expired only strictly after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from edgecert.core.certinfo import CertFacts
from edgecert.core.timefmt import iso
from edgecert.core.units import Percent, Threshold, threshold_instant

__all__ = [
    "Action",
    "Decision",
    "DesiredShape",
    "RenewalPolicy",
    "Thresholds",
    "mismatches",
    "renewal_decision",
    "thresholds",
]


class Action(StrEnum):
    """What the agent should do with one certificate."""

    WAIT = "wait"
    RENEW = "renew"
    RENEW_URGENT = "renew-urgent"
    RENEW_EXPIRED = "renew-expired"
    REISSUE = "reissue"


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """When to renew: thresholds on the lifetime and the per-device spread after `renew_at`."""

    renew_at: Threshold = field(default_factory=lambda: Percent(Decimal(80)))
    urgent_at: Threshold = field(default_factory=lambda: Percent(Decimal(95)))
    spread: Percent | timedelta = field(default_factory=lambda: Percent(Decimal(10)))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The instants a policy names for one certificate (UTC, whole seconds).

    `renew_after` is the policy threshold, the same for every device; `urgent_after` is never
    before it.
    """

    not_before: datetime
    not_after: datetime
    renew_after: datetime
    urgent_after: datetime

    @property
    def lifetime(self) -> timedelta:
        """notAfter - notBefore."""
        return self.not_after - self.not_before


@dataclass(frozen=True, slots=True)
class DesiredShape:
    """What the installed certificate should look like; None leaves a property unchecked."""

    subject: str | None = None
    dns_names: frozenset[str] | None = None
    ip_addresses: frozenset[str] | None = None
    key_type: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `renewal_decision`: action, the instant it is due, and why."""

    action: Action
    due_at: datetime
    reason: str
    thresholds: Thresholds


def thresholds(not_before: datetime, not_after: datetime, policy: RenewalPolicy) -> Thresholds:
    """Compute renewAfter and urgentAfter for a certificate's validity period."""
    renew_after = threshold_instant(not_before, not_after, policy.renew_at)
    urgent_after = max(threshold_instant(not_before, not_after, policy.urgent_at), renew_after)
    return Thresholds(not_before, not_after, renew_after, urgent_after)


def mismatches(facts: CertFacts, desired: DesiredShape) -> list[str]:
    """List how an installed certificate differs from the desired shape (empty when it matches)."""
    found = []
    if desired.subject is not None and desired.subject != facts.subject:
        found.append(f"subject is '{facts.subject}', desired '{desired.subject}'")
    if desired.dns_names is not None and desired.dns_names != frozenset(facts.dns_names):
        found.append(f"DNS names are {sorted(facts.dns_names)}, desired {sorted(desired.dns_names)}")
    if desired.ip_addresses is not None and desired.ip_addresses != frozenset(facts.ip_addresses):
        found.append(f"IP addresses are {sorted(facts.ip_addresses)}, desired {sorted(desired.ip_addresses)}")
    if desired.key_type is not None and desired.key_type != facts.key_type:
        found.append(f"key type is {facts.key_type or 'unsupported'}, desired {desired.key_type}")
    return found


def renewal_decision(
    facts: CertFacts,
    policy: RenewalPolicy,
    *,
    now: datetime,
    desired: DesiredShape | None = None,
) -> Decision:
    """Decide what to do with an installed certificate at `now`.

    The order of the checks is the order of precedence: a certificate that no longer matches the
    desired shape is re-issued whatever its age; otherwise the thresholds decide.
    """
    th = thresholds(facts.not_before, facts.not_after, policy)
    differences = mismatches(facts, desired) if desired is not None else []
    if differences:
        return Decision(
            Action.REISSUE,
            now,
            "installed certificate no longer matches the configuration: " + "; ".join(differences),
            th,
        )
    if facts.not_after <= facts.not_before:
        return Decision(
            Action.RENEW_EXPIRED,
            facts.not_after,
            f"certificate has no valid lifetime (notBefore {iso(facts.not_before)} is not "
            f"before notAfter {iso(facts.not_after)})",
            th,
        )
    if now > facts.not_after:
        return Decision(
            Action.RENEW_EXPIRED,
            facts.not_after,
            f"certificate expired at {iso(facts.not_after)}; renewing at once",
            th,
        )
    if now >= th.urgent_after:
        return Decision(
            Action.RENEW_URGENT,
            th.urgent_after,
            f"past urgentAt ({policy.urgent_at}) since {iso(th.urgent_after)}; "
            f"{_left(facts.not_after - now)} left, renewing outside windows",
            th,
        )
    if now >= th.renew_after:
        return Decision(
            Action.RENEW,
            th.renew_after,
            f"past renewAt ({policy.renew_at}) since {iso(th.renew_after)}; urgent from {iso(th.urgent_after)}",
            th,
        )
    return Decision(
        Action.WAIT,
        th.renew_after,
        f"renewAt ({policy.renew_at}) is reached at {iso(th.renew_after)}; "
        f"{_left(facts.not_after - now)} of validity left",
        th,
    )


def _left(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"
