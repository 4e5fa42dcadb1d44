"""The emulated host helper and IoT Edge runtime: they carry out restart requests the way the real ones do.

On the device, a systemd path unit runs `contrib/host/edgecert-activate` when the agent writes a
request file; it runs `iotedge system restart` and writes a result file. Here the "restart" of a
`device-identity` certificate is what matters after it: the runtime authenticates to IoT Hub with
the certificate and key from the files. This helper does exactly that against the IoT Hub emulator
(X.509 authentication with the real SDK's device client), so a certificate the hub would refuse
fails verification in the sandbox as it would in the field. Other roles restart without a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from azure.iot.device import X509, ProxyOptions
from azure.iot.device.aio import IoTHubDeviceClient

from edgecert.adapters.activation import write_json_atomically
from edgecert.core.certinfo import ParseError, certificate_facts, load_certificates

__all__ = ["HostHelper"]

logger = logging.getLogger("edgecert.sandbox.host")


@dataclass
class HostHelper:
    """Watches one device's request folder and answers each request with a result file."""

    device_id: str
    folder: Path
    hostname: str
    ca_pem: str
    proxy_port: int | None
    poll: float = 0.2
    #: Refuse every restart (to show a rollback in tests and demonstrations).
    fail_restarts: bool = False
    restarts: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Serve requests until `stop` is set."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            for request in sorted(self.folder.glob("*.request.json")):
                await self._serve(request)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    async def _serve(self, request_file: Path) -> None:
        try:
            request = json.loads(request_file.read_text())
        except (OSError, ValueError):
            return  # a request being written; the next round reads it
        result_file = request_file.with_name(request_file.name.replace(".request.json", ".result.json"))
        if result_file.exists():
            return
        self.restarts += 1
        result = await self._restart(request)
        write_json_atomically(result_file, {"id": request.get("id"), **result})

    async def _restart(self, request: dict[str, object]) -> dict[str, object]:
        if self.fail_restarts:
            return {"status": "failed", "message": "iotedge system restart failed (the sandbox was told to fail)"}
        files = request.get("files")
        if not isinstance(files, dict):
            return {"status": "failed", "message": "the request names no files"}
        cert_file, key_file = Path(str(files.get("cert"))), Path(str(files.get("key")))
        try:
            leaf = load_certificates(cert_file.read_bytes())[0]
        except (OSError, ParseError) as exc:
            return {"status": "failed", "message": f"the runtime cannot read {cert_file}: {exc}"}
        thumbprint = certificate_facts(leaf).thumbprint_sha256
        if request.get("role") != "device-identity":
            return {"status": "ok", "message": "iotedge system restart: the runtime is back", "thumbprint": thumbprint}
        refused = await self._authenticate(cert_file, key_file)
        if refused is not None:
            return {"status": "failed", "message": f"the runtime came back, but IoT Hub refused the device: {refused}",
                    "thumbprint": thumbprint}  # fmt: skip
        return {
            "status": "ok",
            "message": "the runtime came back and authenticated to IoT Hub",
            "thumbprint": thumbprint,
        }

    async def _authenticate(self, cert_file: Path, key_file: Path) -> str | None:
        """Connect as the device with the certificate and key from the files; None when IoT Hub accepts it."""
        options = {}
        if self.proxy_port is not None:
            options["proxy_options"] = ProxyOptions("HTTP", "127.0.0.1", self.proxy_port)  # type: ignore[no-untyped-call]
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(str(cert_file), str(key_file)),  # type: ignore[no-untyped-call]
            hostname=self.hostname,
            device_id=self.device_id,
            server_verification_cert=self.ca_pem,
            connection_retry=False,
            **options,
        )
        try:
            await asyncio.wait_for(client.connect(), 20)
        except Exception as exc:  # noqa: BLE001 - every failure to connect is the answer we report
            return f"{type(exc).__name__}: {str(exc)[:160]}"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown(), 10)
        return None
