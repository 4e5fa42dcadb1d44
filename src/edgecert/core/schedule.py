"""When a device attempts a renewal: spread, windows, per-device offsets and backoff.

Pure. Randomness comes from `stable_fraction`, a SHA-256 of the device id and certificate name, so
the schedule is the same after a restart while a fleet still spreads out (STYLE.md §1).

The pieces, in the order they apply (DESIGN.md, "Renewal policy"):

1. spread: a device's own earliest instant is `renewAfter + f × spread`, never past `urgentAfter`;
2. window: attempts happen only inside the device's window — a daily twin window, an absolute
   server-suggested window (RFC 9773 semantics) or an automatic slot from a hash of the device id —
   at a stable per-device offset into each occurrence;
3. urgency: from `urgentAfter` on, windows are ignored;
4. backoff: after a failure, exponential backoff with full jitter that honours `Retry-After`, never
   waits past `urgentAfter`, and after `maxAttemptsPerWindow` failures waits for the next window.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum

from edgecert.core.policy import Action, Decision, RenewalPolicy, Thresholds
from edgecert.core.units import Percent, share_of

__all__ = [
    "AutoSlots",
    "DailyWindow",
    "Interval",
    "NextAttempt",
    "RetryPolicy",
    "Schedule",
    "SuggestedWindow",
    "WindowSource",
    "Windows",
    "auto_slot",
    "backoff_delay",
    "first_attempt",
    "longest_closed_gap",
    "next_attempt",
    "occurrences",
    "spread_instant",
    "stable_fraction",
]

DAY = timedelta(days=1)


class WindowSource(StrEnum):
    """Where the window that governs an attempt came from (reported as `window.source`)."""

    TWIN = "twin"
    SUGGESTED = "suggested"
    AUTO = "auto"
    URGENT = "urgent"


@dataclass(frozen=True, slots=True)
class Interval:
    """A half-open span of time [start, end), UTC."""

    start: datetime
    end: datetime

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, datetime) and self.start <= instant < self.end

    @property
    def length(self) -> timedelta:
        """end - start."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """A window that opens every day (or on `days`) at local wall-clock `start` for `length`.

    `length` is elapsed time (1 minute to 24 hours), so a window across a DST change is as long as
    any other. `days` holds ISO weekday numbers of the local start date, 0 = Monday.
    """

    start: time
    length: timedelta
    tz: tzinfo
    days: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if not timedelta(minutes=1) <= self.length <= DAY:
            raise ValueError("a daily window lasts from 1 minute to 24 hours")
        if self.days is not None and (not self.days or not self.days <= set(range(7))):
            raise ValueError("a daily window needs at least one weekday, numbered 0 (Mon) to 6")


@dataclass(frozen=True, slots=True)
class SuggestedWindow:
    """An absolute window suggested by the server (ACME ARI semantics, RFC 9773 §4.2).

    It applies to a certificate issued before the window starts: the device renews at a time drawn
    (stably) from inside it, or at once if the window has passed. A certificate issued at or after
    its start is already the replacement, and the window no longer applies to it.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("a suggested window must end after it starts")

    def applies_to(self, not_before: datetime) -> bool:
        """True when a certificate with this notBefore predates the window."""
        return not_before < self.start


@dataclass(frozen=True, slots=True)
class AutoSlots:
    """Automatic daily slots: the UTC day split into `slots`; a device's slot is a hash of its id."""

    slots: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 1440:
            raise ValueError("autoWindow.slots is from 1 to 1440")

    @property
    def slot_length(self) -> timedelta:
        """The length of one slot."""
        return DAY / self.slots


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows a device uses: an explicit one, if any, and the automatic slots otherwise.

    Retries after a suggested window has passed fall back to the automatic slots.
    """

    explicit: DailyWindow | SuggestedWindow | None = None
    auto: AutoSlots = field(default_factory=AutoSlots)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between failed renewal attempts."""

    initial_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=10)
    max_attempts_per_window: int = 8

    def __post_init__(self) -> None:
        if self.initial_delay <= timedelta(0) or self.max_delay < self.initial_delay:
            raise ValueError("retry delays need 0 < initialDelay <= maxDelay")
        if self.max_attempts_per_window < 1:
            raise ValueError("maxAttemptsPerWindow is at least 1")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A device's planned first attempt for one certificate, and the window it falls in."""

    scheduled_at: datetime
    window: Interval | None
    source: WindowSource


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """When to try next, inside which window occurrence (None when urgency ignores windows), and why."""

    at: datetime
    window: Interval | None
    reason: str


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) that depends only on `parts` (SHA-256, length-prefixed, first 64 bits)."""
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8")
        digest.update(len(raw).to_bytes(4, "big"))
        digest.update(raw)
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


def auto_slot(device_id: str, slots: int) -> int:
    """The automatic slot of a device: a stable hash of its id modulo `slots`."""
    digest = hashlib.sha256(b"edgecert-slot\x00" + device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % slots


def spread_instant(th: Thresholds, policy: RenewalPolicy, *, device_id: str, cert_name: str) -> datetime:
    """A device's own earliest renewal instant: renewAfter + f × spread.

    A spread longer than the renewal span (urgentAfter - renewAfter) is shortened to it rather than
    cut off at urgentAfter: cutting would put every device whose share fell past it on one instant.
    """
    span = share_of(th.lifetime, policy.spread) if isinstance(policy.spread, Percent) else policy.spread
    span = min(span, th.urgent_after - th.renew_after)
    if span <= timedelta(0):
        return th.renew_after
    f = stable_fraction("spread", device_id, cert_name)
    return (th.renew_after + span * f).replace(microsecond=0)


def occurrences(window: DailyWindow | AutoSlots, device_id: str, *, since: datetime) -> Iterator[Interval]:
    """The device's window occurrences that end after `since`, in order (an endless iterator)."""
    if isinstance(window, AutoSlots):
        slot_start = window.slot_length * auto_slot(device_id, window.slots)
        day = datetime.combine(since.astimezone(UTC).date() - DAY, time(0), tzinfo=UTC)
        while True:
            start = day + slot_start
            if start + window.slot_length > since:
                yield Interval(start, start + window.slot_length)
            day += DAY
    local_day = since.astimezone(window.tz).date() - DAY
    while True:
        if window.days is None or local_day.weekday() in window.days:
            start = datetime.combine(local_day, window.start, tzinfo=window.tz).astimezone(UTC)
            if start + window.length > since:
                yield Interval(start, start + window.length)
        local_day += DAY


def longest_closed_gap(window: DailyWindow | AutoSlots) -> timedelta:
    """The longest time between the end of one occurrence and the start of the next."""
    if isinstance(window, AutoSlots):
        return DAY - window.slot_length
    days = sorted(window.days) if window.days is not None else list(range(7))
    gaps = [(days[(i + 1) % len(days)] - d) % 7 or 7 for i, d in enumerate(days)]
    return max(gaps) * DAY - window.length


def device_point(interval: Interval, device_id: str) -> datetime:
    """The device's stable offset into a window occurrence, in whole seconds, inside the interval."""
    f = stable_fraction("window-offset", device_id)
    point = (interval.start + interval.length * f).replace(microsecond=0)
    return max(min(point, interval.end - timedelta(seconds=1)), interval.start)


def first_attempt(
    th: Thresholds,
    policy: RenewalPolicy,
    windows: Windows,
    *,
    device_id: str,
    cert_name: str,
) -> Schedule:
    """Plan a device's first renewal attempt for a certificate (independent of `now`).

    With a daily or automatic window it is the device's point in the window open at its spread
    instant (the spread instant itself when that point has passed) or in the next occurrence; if that
    is past urgentAfter, the device's last window point before urgentAfter;
    if the window never opens in between, the spread instant itself. So it lies in [renewAfter,
    urgentAfter]. With a suggested window that applies to the certificate it is a stable point in
    the part of that window before urgentAfter (RFC 9773 lets the server ask for an early renewal).
    """
    explicit = windows.explicit
    if (
        isinstance(explicit, SuggestedWindow)
        and explicit.applies_to(th.not_before)
        and explicit.start < th.urgent_after
    ):
        # only the part of the window before urgency counts; a window that starts after it is ignored
        usable = Interval(explicit.start, min(explicit.end, th.urgent_after))
        f = stable_fraction("suggested", device_id, cert_name)
        point = (usable.start + usable.length * f).replace(microsecond=0)
        return Schedule(point, Interval(explicit.start, explicit.end), WindowSource.SUGGESTED)
    earliest = spread_instant(th, policy, device_id=device_id, cert_name=cert_name)
    # a spread instant is the device's own, so a window open at it may be used at once; without spread
    # every device shares renewAfter and must wait for its own point
    plan = _next_point(th, windows, device_id, earliest, open_now=earliest != th.renew_after)
    if plan.window is not None:
        return plan
    # No window point between the spread instant and urgency: take the device's last one before
    # urgency instead of piling every such device onto the urgency instant.
    return _last_point(th, windows, device_id) or Schedule(earliest, None, WindowSource.URGENT)


def backoff_delay(
    failures: int,
    retry: RetryPolicy,
    *,
    jitter: float,
    retry_after: timedelta | None = None,
) -> timedelta:
    """The wait after the `failures`-th consecutive failure (1-based).

    Exponential with full jitter (`jitter` in [0, 1) scales the whole ceiling, as in AWS's
    "Exponential Backoff and Jitter"), the ceiling doubling from `initial_delay` up to `max_delay`;
    never shorter than the server's `Retry-After`.
    """
    exponent = max(failures, 1) - 1
    doublings_to_cap = math.log2(retry.max_delay / retry.initial_delay)
    ceiling = retry.max_delay if exponent >= doublings_to_cap else retry.initial_delay * (1 << exponent)
    delay = ceiling * jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def next_attempt(
    decision: Decision,
    schedule: Schedule,
    windows: Windows,
    retry: RetryPolicy,
    *,
    device_id: str,
    cert_name: str,
    now: datetime,
    failures: int = 0,
    failures_in_window: int = 0,
    retry_after: timedelta | None = None,
) -> NextAttempt:
    """When to attempt next, given the decision, the plan, the failures so far and `now`.

    - no failure yet: the planned instant; a missed plan (device was off) runs at once if a window
      is open, else at the device's point in the next window; urgent and expired certificates run
      at once; a re-issue (the configuration changed) runs at the device's next window point, so a
      fleet-wide change does not flood Key Vault.
    - after failures: backoff (full jitter, honouring `Retry-After`), kept inside the current
      window; after `max_attempts_per_window` failures in it, the next window. Never past
      urgentAfter while not urgent; once urgent, backoff alone paces the attempts.
    """
    th = decision.thresholds
    urgent = decision.action in (Action.RENEW_URGENT, Action.RENEW_EXPIRED) or now >= th.urgent_after
    if failures <= 0:
        if urgent:
            return NextAttempt(now, None, "certificate is past urgentAt or expired: renewing now")
        if decision.action is Action.REISSUE:
            plan = _next_point(th, _retry_windows(windows), device_id, now)
            return NextAttempt(
                plan.scheduled_at,
                plan.window,
                "configuration changed: re-issuing in the device's next window",
            )
        if schedule.scheduled_at >= now:
            return NextAttempt(schedule.scheduled_at, schedule.window, "planned renewal")
        if schedule.window is not None and now in schedule.window:
            return NextAttempt(now, schedule.window, "planned renewal is due")
        plan = _next_point(th, _retry_windows(windows), device_id, now)
        return NextAttempt(plan.scheduled_at, plan.window, "planned time missed: next window")
    jitter = stable_fraction("backoff", device_id, cert_name, str(failures))
    delay = backoff_delay(failures, retry, jitter=jitter, retry_after=retry_after)
    if urgent:
        return NextAttempt(now + delay, None, f"urgent: retry {failures + 1} after {delay}")
    retry_windows = _retry_windows(windows)
    current = _current_interval(retry_windows, device_id, now)
    at = now + delay
    if failures_in_window < retry.max_attempts_per_window and current is not None and at in current:
        return NextAttempt(min(at, th.urgent_after), current, f"retry {failures + 1} after {delay}")
    after = current.end if current is not None else now
    plan = _next_point(th, retry_windows, device_id, max(after, at))
    why = (
        f"{failures_in_window} attempts failed in this window: next window"
        if failures_in_window >= retry.max_attempts_per_window
        else "backoff runs past the window: next window"
    )
    return NextAttempt(plan.scheduled_at, plan.window, why)


def _retry_windows(windows: Windows) -> Windows:
    if isinstance(windows.explicit, SuggestedWindow):
        return Windows(None, windows.auto)
    return windows


def _periodic(windows: Windows) -> tuple[DailyWindow | AutoSlots, WindowSource]:
    """The repeating window in force: the twin's daily window, else the automatic slots."""
    if isinstance(windows.explicit, DailyWindow):
        return windows.explicit, WindowSource.TWIN
    return windows.auto, WindowSource.AUTO


def _current_interval(windows: Windows, device_id: str, now: datetime) -> Interval | None:
    periodic, _source = _periodic(windows)
    first = next(occurrences(periodic, device_id, since=now))
    return first if now in first else None


def _next_point(
    th: Thresholds, windows: Windows, device_id: str, earliest: datetime, *, open_now: bool = False
) -> Schedule:
    """The device's point in the first occurrence where it lies at or after `earliest`.

    With `open_now` (a spread instant, already different for every device), an occurrence that is
    open at `earliest` is used at once when the device's point in it has passed; from a shared instant
    (`now` after a configuration change) the next occurrence's point is taken instead, so a fleet does
    not act in the same second.
    """
    periodic, source = _periodic(windows)
    for interval in occurrences(periodic, device_id, since=earliest):
        point = device_point(interval, device_id)
        if open_now and point < earliest and earliest in interval:
            point = earliest
        if point >= earliest:
            if point > th.urgent_after:
                return Schedule(th.urgent_after, None, WindowSource.URGENT)
            return Schedule(point, interval, source)
    raise AssertionError("unreachable: occurrences() never ends")  # pragma: no cover


def _last_point(th: Thresholds, windows: Windows, device_id: str) -> Schedule | None:
    """The device's latest window point in [renewAfter, urgentAfter], if the window opens in that span."""
    periodic, source = _periodic(windows)
    best: Schedule | None = None
    since = max(th.renew_after, th.urgent_after - timedelta(days=8))  # a weekly window opens within 8 days
    for interval in occurrences(periodic, device_id, since=since):
        if interval.start > th.urgent_after:
            break
        point = device_point(interval, device_id)
        if th.renew_after <= point <= th.urgent_after:
            best = Schedule(point, interval, source)
    return best
