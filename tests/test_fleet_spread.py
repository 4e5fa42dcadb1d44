"""The fleet view: the busiest sliding interval is counted half-open, to the second."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgecert.fleet.spread import peak_in_interval

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_peak_counts_a_half_open_sliding_interval() -> None:
    at = [T0, T0 + timedelta(seconds=9), T0 + timedelta(seconds=10), T0 + timedelta(seconds=19)]
    assert peak_in_interval(at) == 2  # [0, 10) holds 0 and 9; [9, 19) holds 9 and 10; 10 and 19 also pair
    assert peak_in_interval(at, timedelta(seconds=11)) == 3
    assert peak_in_interval([T0] * 5) == 5
    assert peak_in_interval([]) == 0
