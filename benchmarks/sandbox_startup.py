"""Start-up time of the sandbox emulators (the issue asks for all of them together under 2 s).

Run: .venv/bin/python benchmarks/sandbox_startup.py [--runs 10]
Each run makes the sandbox CA, starts Key Vault with identity and IoT Hub with the workload API into a
fresh temporary folder, measures until every listener is ready, then stops them. Figures are the
medians and maxima of this run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edgecert.sandbox.iothub.emulator import IotHubEmulator
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from edgecert.sandbox.pki import SandboxCA


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    figures: dict[str, list[float]] = {
        "Key Vault + identity": [],
        "IoT Hub + workload": [],
        "all together": [],
        "stop all": [],
    }
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            ca = SandboxCA()
            vault = KeyVaultEmulator(Path(tmp) / "kv", ca=ca).start()
            vault_ready = time.perf_counter()
            hub = IotHubEmulator(Path(tmp) / "hub", ca=ca).start()
            all_ready = time.perf_counter()
            hub.stop()
            vault.stop()
            stopped = time.perf_counter()
        figures["Key Vault + identity"].append(vault_ready - started)
        figures["IoT Hub + workload"].append(all_ready - vault_ready)
        figures["all together"].append(all_ready - started)
        figures["stop all"].append(stopped - all_ready)
    for name, values in figures.items():
        print(f"{name:<22} median {statistics.median(values):.3f} s   max {max(values):.3f} s   ({runs} runs)")


if __name__ == "__main__":
    main()
