"""`edgecert emulator keyvault|iothub`: one emulator in the foreground for users' own tests.

Once ready it prints one JSON line on stdout with everything a client needs, then serves until
SIGINT or SIGTERM. The `adminToken` in that line is the sandbox's own control-API token, made
fresh at start; it grants nothing outside this process.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["run_emulator"]


def run_emulator(kind: str, *, host: str, port: int, state_dir: Path | None, permission_model: str) -> int:
    """Run one emulator until a signal; return the exit code."""
    own_dir = state_dir is None
    folder = Path(tempfile.mkdtemp(prefix=f"edgecert-{kind}-")) if state_dir is None else state_dir
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        emulator, ready = _start(kind, host=host, port=port, state_dir=folder, permission_model=permission_model)
        try:
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            stop.wait()
        finally:
            emulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _start(kind: str, *, host: str, port: int, state_dir: Path, permission_model: str) -> tuple[Any, dict[str, Any]]:
    if kind == "keyvault":
        from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator  # noqa: PLC0415 - load only what runs

        vault = KeyVaultEmulator(state_dir, host=host, vault_port=port, permission_model=permission_model).start()
        return vault, {
            "vaultUrl": vault.vault_url,
            "vaultName": vault.vault_name,
            "caFile": str(vault.ca_file),
            "identityUrl": vault.identity_url,
            "adminUrl": vault.admin_url,
            "adminToken": vault.admin_token,
        }
    if kind == "iothub":
        from edgecert.sandbox.iothub.emulator import IotHubEmulator  # noqa: PLC0415 - load only what runs

        hub = IotHubEmulator(state_dir, mqtt_host=host, mqtt_port=port).start()
        return hub, {
            "hostname": hub.hostname,
            "gatewayHostname": hub.gateway_hostname,
            "caFile": str(hub.ca_file),
            "adminUrl": hub.admin_url,
            "adminToken": hub.admin_token,
            "mqttProxy": hub.mqtt_proxy,
            "workloadUri": hub.workload_uri,
        }
    raise ValueError(f"unknown emulator {kind!r}")
