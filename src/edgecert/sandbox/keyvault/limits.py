"""Key Vault throttling: per-vault budgets over a sliding 10-second window, by transaction class.

From the service-limits table (reference keyvault-and-identity.md §5). Within a class the limits are
weighted and enforced on the sum: a class has a budget of units per 10 s and each transaction costs
`budget / limit-of-its-key-type` units ("248 RSA 4,096-bit HSM-key GET transactions and 16 RSA
2,048-bit HSM-key GET transactions" fill the 4,000-unit budget of key transactions exactly). A
certificate create makes a key, so it counts as a key CREATE (presumably: the table has no
certificate row). `scale` multiplies every budget for tests; a single transaction always fits an
empty window, so a scaled limit is never below one. Tests may also shorten the window.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["WINDOW", "Budget", "Throttle", "key_create_cost", "key_transaction_cost"]

WINDOW = timedelta(seconds=10)

# class -> units per 10 s at scale 1
BUDGETS: dict[str, float] = {
    "key-create": 20,
    "key-other": 4000,
    "secret-create": 300,
    "vault-other": 4000,
}

# "All other transactions" limits per key type, software and HSM (§5)
_KEY_OTHER_LIMITS: dict[str, tuple[int, int]] = {
    "RSA-2048": (4000, 2000),
    "RSA-3072": (1000, 500),
    "RSA-4096": (500, 250),
    "EC": (4000, 2000),
}


def key_create_cost(*, hsm: bool) -> float:
    """Units of a key CREATE: 20 software or 10 HSM creates fill the budget."""
    return BUDGETS["key-create"] / (10 if hsm else 20)


def key_transaction_cost(kty: str, key_size: int | None) -> float:
    """Units of one non-create key transaction for a key of this type (`RSA-HSM`, `EC`, ...)."""
    hsm = kty.endswith("-HSM")
    family = "EC" if kty.startswith("EC") else f"RSA-{key_size or 2048}"
    software, hsm_limit = _KEY_OTHER_LIMITS.get(family, _KEY_OTHER_LIMITS["RSA-4096"])
    return BUDGETS["key-other"] / (hsm_limit if hsm else software)


@dataclass(frozen=True)
class Budget:
    """The outcome of a throttle check: allowed, or refused with when enough quota frees up."""

    allowed: bool
    retry_after: timedelta = timedelta(0)


class Throttle:
    """Sliding-window budgets of one vault (thread-safe)."""

    def __init__(self, scale: float = 1.0, window: timedelta = WINDOW) -> None:
        self._lock = threading.Lock()
        self.scale = scale
        #: The sliding window (10 s as in the service; tests may shorten it to run faster).
        self.window = window
        self._spent: dict[str, deque[tuple[float, float]]] = {name: deque() for name in BUDGETS}

    def take(self, kind: str, cost: float, now: float) -> Budget:
        """Spend `cost` units of class `kind` at `now` (seconds), or refuse without spending."""
        budget = BUDGETS[kind] * self.scale
        window = self.window.total_seconds()
        with self._lock:
            spent = self._spent[kind]
            while spent and spent[0][0] <= now - window:
                spent.popleft()
            used = sum(units for _, units in spent)
            if not spent or used + cost <= budget + 1e-9:
                spent.append((now, cost))
                return Budget(allowed=True)
            # the earliest moment enough of the window has slid out for this transaction to fit
            freed = 0.0
            for at, units in spent:
                freed += units
                if used - freed + cost <= budget + 1e-9:
                    return Budget(allowed=False, retry_after=timedelta(seconds=max(1, math.ceil(at + window - now))))
            return Budget(allowed=False, retry_after=self.window)

    def reset(self) -> None:
        """Forget every spent unit (a new limits setting starts from an empty window)."""
        with self._lock:
            for spent in self._spent.values():
                spent.clear()
