"""Durations, percentages and lifetime thresholds as the twin writes them ("80%", "30d", "12h", "90m").

Pure: parsing and formatting only. A threshold is either a share of a certificate's lifetime
(`Percent`) or an amount of time before its expiry (`BeforeExpiry`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "BeforeExpiry",
    "Percent",
    "Threshold",
    "UnitError",
    "format_duration",
    "parse_duration",
    "parse_percent",
    "parse_threshold",
    "share_of",
    "threshold_instant",
]

_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_DURATION = re.compile(r"([0-9]{1,9})([dhms])")
_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,6})?)%")


class UnitError(ValueError):
    """A duration or percentage string is malformed: `problem` says what, `fix` what to write."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Percent:
    """A share of a certificate's lifetime, 0 <= value <= 100 (exact decimal)."""

    value: Decimal

    def __str__(self) -> str:
        return f"{_plain(self.value)}%"


@dataclass(frozen=True, slots=True)
class BeforeExpiry:
    """An amount of time before a certificate's notAfter."""

    delta: timedelta

    def __str__(self) -> str:
        return format_duration(self.delta)


Threshold = Percent | BeforeExpiry


def parse_duration(text: str) -> timedelta:
    """Parse `"30d"`, `"12h"`, `"90m"`, `"45s"` or a sum such as `"1h30m"` into a timedelta."""
    stripped = text.strip()
    if not stripped:
        raise UnitError("empty duration", "write a whole number with a unit, e.g. '30d', '12h', '90m'")
    total = timedelta(0)
    pos = 0
    for match in _DURATION.finditer(stripped):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(stripped):
        raise UnitError(
            f"{text!r} is not a duration",
            "write whole numbers with units d, h, m or s, e.g. '30d', '12h', '90m' or '1h30m'",
        )
    return total


def format_duration(delta: timedelta) -> str:
    """Format a timedelta in the shortest exact form `parse_duration` reads back (e.g. `"1h30m"`)."""
    seconds = delta.days * 86400 + delta.seconds
    if delta.microseconds or seconds < 0:
        raise UnitError(f"{delta!r} has no exact form in whole seconds", "use whole seconds")
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_percent(text: str) -> Percent:
    """Parse `"80%"` or `"66.7%"` (0 to 100, at most six decimals) into an exact `Percent`."""
    match = _PERCENT.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"{text!r} is not a percentage", "write a number from 0 to 100 and '%', e.g. '80%'")
    value = Decimal(match.group(1))
    if value > 100:
        raise UnitError(f"{text!r} is more than 100%", "a share of the lifetime is at most '100%'")
    return Percent(value)


def parse_threshold(text: str) -> Threshold:
    """Parse a lifetime threshold: `"N%"` of the lifetime, or a duration before expiry."""
    if text.strip().endswith("%"):
        return parse_percent(text)
    try:
        return BeforeExpiry(parse_duration(text))
    except UnitError:
        raise UnitError(
            f"{text!r} is neither a percentage of the lifetime nor a duration before expiry",
            "write e.g. '80%' (of the lifetime) or '30d', '12h', '90m' (before expiry)",
        ) from None


def share_of(lifetime: timedelta, percent: Percent) -> timedelta:
    """Return `percent` of `lifetime`, exact to the microsecond, rounded towards zero."""
    micros = _micros(lifetime)
    share = Fraction(micros) * Fraction(percent.value) / 100
    return timedelta(microseconds=int(share))


def threshold_instant(not_before: datetime, not_after: datetime, threshold: Threshold) -> datetime:
    """Return the instant a threshold names for a certificate, clamped into [not_before, not_after].

    A percentage counts from notBefore; a duration counts back from notAfter. The result is whole
    seconds (certificate times are whole seconds, and a fractional share is truncated as cert-manager
    does), so `renewAfter == notBefore + 80 % of lifetime` holds to the second.
    """
    if not_after <= not_before:
        return not_after
    if isinstance(threshold, Percent):
        instant = not_before + share_of(not_after - not_before, threshold)
    else:
        instant = not_after - threshold.delta
    instant = instant.replace(microsecond=0)
    return min(max(instant, not_before), not_after)


def _micros(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")
