"""The README's main job: `edgecert sandbox --devices 5 --json` from the command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable


def test_sandbox_renews_five_devices_and_exits_0(figure: Callable[[str], None]) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "edgecert", "sandbox", "--devices", "5", "--mode", "mixed", "--json"],
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["renewed"] == 5
    assert result["failed"] == 0
    assert {d["mode"] for d in result["devices"]} == {"vault-ca", "vault-managed", "vault-fetch"}
    for device in result["devices"]:
        assert set(device) == {"deviceId", "mode", "oldThumbprint", "newThumbprint", "notAfter", "state"}
        assert device["state"] == "valid"
        assert device["newThumbprint"] != device["oldThumbprint"]
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    figure(f"edgecert sandbox --devices 5 --mode mixed: all renewed in {elapsed:.1f} s (limit 180 s)")
