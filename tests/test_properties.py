"""Hypothesis properties of the pure core, and the fleet-spread figure for 100,000 devices."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecert.core.certinfo import CertFacts
from edgecert.core.policy import Action, RenewalPolicy, renewal_decision, thresholds
from edgecert.core.schedule import (
    AutoSlots,
    DailyWindow,
    Windows,
    auto_slot,
    first_attempt,
    stable_fraction,
)
from edgecert.core.units import BeforeExpiry, Percent
from edgecert.fleet.spread import first_attempts, peak_in_interval

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
URGENCY = {Action.WAIT: 0, Action.RENEW: 1, Action.RENEW_URGENT: 2, Action.RENEW_EXPIRED: 3}

instants = st.integers(min_value=0, max_value=20 * 365 * 86400).map(lambda s: EPOCH + timedelta(seconds=s))
lifetimes = st.integers(min_value=60, max_value=5 * 365 * 86400).map(lambda s: timedelta(seconds=s))
percents = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("99.999999"), places=6).map(Percent)
befores = st.integers(min_value=1, max_value=10 * 365 * 86400).map(lambda s: BeforeExpiry(timedelta(seconds=s)))
threshold_values = st.one_of(percents, befores)
spreads = st.one_of(
    st.decimals(min_value=Decimal(0), max_value=Decimal("99.9"), places=1).map(Percent),
    st.integers(min_value=0, max_value=400 * 86400).map(lambda s: timedelta(seconds=s)),
)
device_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.:_", min_size=1, max_size=40)
cert_names = st.sampled_from(["identity", "edge-ca", "opcua-client"])
daily_windows = st.builds(
    DailyWindow,
    start=st.builds(time, st.integers(0, 23), st.integers(0, 59)),
    length=st.integers(min_value=1, max_value=24 * 60).map(lambda m: timedelta(minutes=m)),
    tz=st.sampled_from(
        [ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"), ZoneInfo("America/Chicago"), ZoneInfo("Asia/Kolkata")]
    ),
    days=st.one_of(st.none(), st.frozensets(st.integers(0, 6), min_size=1)),
)
windows = st.one_of(
    st.builds(Windows, explicit=daily_windows, auto=st.just(AutoSlots())),
    st.builds(Windows, explicit=st.none(), auto=st.integers(1, 1440).map(AutoSlots)),
)


def facts(not_before: datetime, lifetime: timedelta) -> CertFacts:
    return CertFacts(
        subject="CN=device",
        common_name="device",
        issuer="CN=ca",
        serial="1",
        not_before=not_before,
        not_after=not_before + lifetime,
        thumbprint_sha256="00",
        x5t="AA",
        key_type="ec-p256",
        dns_names=(),
        ip_addresses=(),
        uris=(),
        ekus=(),
        is_ca=False,
        path_length=None,
        self_signed=False,
    )


@given(not_before=instants, lifetime=lifetimes, renew_at=threshold_values, urgent_at=threshold_values)
def test_renew_after_lies_within_the_validity_period(
    not_before: datetime, lifetime: timedelta, renew_at: Percent | BeforeExpiry, urgent_at: Percent | BeforeExpiry
) -> None:
    th = thresholds(not_before, not_before + lifetime, RenewalPolicy(renew_at, urgent_at))
    assert not_before <= th.renew_after <= not_before + lifetime
    assert th.renew_after <= th.urgent_after <= not_before + lifetime
    assert th.renew_after.microsecond == 0


@given(
    not_before=instants,
    lifetime=lifetimes,
    renew_at=threshold_values,
    urgent_at=threshold_values,
    spread=spreads,
    windows=windows,
    device_id=device_ids,
    cert_name=cert_names,
)
@settings(max_examples=300)
def test_scheduled_at_lies_between_renew_after_and_urgent_after(
    not_before: datetime,
    lifetime: timedelta,
    renew_at: Percent | BeforeExpiry,
    urgent_at: Percent | BeforeExpiry,
    spread: Percent | timedelta,
    windows: Windows,
    device_id: str,
    cert_name: str,
) -> None:
    policy = RenewalPolicy(renew_at, urgent_at, spread)
    th = thresholds(not_before, not_before + lifetime, policy)
    plan = first_attempt(th, policy, windows, device_id=device_id, cert_name=cert_name)
    assert th.renew_after <= plan.scheduled_at <= th.urgent_after
    if plan.window is not None:
        assert plan.scheduled_at in plan.window


@given(
    not_before=instants,
    lifetime=lifetimes,
    renew_at=threshold_values,
    urgent_at=threshold_values,
    offsets=st.lists(st.integers(min_value=-86400 * 400, max_value=86400 * 2000), min_size=2, max_size=8),
)
def test_decision_is_monotonic_in_now(
    not_before: datetime,
    lifetime: timedelta,
    renew_at: Percent | BeforeExpiry,
    urgent_at: Percent | BeforeExpiry,
    offsets: list[int],
) -> None:
    cert = facts(not_before, lifetime)
    policy = RenewalPolicy(renew_at, urgent_at)
    ranks = [
        URGENCY[renewal_decision(cert, policy, now=not_before + timedelta(seconds=s)).action] for s in sorted(offsets)
    ]
    assert ranks == sorted(ranks)


@given(device_id=device_ids, cert_name=cert_names, slots=st.integers(1, 1440), windows=windows)
def test_a_devices_offset_and_slot_are_stable_across_calls(
    device_id: str, cert_name: str, slots: int, windows: Windows
) -> None:
    assert stable_fraction("spread", device_id, cert_name) == stable_fraction("spread", device_id, cert_name)
    assert 0 <= stable_fraction("spread", device_id, cert_name) < 1
    assert auto_slot(device_id, slots) == auto_slot(device_id, slots)
    assert 0 <= auto_slot(device_id, slots) < slots
    policy = RenewalPolicy()
    th = thresholds(EPOCH, EPOCH + timedelta(days=90), policy)
    plans = {first_attempt(th, policy, windows, device_id=device_id, cert_name=cert_name) for _ in range(3)}
    assert len(plans) == 1


def test_offsets_are_pinned_so_an_upgrade_does_not_reroll_the_fleet() -> None:
    """Changing the hash would move every device's renewal at once; these values must never change."""
    assert stable_fraction("spread", "device-000001", "identity") == 0.6053716748951414
    assert auto_slot("device-000001", 24) == 0
    assert stable_fraction("window-offset", "device-000001") == 0.2665595560528461
    # and the documented construction: SHA-256 over length-prefixed UTF-8 parts, first 64 bits
    digest = hashlib.sha256()
    for part in ("spread", "device-000001", "identity"):
        digest.update(len(part).to_bytes(4, "big") + part.encode())
    assert stable_fraction("spread", "device-000001", "identity") == int.from_bytes(digest.digest()[:8], "big") / 2**64


def fleet_ids(seed: int, style: str, count: int = 10_000) -> list[str]:
    rng = random.Random(seed)
    prefix = f"plant{rng.randrange(100)}-line{rng.randrange(10)}"
    make = {
        "uuid": lambda i: f"{rng.getrandbits(128):032x}",
        "serial": lambda i: f"{prefix}-{rng.randrange(10**6) + i:07d}",
        "hostname": lambda i: f"edge-{prefix}-{i}.factory.local",
    }[style]
    return [make(i) for i in range(count)]


ID_STYLES = st.sampled_from(["uuid", "serial", "hostname"])


@given(seed=st.integers(min_value=0, max_value=2**32 - 1), style=ID_STYLES, slots=st.integers(2, 12))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_auto_slots_spread_10000_device_ids_within_15_percent_of_uniform(seed: int, style: str, slots: int) -> None:
    """Up to 12 slots, ±15 % is at least 4.5 sigma of a fair draw: a sound hash passes, a weak one fails at once.

    (At 24 slots ±15 % is only 3.1 sigma: even a perfect hash misses it for 4 % of id sets, so the default
    24 slots are checked by goodness of fit below instead.)
    """
    counts = Counter(auto_slot(device_id, slots) for device_id in fleet_ids(seed, style))
    expected = 10_000 / slots
    assert len(counts) == slots
    worst = max(abs(c - expected) / expected for c in counts.values())
    assert worst <= 0.15, f"a slot is {worst:.1%} off uniform"


@given(seed=st.integers(min_value=0, max_value=2**32 - 1), style=ID_STYLES)
@settings(max_examples=20, deadline=None, derandomize=True)
def test_default_24_slots_fit_a_uniform_distribution(seed: int, style: str) -> None:
    """Chi-square with 23 degrees of freedom below 49.7 (p = 0.001), and no slot off by more than 25 %."""
    counts = Counter(auto_slot(device_id, 24) for device_id in fleet_ids(seed, style))
    expected = 10_000 / 24
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in range(24))
    assert chi2 < 49.73, f"chi-square {chi2:.1f}"
    assert max(abs(c - expected) / expected for c in counts.values()) <= 0.25


def test_fleet_of_100000_devices_issued_together_never_exceeds_12_first_attempts_per_10_seconds(
    figure: Callable[[str], None],
) -> None:
    policy = RenewalPolicy()
    windows = Windows()
    issued = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    th = thresholds(issued, issued + timedelta(days=90), policy)
    devices = [f"device-{n:06d}" for n in range(100_000)]
    times = first_attempts(th, policy, windows, devices, cert_name="identity")
    peak = peak_in_interval(times)
    no_spread = RenewalPolicy(spread=Percent(Decimal(0)))
    peak_without_spread = peak_in_interval(first_attempts(th, no_spread, windows, devices, cert_name="identity"))
    span_days = (max(times) - min(times)) / timedelta(days=1)
    figure(
        f"fleet spread: 100,000 devices, 90-day certificates issued together, defaults: peak {peak} first attempts "
        f"per 10 s over {span_days:.1f} days; without spread: peak {peak_without_spread}"
    )
    assert peak <= 12
    assert peak_without_spread > peak  # the spread is what flattens it, not the slots alone


def test_a_spread_longer_than_the_renewal_span_does_not_pile_devices_on_the_urgency_point(
    figure: Callable[[str], None],
) -> None:
    """Spread 30 % of 90 days (27 d) exceeds renewAt 80 % .. urgentAt 95 % (13.5 d); one shared 4 h window."""
    policy = RenewalPolicy(spread=Percent(Decimal(30)))
    windows = Windows(DailyWindow(time(1, 0), timedelta(hours=4), ZoneInfo("Europe/Berlin")))
    issued = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    th = thresholds(issued, issued + timedelta(days=90), policy)
    plans = [
        first_attempt(th, policy, windows, device_id=f"device-{n:05d}", cert_name="identity") for n in range(20_000)
    ]
    at_urgency = sum(plan.scheduled_at == th.urgent_after for plan in plans)
    peak = peak_in_interval(plan.scheduled_at for plan in plans)
    figure(f"spread 30% in a shared 4h window, 20,000 devices: peak {peak} per 10 s, {at_urgency} at urgentAfter")
    assert at_urgency == 0
    assert all(plan.window is not None for plan in plans)
    assert peak <= 12
