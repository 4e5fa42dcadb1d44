"""Fleet spread and schedule throughput: how many first attempts land in the busiest 10 seconds.

Run: .venv/bin/python benchmarks/fleet_spread.py [--devices 100000]
Every figure is computed in this run from the same schedule functions the agent uses.
Key Vault allows 20 certificate creates per 10 s per vault (reference/keyvault-and-identity.md §5).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from zoneinfo import ZoneInfo

from edgecert.core.policy import RenewalPolicy, thresholds
from edgecert.core.schedule import AutoSlots, DailyWindow, Windows
from edgecert.core.units import Percent
from edgecert.fleet.spread import first_attempts, peak_in_interval

ISSUED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def scenario(name: str, devices: int, policy: RenewalPolicy, windows: Windows, days: int = 90) -> None:
    th = thresholds(ISSUED, ISSUED + timedelta(days=days), policy)
    started = time.perf_counter()
    instants = first_attempts(th, policy, windows, (f"device-{n:06d}" for n in range(devices)), cert_name="identity")
    elapsed = time.perf_counter() - started
    span = (max(instants) - min(instants)) / timedelta(days=1)
    print(
        f"{name:<44} peak {peak_in_interval(instants):>5} per 10 s   span {span:5.1f} d   "
        f"{elapsed / devices * 1e6:6.1f} us per device schedule"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    n = parser.parse_args().devices
    print(f"{n:,} devices, 90-day certificates all issued at {ISSUED:%Y-%m-%d %H:%M}Z\n")
    no_spread = RenewalPolicy(spread=Percent(Decimal(0)))
    berlin = DailyWindow(clock(1, 0), timedelta(hours=4), ZoneInfo("Europe/Berlin"))
    scenario("defaults (80%, spread 10%, 24 auto slots)", n, RenewalPolicy(), Windows())
    scenario("no spread, 24 auto slots", n, no_spread, Windows())
    scenario("no spread, no slots (1 slot = all day)", n, no_spread, Windows(auto=AutoSlots(1)))
    scenario("spread 10%, one shared 4h window 01:00 Berlin", n, RenewalPolicy(), Windows(berlin))
    scenario(
        "spread 20%, one shared 4h window 01:00 Berlin", n, RenewalPolicy(spread=Percent(Decimal(20))), Windows(berlin)
    )


if __name__ == "__main__":
    main()
