"""How a fleet's first renewal attempts spread over time, computed with the agent's own schedule.

Pure: the same `first_attempt` every device runs, applied to many device ids, and the busiest
sliding interval of the result (Key Vault limits count per sliding 10 s).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta

from edgecert.core.policy import RenewalPolicy, Thresholds
from edgecert.core.schedule import Windows, first_attempt

__all__ = ["first_attempts", "peak_in_interval"]


def first_attempts(
    th: Thresholds, policy: RenewalPolicy, windows: Windows, device_ids: Iterable[str], *, cert_name: str
) -> list[datetime]:
    """Every device's planned first attempt for certificates with the same thresholds."""
    return [
        first_attempt(th, policy, windows, device_id=device_id, cert_name=cert_name).scheduled_at
        for device_id in device_ids
    ]


def peak_in_interval(instants: Iterable[datetime], width: timedelta = timedelta(seconds=10)) -> int:
    """The most instants in any half-open interval [t, t + width), t sliding over whole seconds."""
    ordered = sorted(int(instant.timestamp()) for instant in instants)
    span = int(width.total_seconds())
    return max((bisect_right(ordered, t + span - 1) - i for i, t in enumerate(ordered)), default=0)
