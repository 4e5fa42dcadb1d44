"""ISO-8601 UTC formatting and parsing for reports, JSON and the twin (whole seconds, `Z`)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso", "parse_instant"]


def iso(instant: datetime) -> str:
    """Format an aware datetime as `2026-12-03T16:23:40Z` (UTC, whole seconds, truncated)."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime; edgecert works in timezone-aware UTC only")
    return instant.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> datetime:
    """Parse ISO-8601 with an explicit offset or `Z` into an aware UTC datetime.

    A time without an offset is rejected: guessing a time zone is how renewals happen an hour
    early or late.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 instant; write e.g. '2026-12-03T16:00:00Z'") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{text!r} has no time zone; add 'Z' or an offset such as '+01:00'")
    return value.astimezone(UTC)
