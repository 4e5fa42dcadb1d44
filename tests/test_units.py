"""Durations, percentages and thresholds: what the twin may write, and what it may not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecert.core.timefmt import iso, parse_instant
from edgecert.core.units import (
    BeforeExpiry,
    Percent,
    UnitError,
    format_duration,
    parse_duration,
    parse_percent,
    parse_threshold,
    threshold_instant,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1h30m", timedelta(minutes=90)),
        (" 2d12h ", timedelta(days=2, hours=12)),
        ("0s", timedelta(0)),
    ],
    ids=["days", "hours", "minutes", "seconds", "compound", "spaces around", "zero"],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "30 d", "1y", "-1d", "1.5h", "h", "30dd", "1h 30m", "٣d"],
    ids=["empty", "no unit", "space before unit", "years", "negative", "fraction", "unit only", "doubled unit",
         "space inside", "non-ASCII digit"],
)  # fmt: skip
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(text)
    assert "30d" in caught.value.fix


@given(st.integers(min_value=0, max_value=10**8).map(lambda s: timedelta(seconds=s)))
def test_durations_round_trip(delta: timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80%", Percent(Decimal(80))), ("66.7%", Percent(Decimal("66.7"))), ("100%", Percent(Decimal(100)))],
    ids=["whole", "decimal", "hundred"],
)
def test_percentages(text: str, expected: Percent) -> None:
    assert parse_percent(text) == expected
    assert str(parse_percent(text)) == text


@pytest.mark.parametrize("text", ["80", "120%", "-5%", "80 %%", "eighty%", "1e2%"])
def test_bad_percentages(text: str) -> None:
    with pytest.raises(UnitError):
        parse_percent(text)


def test_thresholds_are_percent_or_before_expiry() -> None:
    assert parse_threshold("80%") == Percent(Decimal(80))
    assert parse_threshold("30d") == BeforeExpiry(timedelta(days=30))
    with pytest.raises(UnitError, match="neither"):
        parse_threshold("soon")


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (Percent(Decimal(80)), datetime(2026, 1, 9, tzinfo=UTC)),
        (Percent(Decimal("33.333333")), datetime(2026, 1, 4, 7, 59, 59, tzinfo=UTC)),
        (BeforeExpiry(timedelta(days=3)), datetime(2026, 1, 8, tzinfo=UTC)),
        (BeforeExpiry(timedelta(days=30)), datetime(2026, 1, 1, tzinfo=UTC)),
    ],
    ids=[
        "80% of 10 days",
        "a third, truncated to the second",
        "3 days before expiry",
        "longer than the lifetime: at once",
    ],
)
def test_threshold_instant(threshold: Percent | BeforeExpiry, expected: datetime) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert threshold_instant(start, start + timedelta(days=10), threshold) == expected


def test_instants_need_a_zone() -> None:
    assert parse_instant("2026-12-03T16:00:00+01:00") == datetime(2026, 12, 3, 15, tzinfo=UTC)
    assert iso(parse_instant("2026-12-03T16:00:00.9Z")) == "2026-12-03T16:00:00Z"
    with pytest.raises(ValueError, match="no time zone"):
        parse_instant("2026-12-03T16:00:00")
    with pytest.raises(ValueError, match="naive"):
        iso(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive value is the point of the test
