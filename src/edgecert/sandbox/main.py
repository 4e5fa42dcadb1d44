"""`edgecert sandbox`: the README's main job, a whole fleet renewing on one machine.

It starts the Key Vault and IoT Hub emulators, sets up a vault with a fleet CA and least-privilege
roles, adds N devices with short-lived certificates, and runs N real agents (each with its own module
client and managed identity) next to emulated host helpers. It shows progress until every device
has renewed and reported `valid`, then prints a table and a summary. Exit 0 only if all renewed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecert.logs import configure_logging
from edgecert.sandbox.fleet import MODES, Sandbox, SandboxDevice

__all__ = ["run_sandbox"]


def run_sandbox(*, devices: int, mode: str, as_json: bool, timeout: float = 150.0) -> int:
    """Run the demonstration; return the exit code."""
    if devices < 1:
        print("edgecert: --devices must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgecert-sandbox-") as tmp:
        return asyncio.run(_run(Path(tmp), devices=devices, mode=mode, as_json=as_json, timeout=timeout))


async def _run(folder: Path, *, devices: int, mode: str, as_json: bool, timeout: float) -> int:
    configure_logging(sys.stderr)
    if "RuntimeLogLevel" not in os.environ:
        logging.getLogger("edgecert").setLevel(logging.WARNING)  # progress on stdout; warnings on stderr
    started = time.monotonic()
    sandbox = Sandbox(folder).start()
    try:
        fleet = [
            sandbox.add_device(f"edge-{n + 1:02d}", MODES[n % len(MODES)] if mode == "mixed" else mode)
            for n in range(devices)
        ]
        if not as_json:
            print(f"sandbox: {len(fleet)} devices, vault {sandbox.vault.url_of('fleet')}, hub {sandbox.hub.hostname}")
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(sandbox.agent(d).run(stop)) for d in fleet]
        tasks += [asyncio.ensure_future(d.helper.run(stop)) for d in fleet]
        tasks.append(asyncio.ensure_future(sandbox.auto_renew(stop)))
        try:
            rows = await _watch(sandbox, fleet, timeout=timeout, live=not as_json, tasks=tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sandbox.stop()
    renewed = sum(1 for r in rows if r["state"] == "valid" and r["newThumbprint"] != r["oldThumbprint"])
    summary = {"devices": rows, "renewed": renewed, "failed": len(rows) - renewed,
               "elapsedSeconds": round(time.monotonic() - started, 1)}  # fmt: skip
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _table(rows)
        print(f"\n{renewed} of {len(rows)} devices renewed and report 'valid' in {summary['elapsedSeconds']} s")
    return 0 if renewed == len(rows) else 1


async def _watch(
    sandbox: Sandbox, fleet: list[SandboxDevice], *, timeout: float, live: bool, tasks: Sequence[asyncio.Future[Any]]
) -> list[dict[str, Any]]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    shown = ""
    while True:
        rows = [_row(sandbox, device) for device in fleet]
        done = sum(1 for r in rows if r["state"] == "valid" and r["newThumbprint"] != r["oldThumbprint"])
        line = f"renewed {done}/{len(rows)}: " + " ".join(f"{r['deviceId']}={r['state']}" for r in rows)
        if live and line != shown:
            print(f"  {time.monotonic() - started:5.1f} s  {line}", flush=True)
            shown = line
        crashed = [t for t in tasks if t.done() and t.exception() is not None]
        if done == len(rows) or time.monotonic() - started > timeout or crashed:
            for task in crashed:
                print(f"edgecert: an agent stopped: {task.exception()!r}", file=sys.stderr)
            return rows
        await asyncio.sleep(1)


def _row(sandbox: Sandbox, device: SandboxDevice) -> dict[str, Any]:
    identity = (sandbox.reported(device).get("certificates") or {}).get("identity") or {}
    return {
        "deviceId": device.device_id,
        "mode": device.mode,
        "oldThumbprint": device.initial_thumbprint,
        "newThumbprint": identity.get("thumbprint"),
        "notAfter": identity.get("notAfter"),
        "state": identity.get("state") or "starting",
    }


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'device':<10} {'mode':<14} {'old thumbprint':<16} -> {'new thumbprint':<16} {'notAfter':<21} state")
    for r in rows:
        new = (r["newThumbprint"] or "-")[:16]
        print(f"{r['deviceId']:<10} {r['mode']:<14} {r['oldThumbprint'][:16]:<16} -> {new:<16} "
              f"{r['notAfter'] or '-':<21} {r['state']}")  # fmt: skip
