"""The benchmark scripts run here (as in CI) and print figures they measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_renewal_benchmark_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "renewal.py"), "--renewals", "3", "--burst", "25", "--window", "1",
         "--json"],
        capture_output=True, text=True, check=False, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert set(figures["modes"]) == {"vault-ca", "vault-managed", "vault-fetch"}
    assert figures["modes"]["vault-ca"]["requestsPerRenewalAfterFirst"] == 1  # the sign, once the CA is cached
    for mode in figures["modes"].values():
        assert 0 < mode["medianMs"] <= mode["p95Ms"]
    assert figures["burst"]["devices"] == 25
    assert figures["burst"]["throttledRequests"] > 0  # 25 creates against a budget of 20 per window


def test_agent_benchmark_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "agent.py"), "--idle", "2", "--json"],
        capture_output=True, text=True, check=False, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert 0 < figures["startupSecondsToFirstDecision"] < 60
    assert figures["rssMiBAfterStartup"] > 10
    assert figures["rssMiBAfterRenewal"] > 10
    assert figures["idleSeconds"] == 2
    assert figures["cpuSecondsWhileIdle"] >= 0
