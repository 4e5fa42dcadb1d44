"""The agent's footprint: memory after start-up and after a renewal, start-up time, idle CPU.

Run: .venv/bin/python benchmarks/agent.py [--idle 60] [--json]

It starts the sandbox's emulators in this process and `edgecert run` as a separate process (as IoT
Edge runs the module), for one vault-ca device whose certificate is not due. Measured from the
process's /proc entries: resident memory once the agent has reported its first decision, start-up
time from exec to that first report, resident memory after a renewal (renewNow), and CPU seconds
used over `--idle` seconds with nothing to do. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from edgecert.sandbox.fleet import MODULE, Sandbox
from edgecert.sandbox.servers import LoopThread

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out")


def measure(idle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(Path(tmp), lifetime=timedelta(seconds=60)).start()
        try:
            device = sandbox.add_device("bench-agent", "vault-ca", first=(timedelta(days=1), timedelta(days=30)),
                                        validity_days=30)  # fmt: skip
            helper_loop = LoopThread("helper")
            stop = asyncio.Event()
            helper = asyncio.run_coroutine_threadsafe(device.helper.run(stop), helper_loop.loop)
            env = {**os.environ, **sandbox.agent_environment(device, metrics_port="0")}
            started = time.monotonic()
            process = subprocess.Popen([sys.executable, "-m", "edgecert", "run"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

            def state() -> str | None:
                identity = (sandbox.reported(device).get("certificates") or {}).get("identity") or {}
                return identity.get("state")

            wait_for(lambda: state() == "valid", 60)
            startup = time.monotonic() - started
            after_start = rss_mib(process.pid)
            answer = sandbox.hub.invoke_method(device.device_id, MODULE, "renewNow", {"force": True}, timeout=60)
            if answer.status != 200:
                raise RuntimeError(f"renewNow answered {answer.status}")
            wait_for(lambda: state() == "valid", 60)
            after_renewal = rss_mib(process.pid)
            time.sleep(2)  # let the last reports settle before the idle measurement
            before = cpu_seconds(process.pid)
            time.sleep(idle)
            idle_cpu = cpu_seconds(process.pid) - before
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
            helper_loop.loop.call_soon_threadsafe(stop.set)
            helper.result(timeout=10)
            helper_loop.stop()
        finally:
            sandbox.stop()
    return {
        "startupSecondsToFirstDecision": round(startup, 2),
        "rssMiBAfterStartup": round(after_start, 1),
        "rssMiBAfterRenewal": round(after_renewal, 1),
        "idleSeconds": idle,
        "cpuSecondsWhileIdle": round(idle_cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle time to measure CPU over")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.idle)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        print(f"{name:<32} {value}")


if __name__ == "__main__":
    main()
