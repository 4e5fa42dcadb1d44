"""`IotHubEmulator`: the IoT Hub and IoT Edge workload API emulators on loopback, in a thread of their own.

One `LoopThread` runs the MQTT broker (with its HTTP CONNECT proxy), the workload API and the
control API: the SDK's handler setters block until SUBACK and deadlock when the broker shares the
caller's loop (reference iothub-and-edge.md §2.4). The Python methods mirror the control API and
run the same `IotHub` methods on that thread. Everything is in memory; `state_dir` holds the CA
file, the server certificate and the workload socket.

Two ways for the unmodified SDK, which always connects to port 8883 (reference §1.4), to reach the broker:
- the HTTP CONNECT proxy (default): the broker listens on a free port; clients pass
  `proxy_options=ProxyOptions("HTTP", "127.0.0.1", port)` or set `mqtt_proxy=<emulator.mqtt_proxy>`;
- port 8883 on a loopback address of the hub's own (`mqtt_host="127.0.0.5", mqtt_port=8883`): the
  gateway host name is then that address, which the server certificate names.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from aiohttp import web

from edgecert.sandbox.iothub.control import DEFAULT_METHOD_TIMEOUT, DeviceCredentials, control_app
from edgecert.sandbox.iothub.hub import DesiredPatchResult, Identity, IotHub, Message, MethodResult
from edgecert.sandbox.iothub.tls import mqtt_server_context
from edgecert.sandbox.iothub.workload import API_VERSION, workload_app
from edgecert.sandbox.pki import SandboxCA
from edgecert.sandbox.servers import LoopThread, listen, server_tls

__all__ = ["DEFAULT_HOSTNAME", "IotHubEmulator"]

#: The emulated hub's name: the `HostName` of connection strings and the start of every SAS resource.
DEFAULT_HOSTNAME = "edgecert-sandbox.azure-devices.net"
MQTT_TLS_PORT = 8883
_T = TypeVar("_T")
# A unix socket path must fit sockaddr_un.sun_path (104 bytes on macOS, 108 on Linux).
_MAX_SOCKET_PATH = 103


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IotHubEmulator:
    """An emulated IoT Hub, IoT Edge workload API and control API; use as a context manager or start()/stop().

    `hostname` is the hub's name (connection strings, SAS resources); `gateway_hostname` is the name
    clients connect to (`GatewayHostName`, `IOTEDGE_GATEWAYHOSTNAME`; default `localhost`, or `mqtt_host`
    when listening on port 8883). `ca` issues the server certificate and is the trust bundle (a new
    one when None). `clock` gives the time SAS expiry and certificate validity are judged at (UTC).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        hostname: str = DEFAULT_HOSTNAME,
        gateway_hostname: str | None = None,
        ca: SandboxCA | None = None,
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 0,
        proxy: bool = True,
        workload: Literal["unix", "http"] = "unix",
        admin_token: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.state_dir = state_dir.absolute()
        self.hostname = hostname
        self.gateway_hostname = gateway_hostname or (mqtt_host if mqtt_port == MQTT_TLS_PORT else "localhost")
        self.ca_file = self.state_dir / "ca.pem"
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self._ca = ca
        self._mqtt_host = mqtt_host
        self._mqtt_port = mqtt_port
        self._proxy = proxy
        self._workload = workload
        self._clock = clock
        self._thread: LoopThread | None = None
        self._hub: IotHub | None = None
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self._mqtt_address: tuple[str, int] | None = None
        self._proxy_url: str | None = None
        self._workload_uri: str | None = None
        self._admin_url: str | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Make the certificates, start every listener, and return when all accept connections."""
        if self._thread is not None:
            raise RuntimeError("the IoT Hub emulator is already running")
        socket_path = self.state_dir / "workload.sock"
        if self._workload == "unix" and len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"the workload socket path {socket_path} is longer than {_MAX_SOCKET_PATH} bytes: "
                "use a shorter state_dir, or workload='http'"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._ca is None:
            self._ca = SandboxCA()
        self._ca.write_ca_file(self.ca_file)
        names = dict.fromkeys([self.gateway_hostname, self.hostname, "localhost", "127.0.0.1", self._mqtt_host])
        cert_file, key_file = self._ca.server(*names).write(self.state_dir, "iothub-server")
        thread = LoopThread("iothub-emulator")
        try:
            thread.run(self._start_servers(cert_file, key_file, socket_path))
        except BaseException:
            thread.run(self._stop_servers())
            thread.stop()
            raise
        self._thread = thread
        return self

    def stop(self) -> None:
        """Close every connection and listener and end the thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.run(self._stop_servers())
            finally:
                thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    async def _start_servers(self, cert_file: Path, key_file: Path, socket_path: Path) -> None:
        hub = IotHub(self.hostname, tls=mqtt_server_context(cert_file, key_file), clock=self._clock)
        self._hub = hub
        mqtt = await asyncio.start_server(hub.broker.accept_tls, self._mqtt_host, self._mqtt_port)
        self._servers.append(mqtt)
        self._mqtt_address = (self._mqtt_host, int(mqtt.sockets[0].getsockname()[1]))
        if self._proxy:
            proxy = await asyncio.start_server(hub.broker.accept_proxy, "127.0.0.1", 0)
            self._servers.append(proxy)
            self._proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
        trust_bundle = self.ca_file.read_text()
        workload = workload_app(trust_bundle=trust_bundle, find_module=hub.find_module)
        if self._workload == "unix":
            socket_path.unlink(missing_ok=True)
            runner = web.AppRunner(workload, access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            await web.UnixSite(runner, str(socket_path)).start()
            self._workload_uri = f"unix://{socket_path}"
        else:
            runner, port = await listen(workload, "127.0.0.1", 0, None)
            self._runners.append(runner)
            self._workload_uri = f"http://127.0.0.1:{port}"
        control = control_app(hub, admin_token=self.admin_token, credentials=self._credentials)
        runner, port = await listen(control, "127.0.0.1", 0, server_tls(cert_file, key_file))
        self._runners.append(runner)
        self._admin_url = f"https://127.0.0.1:{port}"

    def restart(self, outage: float = 1.0) -> None:
        """A hub restart: every connection is cut, nobody can connect for `outage` seconds, state is kept.

        Identities, twins and the sessions of clean_session=False clients survive, as they do in IoT Hub.
        """
        thread, hub = self._started()
        thread.run(self._restart(hub, outage), timeout=outage + 30)

    async def _restart(self, hub: IotHub, outage: float) -> None:
        listeners = self._servers[: 2 if self._proxy else 1]
        for server in listeners:
            server.close()
            await server.wait_closed()
        await hub.broker.close()
        await asyncio.sleep(outage)
        port = self._mqtt_address[1] if self._mqtt_address else self._mqtt_port
        mqtt = await asyncio.start_server(hub.broker.accept_tls, self._mqtt_host, port)
        restarted = [mqtt]
        if self._proxy and self._proxy_url:
            port = int(self._proxy_url.rsplit(":", 1)[1])
            restarted.append(await asyncio.start_server(hub.broker.accept_proxy, "127.0.0.1", port))
        self._servers[: len(restarted)] = restarted

    async def _stop_servers(self) -> None:
        for server in self._servers:
            server.close()
        if self._hub is not None:
            await self._hub.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._runners.clear()
        self._hub = None
        if self._workload_uri and self._workload_uri.startswith("unix://"):
            Path(self._workload_uri.removeprefix("unix://")).unlink(missing_ok=True)

    # -- where things are ----------------------------------------------------------------------

    def _started(self) -> tuple[LoopThread, IotHub]:
        if self._thread is None or self._hub is None:
            raise RuntimeError("the IoT Hub emulator is not running: call start() first")
        return self._thread, self._hub

    @property
    def ca_pem(self) -> str:
        """The CA certificate clients trust (PEM): `server_verification_cert`, the workload trust bundle."""
        self._started()
        return self.ca_file.read_text()

    @property
    def admin_url(self) -> str:
        """`https://127.0.0.1:PORT` of the control API."""
        self._started()
        assert self._admin_url is not None  # noqa: S101 - set by start()
        return self._admin_url

    @property
    def mqtt_address(self) -> tuple[str, int]:
        """Host and port of the broker's own TLS listener."""
        self._started()
        assert self._mqtt_address is not None  # noqa: S101 - set by start()
        return self._mqtt_address

    @property
    def mqtt_proxy(self) -> str | None:
        """`http://127.0.0.1:PORT` of the HTTP CONNECT proxy to the broker (None with proxy=False)."""
        self._started()
        return self._proxy_url

    @property
    def proxy_port(self) -> int | None:
        """The proxy's port, for `ProxyOptions("HTTP", "127.0.0.1", port)`."""
        url = self.mqtt_proxy
        return int(url.rsplit(":", 1)[1]) if url else None

    @property
    def workload_uri(self) -> str:
        """IOTEDGE_WORKLOADURI: `unix:///.../workload.sock` or `http://127.0.0.1:PORT`."""
        self._started()
        assert self._workload_uri is not None  # noqa: S101 - set by start()
        return self._workload_uri

    # -- the Python API (mirrors the control API) ----------------------------------------------

    def _call(self, fn: Callable[[IotHub], _T]) -> _T:
        thread, hub = self._started()
        return thread.call(lambda: fn(hub))

    def _credentials(self, identity: Identity) -> DeviceCredentials:
        parts = [f"HostName={self.hostname}", f"DeviceId={identity.device_id}"]
        if identity.module_id:
            parts.append(f"ModuleId={identity.module_id}")
        parts += [f"SharedAccessKey={identity.primary_key}", f"GatewayHostName={self.gateway_hostname}"]
        connection_string = ";".join(parts)
        edge_env = None
        if identity.module_id:
            edge_env = {
                "IOTEDGE_IOTHUBHOSTNAME": self.hostname,
                "IOTEDGE_DEVICEID": identity.device_id,
                "IOTEDGE_MODULEID": identity.module_id,
                "IOTEDGE_GATEWAYHOSTNAME": self.gateway_hostname,
                "IOTEDGE_MODULEGENERATIONID": identity.generation_id,
                "IOTEDGE_WORKLOADURI": self._workload_uri or "",
                "IOTEDGE_APIVERSION": API_VERSION,
            }
        return DeviceCredentials(
            identity.device_id, identity.module_id, connection_string, self.ca_file, edge_env, self._proxy_url
        )

    def add_device(self, device_id: str, module_id: str | None = None) -> DeviceCredentials:
        """Create a device (and module) identity with random keys, or describe the existing one."""
        return self._call(lambda hub: self._credentials(hub.add_identity(device_id, module_id)))

    def register_ca(self, name: str, pem: bytes | str) -> None:
        """Trust a CA (PEM) for X.509 device authentication: CA-signed leaves with CN = client id connect."""
        data = pem.encode() if isinstance(pem, str) else pem
        self._call(lambda hub: hub.register_ca(name, data))

    def set_thumbprints(self, device_id: str, primary: str | None, secondary: str | None = None) -> None:
        """Register a device's self-signed certificate thumbprints (SHA-256 hex); None clears a slot."""
        self._call(lambda hub: hub.set_thumbprints(device_id, primary, secondary))

    def twin(self, device_id: str, module_id: str | None = None) -> dict[str, Any]:
        """The twin: `{"desired": {..., "$version"}, "reported": {..., "$version"}}`."""
        return self._call(lambda hub: hub.twin(device_id, module_id))

    def patch_desired(self, device_id: str, module_id: str | None, patch: dict[str, Any]) -> DesiredPatchResult:
        """Merge a patch into the desired properties (null deletes) and push it to a subscribed client."""
        return self._call(lambda hub: hub.patch_desired(device_id, module_id, patch))

    def invoke_method(
        self,
        device_id: str,
        module_id: str | None,
        name: str,
        payload: Any = None,
        *,
        timeout: float = DEFAULT_METHOD_TIMEOUT,
    ) -> MethodResult:
        """Call a direct method and return the client's status and payload (seconds of `timeout`)."""
        thread, hub = self._started()
        return thread.run(hub.invoke_method(device_id, module_id, name, payload, timeout=timeout), timeout + 10)

    def drop(self, device_id: str, module_id: str | None = None) -> None:
        """Close the identity's TCP connection (no DISCONNECT), so the SDK reconnects into its kept session."""
        self._call(lambda hub: hub.drop(device_id, module_id))

    def is_connected(self, device_id: str, module_id: str | None = None) -> bool:
        """Whether the identity has an open MQTT connection."""
        return self._call(lambda hub: hub.is_connected(device_id, module_id))

    def messages(self) -> list[Message]:
        """Recorded telemetry, oldest first."""
        return self._call(lambda hub: hub.messages())
