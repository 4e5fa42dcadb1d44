"""The README's main job (`./dev sandbox`) runs end to end and shows a renewal decision."""

from __future__ import annotations

import json
import subprocess
import sys


def test_main_job_runs_and_reports_a_due_renewal() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgecert.demo"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    start = done.stdout.index("{")
    end = done.stdout.index("}\n", start) + 1
    inspected = json.loads(done.stdout[start:end])
    assert inspected["action"] == "renew"
    assert inspected["lifetimeSeconds"] == 90 * 86400
    assert inspected["renewAfter"] <= inspected["scheduledAt"] <= inspected["urgentAfter"]
    assert "identity" in done.stdout
    assert "installed" in done.stdout
    assert "PRIVATE KEY" not in done.stdout
