"""Windows, offsets, suggested windows and backoff: named cases with exact expectations."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from edgecert.core.policy import Action, Decision, RenewalPolicy, Thresholds, thresholds
from edgecert.core.schedule import (
    AutoSlots,
    DailyWindow,
    Interval,
    RetryPolicy,
    Schedule,
    SuggestedWindow,
    Windows,
    WindowSource,
    auto_slot,
    backoff_delay,
    first_attempt,
    longest_closed_gap,
    next_attempt,
    occurrences,
    spread_instant,
)
from edgecert.core.units import Percent

ISSUED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POLICY = RenewalPolicy()
TH = thresholds(ISSUED, ISSUED + timedelta(days=90), POLICY)
BERLIN = ZoneInfo("Europe/Berlin")
DEVICE = "press-7"
RETRY = RetryPolicy(initial_delay=timedelta(seconds=1), max_delay=timedelta(minutes=10), max_attempts_per_window=3)


def decision(action: Action, th: Thresholds = TH) -> Decision:
    return Decision(action, th.renew_after, "test", th)


def test_thresholds_of_a_90_day_certificate() -> None:
    assert TH.renew_after == ISSUED + timedelta(days=72)
    assert TH.urgent_after == ISSUED + timedelta(days=85, hours=12)


# -- occurrences -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "start", "expected_start_utc"),
    [
        (datetime(2026, 3, 28, 12, tzinfo=UTC), time(2, 30), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        (datetime(2026, 3, 29, 12, tzinfo=UTC), time(2, 30), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)),
        (datetime(2026, 10, 24, 12, tzinfo=UTC), time(2, 30), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        (datetime(2026, 10, 25, 12, tzinfo=UTC), time(2, 30), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)),
        (datetime(2026, 1, 10, 0, 10, tzinfo=UTC), time(1, 0), datetime(2026, 1, 10, 0, 0, tzinfo=UTC)),
    ],
    ids=[
        "spring forward: 02:30 does not exist, the window opens at 03:30 CEST (01:30Z)",
        "the day after spring forward: 02:30 CEST is 00:30Z",
        "fall back: 02:30 happens twice, the first (CEST) is taken",
        "the day after fall back: 02:30 CET is 01:30Z",
        "an occurrence already open at `since` is included",
    ],
)
def test_daily_window_occurrences_across_dst(since: datetime, start: time, expected_start_utc: datetime) -> None:
    window = DailyWindow(start, timedelta(hours=1), BERLIN)
    first = next(occurrences(window, DEVICE, since=since))
    assert first.start == expected_start_utc
    assert first.length == timedelta(hours=1)  # elapsed time, whatever the clock does


def test_weekday_windows_open_only_on_their_days() -> None:
    window = DailyWindow(time(22, 0), timedelta(hours=3), BERLIN, frozenset({5, 6}))  # sat, sun
    found = occurrences(window, DEVICE, since=datetime(2026, 6, 1, tzinfo=UTC))  # a Monday
    starts = [next(found).start.astimezone(BERLIN) for _ in range(4)]
    assert [s.strftime("%a %H:%M") for s in starts] == ["Sat 22:00", "Sun 22:00", "Sat 22:00", "Sun 22:00"]


def test_auto_slots_are_the_devices_hour() -> None:
    slot = auto_slot(DEVICE, 24)
    first = next(occurrences(AutoSlots(24), DEVICE, since=datetime(2026, 6, 1, tzinfo=UTC)))
    assert first.start == datetime(2026, 6, 1, slot, tzinfo=UTC)
    assert first.length == timedelta(hours=1)


@pytest.mark.parametrize(
    ("window", "gap"),
    [
        (AutoSlots(24), timedelta(hours=23)),
        (AutoSlots(1), timedelta(0)),
        (DailyWindow(time(2), timedelta(hours=2), BERLIN), timedelta(hours=22)),
        (DailyWindow(time(2), timedelta(hours=2), BERLIN, frozenset({0})), timedelta(days=7, hours=-2)),
        (DailyWindow(time(2), timedelta(hours=2), BERLIN, frozenset({0, 3})), timedelta(days=4, hours=-2)),
        (DailyWindow(time(0), timedelta(hours=24), BERLIN), timedelta(0)),
    ],
    ids=["24 slots", "one slot", "daily 2h", "mondays 2h", "mon and thu 2h", "all day"],
)
def test_longest_closed_gap(window: AutoSlots | DailyWindow, gap: timedelta) -> None:
    assert longest_closed_gap(window) == gap


# -- first attempt ---------------------------------------------------------------------------------


def test_daily_window_plan_is_inside_the_window_within_a_day_of_the_spread_instant() -> None:
    window = DailyWindow(time(2), timedelta(hours=2), BERLIN)
    earliest = spread_instant(TH, POLICY, device_id=DEVICE, cert_name="identity")
    plan = first_attempt(TH, POLICY, Windows(window), device_id=DEVICE, cert_name="identity")
    local = plan.scheduled_at.astimezone(BERLIN)
    assert plan.source is WindowSource.TWIN
    assert 2 <= local.hour < 4
    assert earliest <= plan.scheduled_at < earliest + timedelta(days=1, hours=2)
    assert plan.window is not None
    assert plan.scheduled_at in plan.window


def test_spread_moves_each_certificate_of_a_device_on_its_own() -> None:
    a = spread_instant(TH, POLICY, device_id=DEVICE, cert_name="identity")
    b = spread_instant(TH, POLICY, device_id=DEVICE, cert_name="edge-ca")
    assert a != b
    assert TH.renew_after <= min(a, b) <= max(a, b) < TH.renew_after + timedelta(days=9)


def test_zero_spread_starts_at_renew_after() -> None:
    policy = RenewalPolicy(spread=Percent(Decimal(0)))
    assert spread_instant(TH, policy, device_id=DEVICE, cert_name="identity") == TH.renew_after


def test_a_window_that_never_opens_before_urgency_falls_back_to_the_spread_instant() -> None:
    short = thresholds(ISSUED, ISSUED + timedelta(days=2), POLICY)  # renew at 38.4h, urgent at 45.6h
    window = DailyWindow(time(12), timedelta(minutes=30), UTC, frozenset({6}))  # sundays only; 2026-03-02 is a Monday
    plan = first_attempt(short, POLICY, Windows(window), device_id=DEVICE, cert_name="identity")
    earliest = spread_instant(short, POLICY, device_id=DEVICE, cert_name="identity")
    assert plan == Schedule(earliest, None, WindowSource.URGENT)
    assert short.renew_after <= plan.scheduled_at <= short.urgent_after


@pytest.mark.parametrize(
    ("window", "issued", "source"),
    [
        (SuggestedWindow(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 3, tzinfo=UTC)), ISSUED, "suggested"),
        (SuggestedWindow(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 3, tzinfo=UTC)), ISSUED, "auto"),
    ],
    ids=[
        "window after issue: renew inside it, earlier than renewAfter (RFC 9773 early renewal)",
        "window before this certificate was issued: already served, back to the slots",
    ],
)
def test_suggested_window(window: SuggestedWindow, issued: datetime, source: str) -> None:
    th = thresholds(issued, issued + timedelta(days=90), POLICY)
    plan = first_attempt(th, POLICY, Windows(window), device_id=DEVICE, cert_name="identity")
    assert plan.source == source
    if source == "suggested":
        assert window.start <= plan.scheduled_at < window.end
        assert plan.scheduled_at < th.renew_after
    else:
        assert th.renew_after <= plan.scheduled_at <= th.urgent_after


# -- next attempt ----------------------------------------------------------------------------------


def plan_with_window(now_inside: bool) -> tuple[Schedule, datetime]:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    assert plan.window is not None
    now = plan.window.start + timedelta(minutes=1) if now_inside else plan.window.end + timedelta(hours=1)
    return plan, now + timedelta(days=1)


def test_no_failure_planned_in_future_is_the_plan() -> None:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    nxt = next_attempt(
        decision(Action.WAIT), plan, Windows(), RETRY, device_id=DEVICE, cert_name="identity", now=ISSUED
    )
    assert nxt.at == plan.scheduled_at


def test_missed_plan_runs_now_when_the_window_is_open() -> None:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    assert plan.window is not None
    now = plan.window.end - timedelta(seconds=5)
    if now < plan.scheduled_at:  # the device point may sit at the very end of the slot
        now = plan.scheduled_at + timedelta(seconds=1)
    nxt = next_attempt(decision(Action.RENEW), plan, Windows(), RETRY, device_id=DEVICE, cert_name="identity", now=now)
    assert nxt.at == now


def test_missed_plan_outside_the_window_waits_for_the_next_one() -> None:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    assert plan.window is not None
    now = plan.window.end + timedelta(hours=1)
    nxt = next_attempt(decision(Action.RENEW), plan, Windows(), RETRY, device_id=DEVICE, cert_name="identity", now=now)
    assert nxt.window is not None
    assert nxt.window.start == plan.window.start + timedelta(days=1)
    assert nxt.at in nxt.window


@pytest.mark.parametrize("action", [Action.RENEW_URGENT, Action.RENEW_EXPIRED], ids=["urgent", "expired"])
def test_urgent_and_expired_run_now_whatever_the_window(action: Action) -> None:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    now = TH.urgent_after + timedelta(minutes=3)
    nxt = next_attempt(decision(action), plan, Windows(), RETRY, device_id=DEVICE, cert_name="identity", now=now)
    assert (nxt.at, nxt.window) == (now, None)


def test_reissue_waits_for_the_devices_next_window_point_not_now() -> None:
    plan = first_attempt(TH, POLICY, Windows(), device_id=DEVICE, cert_name="identity")
    now = ISSUED + timedelta(days=10)
    nxt = next_attempt(
        decision(Action.REISSUE), plan, Windows(), RETRY, device_id=DEVICE, cert_name="identity", now=now
    )
    assert nxt.window is not None
    assert now <= nxt.at < now + timedelta(days=1)
    assert nxt.at in nxt.window


def test_backoff_stays_inside_the_window() -> None:
    window = DailyWindow(time(2), timedelta(hours=2), UTC)
    now = datetime(2026, 5, 20, 2, 10, tzinfo=UTC)
    plan = Schedule(now, Interval(now.replace(minute=0), now.replace(hour=4, minute=0)), WindowSource.TWIN)
    for failures in (1, 2, 3):
        nxt = next_attempt(
            decision(Action.RENEW), plan, Windows(window), RETRY,
            device_id=DEVICE, cert_name="identity", now=now, failures=failures, failures_in_window=failures - 1,
        )  # fmt: skip
        assert now <= nxt.at <= now + RETRY.initial_delay * 2 ** (failures - 1)
        assert nxt.window == plan.window


def test_retry_after_is_honoured() -> None:
    window = DailyWindow(time(2), timedelta(hours=2), UTC)
    now = datetime(2026, 5, 20, 2, 10, tzinfo=UTC)
    plan = Schedule(now, None, WindowSource.TWIN)
    nxt = next_attempt(
        decision(Action.RENEW), plan, Windows(window), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=1, retry_after=timedelta(seconds=90),
    )  # fmt: skip
    assert nxt.at >= now + timedelta(seconds=90)


def test_too_many_failures_in_a_window_wait_for_the_next_window() -> None:
    window = DailyWindow(time(2), timedelta(hours=2), UTC)
    now = datetime(2026, 5, 20, 2, 10, tzinfo=UTC)
    nxt = next_attempt(
        decision(Action.RENEW), Schedule(now, None, WindowSource.TWIN), Windows(window), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=3, failures_in_window=3,
    )  # fmt: skip
    assert nxt.window == Interval(datetime(2026, 5, 21, 2, tzinfo=UTC), datetime(2026, 5, 21, 4, tzinfo=UTC))
    assert "3 attempts failed" in nxt.reason


def test_backoff_that_runs_past_the_window_moves_to_the_next_one() -> None:
    window = DailyWindow(time(2), timedelta(hours=2), UTC)
    now = datetime(2026, 5, 20, 3, 59, 50, tzinfo=UTC)
    nxt = next_attempt(
        decision(Action.RENEW), Schedule(now, None, WindowSource.TWIN), Windows(window), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=1, retry_after=timedelta(minutes=1),
    )  # fmt: skip
    assert nxt.at >= datetime(2026, 5, 21, 2, tzinfo=UTC)


def test_backoff_never_waits_past_the_urgency_point() -> None:
    window = DailyWindow(time(0), timedelta(hours=24), UTC)
    now = TH.urgent_after - timedelta(seconds=30)
    nxt = next_attempt(
        decision(Action.RENEW), Schedule(now, None, WindowSource.TWIN), Windows(window), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=1, retry_after=timedelta(hours=2),
    )  # fmt: skip
    assert nxt.at == TH.urgent_after


def test_urgent_failures_back_off_without_windows_and_honour_retry_after() -> None:
    now = TH.urgent_after + timedelta(hours=1)
    nxt = next_attempt(
        decision(Action.RENEW_URGENT), Schedule(now, None, WindowSource.URGENT), Windows(), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=20, failures_in_window=20,
        retry_after=timedelta(seconds=30),
    )  # fmt: skip
    assert nxt.window is None
    assert now + timedelta(seconds=30) <= nxt.at <= now + RETRY.max_delay


def test_after_a_suggested_window_retries_use_the_auto_slots() -> None:
    suggested = SuggestedWindow(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 1, 2, tzinfo=UTC))
    plan = first_attempt(TH, POLICY, Windows(suggested), device_id=DEVICE, cert_name="identity")
    now = datetime(2026, 4, 2, tzinfo=UTC)  # the window is over and renewal failed within it
    nxt = next_attempt(
        decision(Action.WAIT), plan, Windows(suggested), RETRY,
        device_id=DEVICE, cert_name="identity", now=now, failures=3, failures_in_window=3,
    )  # fmt: skip
    assert nxt.window is not None
    assert nxt.window.length == timedelta(hours=1)
    assert nxt.window.start.hour == auto_slot(DEVICE, 24)


# -- backoff ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "jitter", "retry_after", "expected"),
    [
        (1, 0.999999, None, timedelta(seconds=1) * 0.999999),
        (2, 0.5, None, timedelta(seconds=1)),
        (4, 0.5, None, timedelta(seconds=4)),
        (20, 0.5, None, timedelta(minutes=5)),
        (20, 0.0, None, timedelta(0)),
        (1, 0.1, timedelta(seconds=7), timedelta(seconds=7)),
        (10, 0.9, timedelta(seconds=7), timedelta(seconds=460.8)),
        (10_000, 0.5, None, timedelta(minutes=5)),
    ],
    ids=[
        "first failure: up to initialDelay",
        "second: half of 2 s",
        "fourth: half of 8 s",
        "capped at maxDelay",
        "full jitter reaches zero",
        "Retry-After is a floor",
        "a longer backoff beats Retry-After",
        "huge failure counts do not overflow",
    ],
)
def test_backoff_delay(failures: int, jitter: float, retry_after: timedelta | None, expected: timedelta) -> None:
    assert backoff_delay(failures, RETRY, jitter=jitter, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DailyWindow(time(2), timedelta(0), UTC), "1 minute"),
        (lambda: DailyWindow(time(2), timedelta(hours=25), UTC), "24 hours"),
        (lambda: DailyWindow(time(2), timedelta(hours=1), UTC, frozenset()), "weekday"),
        (lambda: SuggestedWindow(ISSUED, ISSUED), "end after"),
        (lambda: AutoSlots(0), "1 to 1440"),
        (lambda: RetryPolicy(initial_delay=timedelta(0)), "initialDelay"),
        (lambda: RetryPolicy(max_attempts_per_window=0), "at least 1"),
    ],
    ids=[
        "empty window",
        "window over a day",
        "no weekdays",
        "empty suggested window",
        "no slots",
        "zero delay",
        "no attempts",
    ],
)
def test_windows_that_can_never_be_satisfied_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_an_always_open_window_renews_at_the_spread_instant_not_a_day_later() -> None:
    """Short-lived certificates with autoWindow.slots 1: the window is open, so the device goes at once."""
    short = thresholds(ISSUED, ISSUED + timedelta(minutes=2), POLICY)
    plan = first_attempt(short, POLICY, Windows(auto=AutoSlots(1)), device_id=DEVICE, cert_name="identity")
    assert plan.scheduled_at == spread_instant(short, POLICY, device_id=DEVICE, cert_name="identity")
    assert short.renew_after <= plan.scheduled_at <= short.urgent_after


def test_without_spread_devices_wait_for_their_own_point_instead_of_meeting_at_renew_after() -> None:
    policy = RenewalPolicy(spread=Percent(Decimal(0)))
    issued = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # renewAfter falls in the middle of slot 9
    th = thresholds(issued, issued + timedelta(days=90), policy)
    plans = [
        first_attempt(th, policy, Windows(), device_id=f"device-{n:05d}", cert_name="identity").scheduled_at
        for n in range(2000)
    ]
    assert max(plans.count(at) for at in set(plans)) <= 2
