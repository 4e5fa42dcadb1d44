"""A sandbox fleet: emulators, a vault with a CA and least-privilege roles, devices with real agents.

Used by `edgecert sandbox` (the README's main job) and by the end-to-end tests. Each device has its
own managed identity (a user-assigned identity selected by client id, so many agents share one
process), its own module identity in the IoT Hub emulator, its certificate files, its request folder
with an emulated host helper, and a real `Agent` on a real `ModuleTwin`. Certificates are
short-lived so that a renewal happens within about a minute.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecert.adapters.filestore import FileCertStore
from edgecert.adapters.twin import ModuleTwin, TwinConnection
from edgecert.core.certinfo import KeyAndChain, PrivateKey, certificate_facts, load_keyvault_secret
from edgecert.core.validate import Expectations
from edgecert.crypto import generate_key, signature_hash
from edgecert.metrics import Metrics
from edgecert.ports import CertPaths
from edgecert.sandbox.host import HostHelper
from edgecert.sandbox.identity import Principal
from edgecert.sandbox.iothub.control import DeviceCredentials
from edgecert.sandbox.iothub.emulator import IotHubEmulator
from edgecert.sandbox.keyvault.emulator import KeyVaultEmulator
from edgecert.sandbox.pki import SandboxCA
from edgecert.service import Agent, AgentSettings

__all__ = ["MODES", "MODULE", "Sandbox", "SandboxDevice"]

MODES = ("vault-ca", "vault-managed", "vault-fetch")
MODULE = "edgecert"
FLEET_CA = "fleet-ca"


@dataclass
class SandboxDevice:
    """One emulated edge device."""

    device_id: str
    mode: str
    principal: Principal
    credentials: DeviceCredentials
    folder: Path
    paths: CertPaths
    initial_thumbprint: str
    desired: dict[str, Any]
    helper: HostHelper
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def request_dir(self) -> Path:
        """Where the agent writes restart requests."""
        return self.folder / "requests"

    @property
    def state_file(self) -> Path:
        """The agent's state file."""
        return self.folder / "state" / "agent.json"


class Sandbox:
    """Key Vault and IoT Hub emulators with a fleet CA, and the devices added to them."""

    def __init__(self, folder: Path, *, lifetime: timedelta = timedelta(seconds=120)) -> None:
        self.folder = folder
        self.lifetime = lifetime
        self.ca = SandboxCA()
        self.vault = KeyVaultEmulator(folder / "keyvault", ca=self.ca, vault_name="fleet")
        self.hub = IotHubEmulator(folder / "iothub", ca=self.ca)
        self.devices: list[SandboxDevice] = []
        self._issuing: tuple[x509.Certificate, PrivateKey] | None = None
        self._fleet_group: str | None = None

    def start(self) -> Sandbox:
        """Start both emulators and set up the vault: a fleet CA, the sandbox issuer, one identity endpoint."""
        self.vault.start()
        self.hub.start()
        self.vault.set_settings("fleet", lifetime_seconds=int(self.lifetime.total_seconds()), backdate_seconds=5)
        # every agent selects its own identity by client id, so one base URL serves them all
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = self.vault.imds_url(self.vault.add_principal("imds"))
        self._make_fleet_ca()
        self.hub.register_ca("vault-sandbox-issuer", self.vault.issuing_ca.pem)
        return self

    def stop(self) -> None:
        """Stop both emulators."""
        self.hub.stop()
        self.vault.stop()

    def _make_fleet_ca(self) -> None:
        """A root kept by the sandbox and an issuing CA whose key lives in Key Vault, non-exportable."""
        now = datetime.now(UTC).replace(microsecond=0)
        root_key, issuing_key = generate_key("ec-p384"), generate_key("ec-p256")
        root = _ca_certificate("edgecert sandbox fleet root", root_key, None, root_key, now, days=3650, path_length=1)
        issuing = _ca_certificate(
            "edgecert sandbox fleet issuing CA", issuing_key, root, root_key, now, days=365, path_length=0
        )
        pfx = pkcs12.serialize_key_and_certificates(None, issuing_key, issuing, [root], serialization.NoEncryption())
        self.vault.vault("fleet").objects.import_certificate(
            FLEET_CA, {"value": base64.b64encode(pfx).decode(), "policy": {"key_props": {"exportable": False}}}
        )
        self.hub.register_ca("fleet-root", root.public_bytes(serialization.Encoding.PEM))
        self._issuing = (issuing, issuing_key)
        group = self.vault.add_group("fleet-devices", [])
        self._fleet_group = group.object_id
        # vault-ca: two role assignments for the whole fleet, through the group
        self.vault.assign_role("fleet", group.object_id, "Key Vault Crypto User", f"/keys/{FLEET_CA}")
        self.vault.assign_role("fleet", group.object_id, "Key Vault Certificate User", f"/certificates/{FLEET_CA}")

    def add_device(
        self,
        device_id: str,
        mode: str,
        *,
        renewal: dict[str, Any] | None = None,
        first: tuple[timedelta, timedelta] | None = None,
        validity_days: int = 1,
    ) -> SandboxDevice:
        """A device with its identity, roles, first certificate and desired properties.

        `first` (vault-ca): the first certificate's age and lifetime (default: 45 % of the sandbox's
        short lifetime, so it is due within seconds); `validity_days` (vault-ca): of the renewed one.
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        principal = self.vault.add_principal(device_id)
        credentials = self.hub.add_device(device_id, MODULE)
        folder = self.folder / "devices" / device_id
        paths = CertPaths(folder / "certs" / "device-id.pem", folder / "secrets" / "device-id.key.pem")
        object_name = f"{device_id}-identity"
        files = {"cert": f"file://{paths.cert}", "key": f"file://{paths.key}"}
        certificate: dict[str, Any] = {"role": "device-identity", "mode": mode, "files": files}
        if mode == "vault-ca":
            assert self._fleet_group is not None  # noqa: S101 - made in start()
            self.vault.directory.groups[self._fleet_group].members.add(principal.object_id)
            certificate.update(issuerCertificateName=FLEET_CA, issuerKeyName=FLEET_CA, validityDays=validity_days)
            age, lifetime = first or (self.lifetime * 0.45, self.lifetime)
            bundle = self._first_certificate(device_id, age=age, lifetime=lifetime)
        else:
            objects = self.vault.vault("fleet").objects
            policy = {
                "x509_props": {"subject": f"CN={device_id}"},
                "issuer": {"name": "Sandbox"},
                "key_props": {"kty": "EC", "crv": "P-256"},
                "secret_props": {"contentType": "application/x-pem-file"},
            }
            # the first version is issued as if long ago, so that it is due soon, as in vault-ca
            settings = objects.settings
            settings.backdate_seconds = int(self.lifetime.total_seconds() * 0.45)
            try:
                objects.create_certificate(object_name, {"policy": policy})
                objects.get_operation(object_name)
            finally:
                settings.backdate_seconds = 5
            secret = objects.get_secret(object_name, None, None)
            bundle = load_keyvault_secret(secret["value"], secret["contentType"])
            roles = (
                [("Key Vault Certificates Officer", f"/certificates/{object_name}")]
                if mode == "vault-managed"
                else [("Key Vault Certificate User", f"/certificates/{object_name}")]
            )
            for role, scope in [*roles, ("Key Vault Secrets User", f"/secrets/{object_name}")]:
                self.vault.assign_role("fleet", principal.object_id, role, scope)
            certificate["certificateName"] = object_name
        FileCertStore(now=lambda: datetime.now(UTC)).install(paths, bundle, Expectations())
        desired = {
            "schemaVersion": 1,
            "vault": {"url": self.vault.url_of("fleet"), "clientId": principal.client_id,
                      "caFile": str(self.vault.ca_file), "verifyChallengeResource": False},
            "renewal": {"renewAt": "50%", "urgentAt": "90%", "spread": "10%", "autoWindow": {"slots": 1},
                        "retry": {"initialDelay": "1s", "maxDelay": "20s", "maxAttemptsPerWindow": 8},
                        **(renewal or {})},
            "certificates": {"identity": certificate},
            "activation": {"mode": "restart-request", "verifyTimeout": "1m"},
        }  # fmt: skip
        self.hub.patch_desired(device_id, MODULE, desired)
        (folder / "requests").mkdir(parents=True, exist_ok=True)  # the folder the host mounts into the module
        helper = HostHelper(device_id, folder / "requests", self.hub.hostname, self.hub.ca_pem, self.hub.proxy_port)
        device = SandboxDevice(device_id, mode, principal, credentials, folder, paths,
                               certificate_facts(bundle.leaf).thumbprint_sha256, desired, helper)  # fmt: skip
        self.devices.append(device)
        return device

    def agent(
        self,
        device: SandboxDevice,
        *,
        retry_interval: timedelta = timedelta(seconds=2),
        now: Callable[[], datetime] | None = None,
        metrics_port: int | None = None,
    ) -> Agent:
        """A real agent for a device, on a real module client through the hub emulator."""
        twin = ModuleTwin(
            TwinConnection(
                connection_string=device.credentials.connection_string,
                server_verification_cert=self.hub.ca_pem,
                proxy=("127.0.0.1", self.hub.proxy_port) if self.hub.proxy_port else None,
                retry_interval=retry_interval,
            )
        )
        settings = AgentSettings(
            device_id=device.device_id,
            module_id=MODULE,
            state_file=device.state_file,
            request_dir=device.request_dir,
            metrics_host="127.0.0.1",
            metrics_port=metrics_port,
        )
        if now is None:
            return Agent(settings, twin, metrics=device.metrics)
        return Agent(settings, twin, metrics=device.metrics, now=now)

    def agent_environment(self, device: SandboxDevice, *, metrics_port: str) -> dict[str, str]:
        """The variables that point an `edgecert run` process at this sandbox as `device` (see `agent` in-process)."""
        env = {
            "EDGECERT_CONNECTION_STRING": device.credentials.connection_string,
            "EDGECERT_HUB_CA_FILE": str(self.hub.ca_file),
            "EDGECERT_STATE_DIR": str(device.state_file.parent),
            "EDGECERT_REQUEST_DIR": str(device.request_dir),
            "EDGECERT_METRICS_PORT": metrics_port,
        }
        if self.hub.proxy_port:
            env["EDGECERT_MQTT_PROXY"] = f"127.0.0.1:{self.hub.proxy_port}"
        return env

    async def auto_renew(self, stop: asyncio.Event) -> None:
        """Key Vault's AutoRenew for vault-fetch objects: a new version once 40 % of the lifetime has passed."""
        objects = self.vault.vault("fleet").objects
        while not stop.is_set():
            for device in self.devices:
                if device.mode != "vault-fetch":
                    continue
                name = f"{device.device_id}-identity"
                latest = objects.certificates[name][-1].chain[0]
                lived = datetime.now(UTC) - latest.not_valid_before_utc
                if lived > (latest.not_valid_after_utc - latest.not_valid_before_utc) * 0.4:
                    self.vault.renew("fleet", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def reported(self, device: SandboxDevice) -> dict[str, Any]:
        """The device's reported properties as the hub holds them."""
        reported: dict[str, Any] = self.hub.twin(device.device_id, MODULE)["reported"]
        return reported

    def _first_certificate(self, device_id: str, *, age: timedelta, lifetime: timedelta) -> KeyAndChain:
        """A first certificate from the fleet CA, issued `age` ago."""
        assert self._issuing is not None  # noqa: S101 - made in start()
        issuing, issuing_key = self._issuing
        key = generate_key("ec-p256")
        start = datetime.now(UTC).replace(microsecond=0) - age
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(issuing.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuing_key, signature_hash(issuing_key))
        )
        return KeyAndChain(key, (leaf, issuing))


def _ca_certificate(
    name: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    now: datetime,
    *,
    days: int,
    path_length: int,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))
