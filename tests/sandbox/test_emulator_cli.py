"""`edgecert emulator keyvault`: a standalone emulator a user can point the real SDK at."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient


def control(ready: dict[str, Any], method: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(  # noqa: S310 - https on loopback
        ready["adminUrl"] + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {ready['adminToken']}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=ready["caFile"])
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def test_keyvault_emulator_prints_a_ready_line_serves_the_sdk_and_stops_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecert", "emulator", "keyvault", "--port", "0", "--state-dir", str(tmp_path),
         "--permission-model", "access-policy"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert set(ready) == {"vaultUrl", "vaultName", "caFile", "identityUrl", "adminUrl", "adminToken"}
        assert Path(ready["caFile"]).parent == tmp_path
        principal = control(ready, "POST", "/_sandbox/principals", {"name": "user-test"})
        control(ready, "POST", f"/_sandbox/vaults/{ready['vaultName']}/accessPolicies",
                {"objectId": principal["objectId"], "permissions": {"secrets": ["get", "set"]}})  # fmt: skip
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", principal["imdsUrl"])
        with (
            ManagedIdentityCredential() as credential,
            SecretClient(
                ready["vaultUrl"], credential, connection_verify=ready["caFile"], verify_challenge_resource=False
            ) as secrets,
        ):
            secrets.set_secret("hello", "world")
            assert secrets.get_secret("hello").value == "world"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert out == ""


def test_emulator_refuses_a_non_loopback_host(run_cli: Any) -> None:
    result = run_cli("emulator", "keyvault", "--host", "0.0.0.0")  # noqa: S104 - the point is that it is refused
    assert result.code == 2
    assert "loopback" in result.err


def test_iothub_emulator_ready_line_and_control_api(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecert", "emulator", "iothub", "--port", "0", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert {"hostname", "caFile", "adminUrl", "adminToken", "mqttProxy", "workloadUri"} <= set(ready)
        assert ready["mqttProxy"].startswith("http://127.0.0.1:")
        made = control(ready, "POST", "/_sandbox/devices", {"deviceId": "edge-1", "moduleId": "edgecert"})
        assert f"HostName={ready['hostname']}" in made["connectionString"]
        assert made["edgeEnv"]["IOTEDGE_DEVICEID"] == "edge-1"
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
