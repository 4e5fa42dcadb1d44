"""`edgecert run` as a process: killed mid-renewal it recovers and finishes; SIGTERM ends it within 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgecert.adapters.filestore import FileCertStore
from edgecert.core.certinfo import certificate_facts, key_matches_certificate
from edgecert.sandbox.fleet import Sandbox, SandboxDevice
from edgecert.sandbox.keyvault.vault import Fault
from edgecert.sandbox.servers import LoopThread


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    running = Sandbox(tmp_path_factory.mktemp("sandbox"), lifetime=timedelta(seconds=60)).start()
    try:
        yield running
    finally:
        running.stop()


def start_agent(sandbox: Sandbox, device: SandboxDevice) -> subprocess.Popen[str]:
    assert sandbox.hub.proxy_port is not None
    env = {**os.environ, **sandbox.agent_environment(device, metrics_port="off"), "RuntimeLogLevel": "debug"}
    return subprocess.Popen(
        [sys.executable, "-m", "edgecert", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


class Helper:
    """The emulated host helper of one device, on a loop of its own."""

    def __init__(self, device: SandboxDevice) -> None:
        self.thread = LoopThread(f"helper-{device.device_id}")
        self.stop = asyncio.Event()
        self.future = asyncio.run_coroutine_threadsafe(device.helper.run(self.stop), self.thread.loop)

    def close(self) -> None:
        self.thread.loop.call_soon_threadsafe(self.stop.set)
        self.future.result(timeout=10)
        self.thread.stop()


def live_thumbprint(device: SandboxDevice) -> str:
    installed = FileCertStore(now=lambda: datetime.now(UTC)).load(device.paths)
    assert installed is not None
    assert key_matches_certificate(installed.key, installed.leaf), "the live certificate and key do not match"
    return certificate_facts(installed.leaf).thumbprint_sha256


def leftovers(device: SandboxDevice) -> list[str]:
    folders = {device.paths.cert.parent, device.paths.key.parent}
    return sorted(p.name for f in folders for p in f.iterdir() if p.name.endswith((".new", ".tmp", ".swap")))


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kill(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate(timeout=10)
    return out


def test_killed_at_several_points_of_a_renewal_the_agent_recovers_and_completes(sandbox: Sandbox) -> None:
    device = sandbox.add_device("killed", "vault-ca")
    old = live_thumbprint(device)
    signs = lambda: [  # noqa: E731
        e for e in sandbox.vault.log.snapshot()["requests"]
        if e["caller"] == device.principal.object_id and e["operation"] == "keys.sign"
    ]  # fmt: skip

    # 1. killed while Key Vault is signing (a slow sign): nothing was swapped
    sandbox.vault.faults.add(Fault(operation="keys.sign", delay=5.0, times=1))
    process = start_agent(sandbox, device)
    wait_until(lambda: any(e["operation"] == "keys.get" and e["caller"] == device.principal.object_id
                           for e in sandbox.vault.log.snapshot()["requests"]), 30, "the CA key read")  # fmt: skip
    time.sleep(0.5)
    kill(process)
    assert live_thumbprint(device) == old
    assert leftovers(device) == []

    # 2. killed after the swap, while waiting for the runtime to come back (no host helper running)
    process = start_agent(sandbox, device)
    wait_until(lambda: live_thumbprint(device) != old, 40, "the swap")
    assert any((device.request_dir).glob("*.request.json"))
    kill(process)
    new = live_thumbprint(device)
    assert new != old
    assert leftovers(device) == []

    # 3. killed right after start, before anything happened
    process = start_agent(sandbox, device)
    time.sleep(0.3)
    kill(process)
    assert live_thumbprint(device) == new

    # 4. started again with the host helper: the pending activation is verified and reported
    helper = Helper(device)
    process = start_agent(sandbox, device)
    try:
        wait_until(
            lambda: (
                ((sandbox.reported(device).get("certificates") or {}).get("identity") or {}).get("thumbprint") == new
                and sandbox.reported(device)["certificates"]["identity"]["state"] == "valid"
            ),
            40,
            "the verified renewal",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
        helper.close()
    assert process.returncode == 0, out[-2000:]
    assert live_thumbprint(device) == new
    assert leftovers(device) == []
    assert len(signs()) >= 1  # the sign that completed (the killed one never got its answer)


def test_sigterm_ends_the_agent_within_10_seconds_even_during_a_slow_step(sandbox: Sandbox) -> None:
    device = sandbox.add_device("terminated", "vault-ca")
    sandbox.vault.faults.add(Fault(operation="keys.sign", delay=30.0, times=1))
    process = start_agent(sandbox, device)
    wait_until(lambda: any(e["operation"] == "keys.get" and e["caller"] == device.principal.object_id
                           for e in sandbox.vault.log.snapshot()["requests"]), 30, "the renewal to start")  # fmt: skip
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=15)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, out[-2000:]
    assert elapsed < 10, f"the agent took {elapsed:.1f} s to stop"
    assert leftovers(device) == []
    live_thumbprint(device)  # still a matching pair
    assert "PRIVATE KEY" not in out
