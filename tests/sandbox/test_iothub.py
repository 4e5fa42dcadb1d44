"""The IoT Hub and workload API emulators, driven by the real, unmodified azure-iot-device clients.

Sections: SDK module clients (connection string and IoT Edge environment), credentials refused,
X.509 devices, one connection per identity, telemetry, the port-8883 route, the control and
workload APIs over HTTP, the broker at the MQTT packet level, and the pure codec and auth rules.
Every awaited SDK call runs under `within()`, so a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import pytest
from azure.iot.device import X509, Message, MethodRequest, MethodResponse, ProxyOptions
from azure.iot.device.aio import IoTHubDeviceClient, IoTHubModuleClient
from azure.iot.device.exceptions import CredentialError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgecert.crypto import generate_key, key_to_pem, signature_hash
from edgecert.sandbox.iothub import DeviceCredentials, IotHubEmulator
from edgecert.sandbox.iothub.auth import check_sas, check_username, resource_uri, sign, thumbprint
from edgecert.sandbox.iothub.codec import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    decode,
    encode,
    read_packet,
    topic_matches,
    valid_topic_filter,
)
from edgecert.sandbox.iothub.hub import merge_patch
from tests.pki import Issued, make_ca, make_leaf, name

T = TypeVar("T")

#: The clock of the X.509 emulator: certificates are judged at this instant, not the machine's.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DEVICE, MODULE = "edge-1", "certagent"


@dataclass(frozen=True)
class Control:
    """A blocking JSON client of a control API (call it through asyncio.to_thread from a coroutine)."""

    url: str
    token: str
    ca_file: Path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        parts = urlsplit(self.url)
        context = ssl.create_default_context(cafile=self.ca_file)
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context, timeout=30)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        try:
            connection.request(method, path, body=data, headers={"Authorization": f"Bearer {self.token}"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[IotHubEmulator]:
    """An IoT Hub emulator of the test's own (proxy route, workload API on a unix socket in tmp_path)."""
    with IotHubEmulator(tmp_path / "iothub") as emulator:
        yield emulator


@pytest.fixture
def control(hub: IotHubEmulator) -> Control:
    """The emulator's control API, over HTTPS with its admin token."""
    return Control(hub.admin_url, hub.admin_token, hub.ca_file)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a scenario on a fresh event loop, failing after 45 s."""
    return asyncio.run(asyncio.wait_for(coro, 45))


async def within(awaitable: Awaitable[T], seconds: float = 10) -> T:
    """Await an SDK call with a deadline."""
    return await asyncio.wait_for(awaitable, seconds)


async def call(control: Control, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A control API request from a coroutine (the client blocks, so it runs in a thread)."""
    return await asyncio.to_thread(control.request, method, path, body)


def proxy_options(hub: IotHubEmulator) -> ProxyOptions:
    assert hub.proxy_port is not None
    return ProxyOptions("HTTP", "127.0.0.1", hub.proxy_port)


# -- module clients, made the two ways a module makes them -------------------------------------


ClientFactory = Callable[..., IoTHubModuleClient]


def from_connection_string(
    hub: IotHubEmulator, creds: DeviceCredentials, _monkeypatch: pytest.MonkeyPatch | None = None, **kwargs: Any
) -> IoTHubModuleClient:
    return IoTHubModuleClient.create_from_connection_string(
        creds.connection_string, server_verification_cert=hub.ca_pem, proxy_options=proxy_options(hub), **kwargs
    )


def from_edge_environment(
    _hub: IotHubEmulator, creds: DeviceCredentials, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> IoTHubModuleClient:
    """As an IoT Edge module does: IOTEDGE_* from the runtime, the proxy from `mqtt_proxy` (paho reads it)."""
    assert creds.edge_env is not None
    assert creds.mqtt_proxy is not None
    for variable, value in creds.edge_env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("mqtt_proxy", creds.mqtt_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return IoTHubModuleClient.create_from_edge_environment(**kwargs)


# paho-mqtt 1.6.1 (azure-iot-device 2.14's transport) replaces its wake-up socket pair on every reconnect
# without closing the old one (paho/mqtt/client.py:1795, loop_start); only tests that force a reconnect see it.
PAHO_RECONNECT_LEAK = pytest.mark.filterwarnings(
    r"ignore:unclosed <socket\.socket .*laddr=\('127\.0\.0\.1':ResourceWarning"
)

CLIENT_FACTORIES = pytest.mark.parametrize(
    "make_client", [from_connection_string, from_edge_environment], ids=["connection string", "edge environment"]
)


@CLIENT_FACTORIES
def test_module_client_gets_the_twin_and_patches_reported_properties(
    hub: IotHubEmulator, control: Control, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> Any:
        client = make_client(hub, creds, monkeypatch)
        try:
            first = await within(client.get_twin())
            await within(client.patch_twin_reported_properties({"state": "valid", "certs": {"a": 1, "b": 2}}))
            await within(client.patch_twin_reported_properties({"certs": {"a": None, "c": 3}}))
            return first, await within(client.get_twin())
        finally:
            await within(client.shutdown())

    first, last = run(scenario())
    assert first == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    assert last["reported"] == {"state": "valid", "certs": {"b": 2, "c": 3}, "$version": 3}
    status, twin = control.request("GET", f"/_sandbox/twins/{DEVICE}/{MODULE}")
    assert status == 200
    assert twin == {
        "desired": {"$version": 1},
        "reported": {"state": "valid", "certs": {"b": 2, "c": 3}, "$version": 3},
    }


@PAHO_RECONNECT_LEAK
@CLIENT_FACTORIES
def test_desired_patches_reach_the_handler_also_after_a_dropped_connection(
    hub: IotHubEmulator, control: Control, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = hub.add_device(DEVICE, MODULE)
    twin_path = f"/_sandbox/twins/{DEVICE}/{MODULE}"

    async def scenario() -> tuple[list[Any], list[Any]]:
        loop = asyncio.get_running_loop()
        patches: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        client = make_client(hub, creds, monkeypatch, connection_retry_interval=1)
        try:
            await within(client.connect())
            client.on_twin_desired_properties_patch_received = lambda patch: loop.call_soon_threadsafe(
                patches.put_nowait, patch
            )
            before = [await call(control, "PATCH", f"{twin_path}/desired", {"renewal": {"renewAt": "80%"}})]
            before.append(await within(patches.get()))
            assert await call(control, "POST", f"/_sandbox/connections/{DEVICE}/{MODULE}/drop") == (
                200,
                {"dropped": True},
            )
            # The SDK reconnects after 0.01 s and does not subscribe again: the kept session must deliver.
            for _ in range(200):
                if await asyncio.to_thread(hub.is_connected, DEVICE, MODULE):
                    break
                await asyncio.sleep(0.025)
            after = [await call(control, "PATCH", f"{twin_path}/desired", {"renewal": {"renewAt": None}, "x": 1})]
            after.append(await within(patches.get()))
            return before, after
        finally:
            await within(client.shutdown())

    before, after = run(scenario())
    assert before == [(200, {"$version": 2, "delivered": True}), {"renewal": {"renewAt": "80%"}, "$version": 2}]
    assert after == [(200, {"$version": 3, "delivered": True}), {"renewal": {"renewAt": None}, "x": 1, "$version": 3}]
    assert control.request("GET", twin_path)[1]["desired"] == {"renewal": {}, "x": 1, "$version": 3}


@CLIENT_FACTORIES
def test_direct_method_round_trip(
    hub: IotHubEmulator, control: Control, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> list[tuple[int, Any]]:
        client = make_client(hub, creds, monkeypatch)

        async def on_method(request: MethodRequest) -> None:
            answer = {"method": request.name, "renewing": request.payload["certificate"]}
            await client.send_method_response(MethodResponse.create_from_method_request(request, 202, answer))

        try:
            await within(client.connect())
            client.on_method_request_received = on_method
            path = f"/_sandbox/methods/{DEVICE}/{MODULE}"
            return [
                await call(control, "POST", f"{path}/renewNow", {"payload": {"certificate": "identity"}}),
                await call(control, "POST", f"{path}/renewNow", {"payload": {"certificate": "edge-ca"}}),
            ]
        finally:
            await within(client.shutdown())

    assert run(scenario()) == [
        (200, {"status": 202, "payload": {"method": "renewNow", "renewing": "identity"}}),
        (200, {"status": 202, "payload": {"method": "renewNow", "renewing": "edge-ca"}}),
    ]


def test_direct_method_without_answer_times_out_and_without_subscriber_is_not_found(
    hub: IotHubEmulator, control: Control
) -> None:
    creds = hub.add_device(DEVICE, MODULE)
    path = f"/_sandbox/methods/{DEVICE}/{MODULE}/renewNow"

    async def scenario() -> list[tuple[int, Any]]:
        results = [await call(control, "POST", path, {"timeoutSeconds": 1})]
        client = from_connection_string(hub, creds)
        try:
            await within(client.connect())
            results.append(await call(control, "POST", path, {"timeoutSeconds": 1}))
            client.on_method_request_received = lambda _request: None  # never answers
            results.append(await call(control, "POST", path, {"timeoutSeconds": 0.2}))
        finally:
            await within(client.shutdown())
        return results

    (offline, unsubscribed, unanswered) = run(scenario())
    assert offline[0] == unsubscribed[0] == 404
    assert offline[1]["error"]["code"] == unsubscribed[1]["error"]["code"] == "DeviceNotOnline"
    assert unanswered == (504, {"error": {"code": "GatewayTimeout", "message": unanswered[1]["error"]["message"]}})
    assert "did not answer method 'renewNow' within 0.2 s" in unanswered[1]["error"]["message"]


# -- credentials refused -----------------------------------------------------------------------


def _with_key(connection_string: str, key: str) -> str:
    parts = dict(part.split("=", 1) for part in connection_string.split(";"))
    parts["SharedAccessKey"] = key
    return ";".join(f"{k}={v}" for k, v in parts.items())


def _key_of(creds: DeviceCredentials) -> str:
    return dict(part.split("=", 1) for part in creds.connection_string.split(";"))["SharedAccessKey"]


@pytest.mark.parametrize(
    "case",
    [
        "a random key",
        "the device's key for the module",
        "a module that does not exist",
        "edge environment signing with another module's key",
    ],
)
def test_wrong_credentials_are_refused_with_credential_error(
    hub: IotHubEmulator, case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgecert.sandbox")
    creds = hub.add_device(DEVICE, MODULE)
    device_key = _key_of(hub.add_device(DEVICE))
    connection_strings = {
        "a random key": _with_key(creds.connection_string, _random_key()),
        "the device's key for the module": _with_key(creds.connection_string, device_key),
        "a module that does not exist": creds.connection_string.replace(f"ModuleId={MODULE}", "ModuleId=ghost"),
    }

    def make() -> IoTHubModuleClient:
        if case in connection_strings:
            return from_connection_string(hub, replace(creds, connection_string=connection_strings[case]), monkeypatch)
        # Same module id on another device: the workload signs with that module's key, the token names ours.
        other = hub.add_device("edge-2", MODULE)
        assert other.edge_env is not None
        return from_edge_environment(
            hub, replace(other, edge_env={**other.edge_env, "IOTEDGE_DEVICEID": DEVICE}), monkeypatch
        )

    assert_connect_refused(make)
    assert not hub.is_connected(DEVICE, MODULE)
    # The refusal is explained at debug level, without the keys or the token.
    assert "not authorized" in caplog.text
    assert "SharedAccessSignature" not in caplog.text
    for key in (_key_of(creds), device_key, *connection_strings.values()):
        assert key not in caplog.text


def assert_connect_refused(make: Callable[[], IoTHubModuleClient]) -> None:
    """The client `make()` returns fails to connect with the SDK's CredentialError."""

    async def scenario() -> None:
        client = make()
        try:
            with pytest.raises(CredentialError):
                await within(client.connect())
        finally:
            await within(client.shutdown())

    run(scenario())


def _random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_an_expired_sas_token_is_refused(tmp_path: Path) -> None:
    # The hub's clock runs two hours ahead, past the SDK's one-hour tokens.
    with IotHubEmulator(tmp_path / "iothub", clock=lambda: datetime.now(UTC) + timedelta(hours=2)) as hub:
        creds = hub.add_device(DEVICE, MODULE)
        assert_connect_refused(lambda: from_connection_string(hub, creds))


# -- X.509 devices -----------------------------------------------------------------------------


def _issue_ca(parent: Issued, common_name: str) -> Issued:
    key = generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(parent.key, signature_hash(parent.key))
    )
    return Issued(cert, key)


def _self_signed(common_name: str, *, not_before: datetime, lifetime: timedelta) -> Issued:
    key = generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .sign(key, signature_hash(key))
    )
    return Issued(cert, key)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _thumb(issued: Issued) -> str:
    return thumbprint(issued.cert.public_bytes(serialization.Encoding.DER))


X509_DEVICE = "sensor-7"
_ONE_SECOND = timedelta(seconds=1)
_NINETY_DAYS = timedelta(days=90)


def _x509_case(case: str, hub: IotHubEmulator) -> tuple[Issued, list[Issued]]:
    """The certificate (and chain) a device presents in each case; registers what the case registers."""
    root = make_ca("Fleet root CA", not_before=NOW - timedelta(days=1))
    hub.register_ca("fleet", _pem(root.cert))
    fresh = NOW - timedelta(hours=1)
    match case:
        case "leaf of a registered CA":
            return make_leaf(root, X509_DEVICE, not_before=fresh), []
        case "leaf of an intermediate of a registered CA":
            issuing = _issue_ca(root, "Fleet issuing CA")
            return make_leaf(issuing, X509_DEVICE, not_before=fresh), [issuing]
        case "leaf of a registered CA, expires this second":
            return make_leaf(root, X509_DEVICE, not_before=NOW - _NINETY_DAYS, lifetime=_NINETY_DAYS), []
        case "self-signed, primary thumbprint registered":
            issued = _self_signed(X509_DEVICE, not_before=fresh, lifetime=_NINETY_DAYS)
            hub.set_thumbprints(X509_DEVICE, _thumb(issued), None)
            return issued, []
        case "self-signed, secondary thumbprint registered, any CN":
            issued = _self_signed("whatever", not_before=fresh, lifetime=_NINETY_DAYS)
            hub.set_thumbprints(X509_DEVICE, "AB" * 32, _thumb(issued).lower())
            return issued, []
        case "leaf of an unregistered CA":
            other = make_ca("Someone else's CA", not_before=NOW - timedelta(days=1))
            return make_leaf(other, X509_DEVICE, not_before=fresh), []
        case "leaf of a registered CA, expired a second ago":
            return make_leaf(root, X509_DEVICE, not_before=NOW - _NINETY_DAYS - _ONE_SECOND, lifetime=_NINETY_DAYS), []
        case "leaf of a registered CA for another device":
            return make_leaf(root, "sensor-8", not_before=fresh), []
        case "self-signed, thumbprint not registered":
            hub.set_thumbprints(X509_DEVICE, "AB" * 32, None)
            return _self_signed(X509_DEVICE, not_before=fresh, lifetime=_NINETY_DAYS), []
        case "self-signed, registered, expired a second ago":
            issued = _self_signed(X509_DEVICE, not_before=NOW - _NINETY_DAYS - _ONE_SECOND, lifetime=_NINETY_DAYS)
            hub.set_thumbprints(X509_DEVICE, _thumb(issued), None)
            return issued, []
    raise AssertionError(case)


ACCEPTED_X509 = [
    "leaf of a registered CA",
    "leaf of an intermediate of a registered CA",
    "leaf of a registered CA, expires this second",
    "self-signed, primary thumbprint registered",
    "self-signed, secondary thumbprint registered, any CN",
]
REFUSED_X509 = [
    "leaf of an unregistered CA",
    "leaf of a registered CA, expired a second ago",
    "leaf of a registered CA for another device",
    "self-signed, thumbprint not registered",
    "self-signed, registered, expired a second ago",
]


@pytest.fixture
def x509_hub(tmp_path: Path) -> Iterator[IotHubEmulator]:
    """An emulator whose clock stands at NOW, so certificate validity is judged at a known instant."""
    with IotHubEmulator(tmp_path / "iothub", clock=lambda: NOW) as emulator:
        emulator.add_device(X509_DEVICE)
        yield emulator


@pytest.mark.parametrize("case", ACCEPTED_X509 + REFUSED_X509)
def test_x509_device_authentication(x509_hub: IotHubEmulator, tmp_path: Path, case: str) -> None:
    leaf, chain = _x509_case(case, x509_hub)
    cert_file, key_file = tmp_path / "device.pem", tmp_path / "device.key.pem"
    cert_file.write_bytes(b"".join(_pem(c.cert) for c in [leaf, *chain]))
    key_file.write_bytes(key_to_pem(leaf.key))

    async def scenario() -> Any:
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(str(cert_file), str(key_file)),
            hostname=x509_hub.hostname,
            device_id=X509_DEVICE,
            server_verification_cert=x509_hub.ca_pem,
            proxy_options=proxy_options(x509_hub),
        )
        try:
            if case in REFUSED_X509:
                with pytest.raises(CredentialError):
                    await within(client.connect())
                return None
            return await within(client.get_twin())
        finally:
            await within(client.shutdown())

    twin = run(scenario())
    assert twin == (None if case in REFUSED_X509 else {"desired": {"$version": 1}, "reported": {"$version": 1}})


# -- one connection per identity, telemetry, port 8883 ------------------------------------------


def test_a_second_connection_with_the_same_identity_closes_the_first(hub: IotHubEmulator) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> tuple[bool, bool, Any]:
        loop = asyncio.get_running_loop()
        first_lost = asyncio.Event()
        first = from_connection_string(hub, creds, connection_retry=False)
        second = from_connection_string(hub, creds, connection_retry=False)

        def on_state_change() -> None:
            if not first.connected:
                loop.call_soon_threadsafe(first_lost.set)

        try:
            await within(first.connect())
            first.on_connection_state_change = on_state_change
            await within(second.connect())
            await within(first_lost.wait())
            return first.connected, second.connected, await within(second.get_twin())
        finally:
            await within(first.shutdown())
            await within(second.shutdown())

    first_connected, second_connected, twin = run(scenario())
    assert (first_connected, second_connected) == (False, True)
    assert twin["desired"] == {"$version": 1}


def test_telemetry_and_output_messages_are_recorded(hub: IotHubEmulator, control: Control) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> None:
        client = from_connection_string(hub, creds)
        status = Message(
            '{"renewed": true}', message_id="m-1", content_encoding="utf-8", content_type="application/json"
        )
        status.custom_properties["kind"] = "renewal & status"
        try:
            await within(client.send_message(status))
            await within(client.send_message_to_output(Message(b"\xff\x00"), "alerts"))
        finally:
            await within(client.shutdown())

    run(scenario())
    code, body = control.request("GET", "/_sandbox/messages")
    assert code == 200
    first, second = body["messages"]
    assert (first["deviceId"], first["moduleId"], first["body"]) == (DEVICE, MODULE, '{"renewed": true}')
    assert first["properties"] == {
        "$.mid": "m-1",
        "$.ct": "application/json",
        "$.ce": "utf-8",
        "kind": "renewal & status",
    }
    assert (second["properties"], second["body"], second["bodyBase64"]) == ({"$.on": "alerts"}, None, "/wA=")
    assert first["enqueuedTime"].endswith("Z")


def test_clients_reach_port_8883_on_a_loopback_address_of_the_hubs_own(tmp_path: Path) -> None:
    address = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    hub = IotHubEmulator(tmp_path / "iothub", mqtt_host=address, mqtt_port=8883, proxy=False)
    try:
        hub.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {address}:8883 here: {exc}")
    try:
        creds = hub.add_device(DEVICE, MODULE)
        assert (hub.gateway_hostname, hub.mqtt_address, creds.mqtt_proxy) == (address, (address, 8883), None)

        async def scenario() -> Any:
            client = IoTHubModuleClient.create_from_connection_string(
                creds.connection_string, server_verification_cert=hub.ca_pem
            )
            try:
                return await within(client.get_twin())
            finally:
                await within(client.shutdown())

        assert run(scenario())["reported"] == {"$version": 1}
        # The address is the hub's own: a second hub there fails to start, and leaves no thread behind.
        threads = threading.active_count()
        with pytest.raises(OSError, match="8883"):
            IotHubEmulator(tmp_path / "second", mqtt_host=address, mqtt_port=8883).start()
        assert threading.active_count() == threads
    finally:
        hub.stop()


# -- the control API ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no token", "wrong token"])
def test_the_control_api_needs_the_admin_token(hub: IotHubEmulator, token: str | None) -> None:
    parts = hub.admin_url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(
        parts[0], int(parts[1]), context=ssl.create_default_context(cafile=hub.ca_file), timeout=10
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("POST", "/_sandbox/devices", body=b'{"deviceId": "x"}', headers=headers)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["error"]["code"]) == (401, "Unauthorized")
    finally:
        connection.close()


def test_adding_a_device_returns_its_credentials_and_is_idempotent(hub: IotHubEmulator, control: Control) -> None:
    status, module = control.request("POST", "/_sandbox/devices", {"deviceId": DEVICE, "moduleId": MODULE})
    assert status == 200
    assert control.request("POST", "/_sandbox/devices", {"deviceId": DEVICE, "moduleId": MODULE}) == (200, module)
    assert module["caFile"] == str(hub.ca_file)
    assert Path(module["caFile"]).read_text() == hub.ca_pem
    assert module["mqttProxy"] == hub.mqtt_proxy
    assert module["connectionString"].startswith(f"HostName={hub.hostname};DeviceId={DEVICE};ModuleId={MODULE};")
    assert module["edgeEnv"] == {
        "IOTEDGE_IOTHUBHOSTNAME": hub.hostname,
        "IOTEDGE_DEVICEID": DEVICE,
        "IOTEDGE_MODULEID": MODULE,
        "IOTEDGE_GATEWAYHOSTNAME": "localhost",
        "IOTEDGE_MODULEGENERATIONID": module["edgeEnv"]["IOTEDGE_MODULEGENERATIONID"],
        "IOTEDGE_WORKLOADURI": hub.workload_uri,
        "IOTEDGE_APIVERSION": "2022-08-03",
    }
    status, device = control.request("POST", "/_sandbox/devices", {"deviceId": DEVICE})
    assert (status, device["edgeEnv"], device["moduleId"]) == (200, None, None)
    assert "ModuleId" not in device["connectionString"]
    assert _key_of_json(device) != _key_of_json(module)


def _key_of_json(credentials: dict[str, Any]) -> str:
    return str(dict(part.split("=", 1) for part in credentials["connectionString"].split(";"))["SharedAccessKey"])


def test_control_api_registers_cas_and_thumbprints(hub: IotHubEmulator, control: Control) -> None:
    hub.add_device(X509_DEVICE)
    root = make_ca("Fleet root CA", not_before=NOW)
    status, body = control.request("POST", "/_sandbox/cas", {"name": "fleet", "pem": _pem(root.cert).decode()})
    assert (status, body["subject"]) == (200, "CN=Fleet root CA")
    assert body["thumbprint"] == thumbprint(root.cert.public_bytes(serialization.Encoding.DER))
    colons = ":".join(["ab"] * 32)
    path = f"/_sandbox/devices/{X509_DEVICE}/thumbprints"
    assert control.request("PUT", path, {"primary": colons}) == (200, {"primary": "AB" * 32, "secondary": None})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/_sandbox/devices", {"deviceId": "has/slash"}, 400, "BadRequest"),
        ("POST", "/_sandbox/devices", {"deviceId": DEVICE, "moduleId": "-"}, 400, "BadRequest"),
        ("POST", "/_sandbox/devices", {"moduleId": MODULE}, 400, "BadRequest"),
        ("POST", "/_sandbox/devices", b"{not json", 400, "BadRequest"),
        ("POST", "/_sandbox/devices", ["a list"], 400, "BadRequest"),
        ("PATCH", f"/_sandbox/twins/{DEVICE}/{MODULE}/desired", {"a": {"$version": 3}}, 400, "BadRequest"),
        ("PATCH", f"/_sandbox/twins/{DEVICE}/{MODULE}/desired", [1, 2], 400, "BadRequest"),
        ("PATCH", f"/_sandbox/twins/{DEVICE}/ghost/desired", {"a": 1}, 404, "DeviceNotFound"),
        ("GET", "/_sandbox/twins/ghost/-", None, 404, "DeviceNotFound"),
        ("PUT", f"/_sandbox/devices/{DEVICE}/thumbprints", {"primary": "abc"}, 400, "BadRequest"),
        ("PUT", "/_sandbox/devices/ghost/thumbprints", {"primary": "AB" * 32}, 404, "DeviceNotFound"),
        ("POST", "/_sandbox/cas", {"name": "leaf", "pem": "-----BEGIN CERTIFICATE-----"}, 400, "BadRequest"),
        ("POST", f"/_sandbox/methods/{DEVICE}/{MODULE}/x", {"timeoutSeconds": 0}, 400, "BadRequest"),
        ("POST", f"/_sandbox/methods/{DEVICE}/{MODULE}/x", {"timeoutSeconds": "1"}, 400, "BadRequest"),
        ("POST", f"/_sandbox/connections/{DEVICE}/{MODULE}/drop", None, 404, "DeviceNotOnline"),
    ],
    ids=[
        "device id with a slash",
        "module id '-' (reserved for the device itself)",
        "no device id",
        "body is not JSON",
        "body is not an object",
        "desired patch sets a $ name",
        "desired patch is not an object",
        "twin of a missing module",
        "twin of a missing device",
        "thumbprint is not SHA-256 hex",
        "thumbprints of a missing device",
        "CA is not a certificate",
        "method timeout zero",
        "method timeout not a number",
        "drop of a client that is not connected",
    ],
)
def test_control_api_refuses_bad_requests(
    hub: IotHubEmulator, control: Control, method: str, path: str, body: Any, status: int, code: str
) -> None:
    hub.add_device(DEVICE, MODULE)
    answer = control.request(method, path, body)
    assert (answer[0], answer[1]["error"]["code"]) == (status, code)
    assert answer[1]["error"]["message"]


def test_a_leaf_certificate_is_not_accepted_as_a_ca(hub: IotHubEmulator, control: Control) -> None:
    leaf = make_leaf(make_ca("Root", not_before=NOW), "device", not_before=NOW)
    status, body = control.request("POST", "/_sandbox/cas", {"name": "leaf", "pem": _pem(leaf.cert).decode()})
    assert (status, body["error"]["code"]) == (400, "BadRequest")
    assert "not a CA" in body["error"]["message"]


def test_device_twins_use_dash_for_the_module(hub: IotHubEmulator, control: Control) -> None:
    hub.add_device(DEVICE)
    assert control.request("PATCH", f"/_sandbox/twins/{DEVICE}/-/desired", {"a": 1}) == (
        200,
        {"$version": 2, "delivered": False},
    )
    assert control.request("GET", f"/_sandbox/twins/{DEVICE}/-") == (
        200,
        {"desired": {"a": 1, "$version": 2}, "reported": {"$version": 1}},
    )


# -- the workload API --------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def _workload(uri: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    if uri.startswith("unix://"):
        connection: http.client.HTTPConnection = _UnixHTTPConnection(uri.removeprefix("unix://"))
    else:
        host, port = uri.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        # Like the SDK: a JSON body without Content-Type.
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_workload_api_trust_bundle_and_sign(tmp_path: Path, transport: Any) -> None:
    with IotHubEmulator(tmp_path / "iothub", workload=transport) as hub:
        creds = hub.add_device(DEVICE, MODULE)
        assert creds.edge_env is not None
        uri, generation = creds.edge_env["IOTEDGE_WORKLOADURI"], creds.edge_env["IOTEDGE_MODULEGENERATIONID"]
        assert uri.startswith(f"{transport}://")
        assert _workload(uri, "GET", "/trust-bundle?api-version=2022-08-03") == (200, {"certificate": hub.ca_pem})
        data = base64.b64encode(b"edgecert-sandbox.azure-devices.net%2Fdevices%2F...\n1796316480").decode()
        request = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": data}).encode()
        status, answer = _workload(uri, "POST", f"/modules/{MODULE}/genid/{generation}/sign?api-version=x", request)
        expected = hmac.new(base64.b64decode(_key_of(creds)), base64.b64decode(data), hashlib.sha256).digest()
        assert (status, answer) == (200, {"digest": base64.b64encode(expected).decode()})
        assert _workload(uri, "POST", f"/modules/{MODULE}/genid/other/sign", request)[0] == 404
        bad = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": "%%%"}).encode()
        assert _workload(uri, "POST", f"/modules/{MODULE}/genid/{generation}/sign", bad)[0] == 400


# -- the broker at the packet level ------------------------------------------------------------


class RawClient:
    """An MQTT client made of the codec, over TLS straight to the broker's listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, hub: IotHubEmulator) -> RawClient:
        host, port = hub.mqtt_address
        context = ssl.create_default_context(cadata=hub.ca_pem)
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
        return cls(reader, writer)

    async def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet))
        await self.writer.drain()

    async def receive(self) -> Packet:
        return await within(read_packet(self.reader), 5)

    async def closed_by_broker(self) -> bool:
        try:
            return await within(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def sas_connect(hub: IotHubEmulator, creds: DeviceCredentials, **overrides: Any) -> Connect:
    client_id = f"{creds.device_id}/{creds.module_id}" if creds.module_id else creds.device_id
    resource = quote(resource_uri(hub.hostname, creds.device_id, creds.module_id), safe="")
    expiry = int(datetime.now(UTC).timestamp()) + 600
    signature = sign(_key_of(creds), f"{resource}\n{expiry}".encode())
    token = f"SharedAccessSignature sr={resource}&sig={quote(signature, safe='')}&se={expiry}"
    fields: dict[str, Any] = {
        "client_id": client_id,
        "clean_session": False,
        "username": f"{hub.hostname}/{client_id}/?api-version=2019-10-01",
        "password": token.encode(),
        **overrides,
    }
    return Connect(**fields)


def test_broker_subscriptions_pings_and_disconnect(hub: IotHubEmulator) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> list[Packet | bool]:
        client = await RawClient.open(hub)
        try:
            await client.send(sas_connect(hub, creds))
            seen: list[Packet | bool] = [await client.receive()]
            topics = (
                ("$iothub/methods/POST/#", 2),
                ("$iothub/twin/res/#", 0),
                (f"devices/{DEVICE}/modules/{MODULE}/inputs/#", 1),
                ("devices/someone-else/messages/devicebound/#", 1),
                ("$iothub/#/bad", 1),
            )
            await client.send(Subscribe(7, topics))
            seen.append(await client.receive())
            await client.send(Unsubscribe(8, ("$iothub/methods/POST/#",)))
            seen.append(await client.receive())
            await client.send(PingReq())
            seen.append(await client.receive())
            await client.send(Disconnect())
            seen.append(await client.closed_by_broker())
            return seen
        finally:
            await client.close()

    assert run(scenario()) == [
        ConnAck(session_present=False, return_code=0),
        SubAck(7, (1, 0, 1, 0x80, 0x80)),
        UnsubAck(8),
        PingResp(),
        True,
    ]


def test_broker_keeps_sessions_and_sends_unacknowledged_messages_again(hub: IotHubEmulator) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> list[Packet]:
        seen: list[Packet] = []
        first = await RawClient.open(hub)
        await first.send(sas_connect(hub, creds))
        seen.append(await first.receive())
        await first.send(Subscribe(1, (("$iothub/twin/PATCH/properties/desired/#", 1),)))
        await first.receive()
        await asyncio.to_thread(hub.patch_desired, DEVICE, MODULE, {"a": 1})
        seen.append(await first.receive())  # not acknowledged
        await first.close()
        second = await RawClient.open(hub)
        try:
            await second.send(sas_connect(hub, creds))
            seen.append(await second.receive())
            again = await second.receive()
            seen.append(again)
            assert isinstance(again, Publish)
            assert again.packet_id is not None
            await second.send(PubAck(again.packet_id))
            await asyncio.to_thread(hub.patch_desired, DEVICE, MODULE, {"b": 2})
            seen.append(await second.receive())
            await second.send(Disconnect())
        finally:
            await second.close()
        clean = await RawClient.open(hub)
        try:
            await clean.send(sas_connect(hub, creds, clean_session=True))
            seen.append(await clean.receive())
        finally:
            await clean.close()
        return seen

    topic = "$iothub/twin/PATCH/properties/desired/?$version="
    assert run(scenario()) == [
        ConnAck(session_present=False, return_code=0),
        Publish(f"{topic}2", b'{"a": 1, "$version": 2}', qos=1, packet_id=1),
        ConnAck(session_present=True, return_code=0),
        Publish(f"{topic}2", b'{"a": 1, "$version": 2}', qos=1, packet_id=1, dup=True),
        Publish(f"{topic}3", b'{"b": 2, "$version": 3}', qos=1, packet_id=2),
        ConnAck(session_present=False, return_code=0),
    ]


@pytest.mark.parametrize(
    ("overrides", "return_code"),
    [
        ({"protocol_level": 3, "protocol_name": "MQIsdp"}, 1),
        ({"client_id": ""}, 2),
        ({"username": "another-hub.azure-devices.net/edge-1/certagent/?api-version=2019-10-01"}, 5),
        ({"username": "{hub}/edge-1/certagent/"}, 5),
        ({"password": b"SharedAccessSignature sr=x&sig=y&se=1"}, 5),
        ({"password": None}, 5),
        ({"client_id": "edge-1/ghost"}, 5),
    ],
    ids=[
        "MQTT 3.1",
        "empty client id",
        "user name of another hub",
        "user name without api-version",
        "token for another resource",
        "no password and no certificate",
        "unknown identity",
    ],
)
def test_broker_refuses_connects(hub: IotHubEmulator, overrides: dict[str, Any], return_code: int) -> None:
    creds = hub.add_device(DEVICE, MODULE)
    if "username" in overrides:
        overrides["username"] = overrides["username"].replace("{hub}", hub.hostname)

    async def scenario() -> tuple[Packet, bool]:
        client = await RawClient.open(hub)
        try:
            await client.send(sas_connect(hub, creds, **overrides))
            return await client.receive(), await client.closed_by_broker()
        finally:
            await client.close()

    assert run(scenario()) == (ConnAck(session_present=False, return_code=return_code), True)


@pytest.mark.parametrize(
    "offence",
    [
        "silent past 1.5 x keep-alive",
        "QoS 2 publish",
        "telemetry as another device",
        "unknown $iothub topic",
        "a second CONNECT",
        "PUBREL",
    ],
)
def test_broker_closes_misbehaving_connections(hub: IotHubEmulator, offence: str) -> None:
    creds = hub.add_device(DEVICE, MODULE)

    async def scenario() -> bool:
        client = await RawClient.open(hub)
        try:
            await client.send(sas_connect(hub, creds, keep_alive=1 if offence.startswith("silent") else 60))
            assert await client.receive() == ConnAck(session_present=False, return_code=0)
            match offence:
                case "QoS 2 publish":
                    await client.send(Publish(f"devices/{DEVICE}/modules/{MODULE}/messages/events/", b"x", 2, 1))
                case "telemetry as another device":
                    await client.send(Publish("devices/edge-2/messages/events/", b"x", 1, 1))
                case "unknown $iothub topic":
                    await client.send(Publish("$iothub/twin/DELETE/?$rid=1", b"", 1, 1))
                case "a second CONNECT":
                    await client.send(sas_connect(hub, creds))
                case "PUBREL":
                    client.writer.write(b"\x62\x02\x00\x01")
            return await client.closed_by_broker()
        finally:
            await client.close()

    assert run(scenario())


# -- codec and rules (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (PingReq(), b"\xc0\x00"),
        (PingResp(), b"\xd0\x00"),
        (Disconnect(), b"\xe0\x00"),
        (ConnAck(session_present=True, return_code=0), b"\x20\x02\x01\x00"),
        (PubAck(0x1234), b"\x40\x02\x12\x34"),
        (UnsubAck(1), b"\xb0\x02\x00\x01"),
        (SubAck(1, (1, 0x80)), b"\x90\x04\x00\x01\x01\x80"),
        (Publish("a/b", b"hi", qos=1, packet_id=10, dup=True), b"\x3a\x09\x00\x03a/b\x00\x0ahi"),
        (Publish("t", b"x" * 200), b"\x30\xcb\x01\x00\x01t" + b"x" * 200),
        (Subscribe(2, (("a/#", 1),)), b"\x82\x08\x00\x02\x00\x03a/#\x01"),
        (Unsubscribe(3, ("a/#",)), b"\xa2\x07\x00\x03\x00\x03a/#"),
        (
            Connect("dev", keep_alive=60, clean_session=False, username="u", password=b"p"),
            b"\x10\x15\x00\x04MQTT\x04\xc0\x00\x3c\x00\x03dev\x00\x01u\x00\x01p",
        ),
    ],
    ids=lambda value: None if isinstance(value, bytes) else type(value).__name__,
)
def test_codec_encodes_and_decodes_known_packets(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire
    length_bytes = 2 if len(wire) > 129 else 1
    assert decode(wire[0], wire[1 + length_bytes :]) == packet


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (0x10, b"\x00\x04MQTT\x04\x01\x00\x3c\x00\x01a"),
        (0x10, b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01a\x00\x01p"),
        (0x36, b"\x00\x01t\x00\x01"),
        (0x30, b"\x00\x03a/#"),
        (0x80, b"\x00\x01\x00\x01a\x01"),
        (0x82, b"\x00\x01\x00\x01a\x03"),
        (0x82, b"\x00\x01"),
        (0x40, b"\x00\x00"),
        (0xC0, b"\x00"),
        (0x62, b"\x00\x01"),
        (0xF0, b""),
        (0x30, b"\x00\x02\xff\xfe"),
    ],
    ids=[
        "CONNECT reserved flag",
        "CONNECT password without user name",
        "PUBLISH QoS 3",
        "PUBLISH to a wildcard",
        "SUBSCRIBE without its flags",
        "SUBSCRIBE asks QoS 3",
        "SUBSCRIBE without filters",
        "packet identifier 0",
        "trailing bytes",
        "PUBREL (QoS 2)",
        "reserved packet type 15",
        "topic not UTF-8",
    ],
)
def test_codec_refuses_malformed_packets(header: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(header, body)


def test_codec_refuses_a_five_byte_remaining_length() -> None:
    async def read() -> Packet:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\x30\xff\xff\xff\xff\x01")
        return await read_packet(reader)

    with pytest.raises(ProtocolError, match="longer than four bytes"):
        asyncio.run(read())


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", True),
        ("$iothub/methods/POST/#", "$iothub/methods/POST/renewNow/?$rid=a", True),
        ("$iothub/twin/PATCH/properties/desired/#", "$iothub/twin/PATCH/properties/desired/?$version=2", True),
        ("a/+/c", "a/b/c", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("#", "$iothub/twin/res/200/", False),
        ("+/twin/res/#", "$iothub/twin/res/200/", False),
        ("$iothub/twin/res/#", "$iothub/methods/POST/x/", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert valid_topic_filter(topic_filter)
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "#/a"])
def test_malformed_topic_filters(topic_filter: str) -> None:
    assert not valid_topic_filter(topic_filter)


def _token(resource: str, key: str, expiry: int, *, signed_resource: str | None = None) -> str:
    encoded = quote(resource, safe="")
    signature = sign(key, f"{quote(signed_resource or resource, safe='')}\n{expiry}".encode())
    return f"SharedAccessSignature sr={encoded}&sig={quote(signature, safe='')}&se={expiry}"


_KEY, _OTHER_KEY = base64.b64encode(b"k" * 32).decode(), base64.b64encode(b"o" * 32).decode()
_RESOURCE = "hub.example/devices/edge-1/modules/certagent"
_EXPIRY = int(NOW.timestamp())


@pytest.mark.parametrize(
    ("token", "now", "accepted", "reason"),
    [
        (_token(_RESOURCE, _KEY, _EXPIRY + 1), NOW, True, "SAS token"),
        (_token(_RESOURCE, _OTHER_KEY, _EXPIRY + 1), NOW, True, "SAS token"),
        (_token(_RESOURCE, _KEY, _EXPIRY), NOW, False, "expired"),
        (_token(_RESOURCE, _KEY, _EXPIRY + 1), NOW + timedelta(seconds=1), False, "expired"),
        (_token("hub.example/devices/edge-1", _KEY, _EXPIRY + 1), NOW, False, "another resource"),
        (_token(_RESOURCE, _KEY, _EXPIRY + 1, signed_resource="x"), NOW, False, "does not match"),
        (_token(_RESOURCE, base64.b64encode(b"z" * 32).decode(), _EXPIRY + 1), NOW, False, "does not match"),
        (_token(_RESOURCE, _KEY, _EXPIRY + 1) + "&skn=iothubowner", NOW, False, "skn"),
        ("SharedAccessSignature sr=a&se=1", NOW, False, "lacks"),
        ("Bearer abc", NOW, False, "not a SharedAccessSignature"),
        (f"SharedAccessSignature sr={quote(_RESOURCE, safe='')}&sig=%%%&se={_EXPIRY + 1}", NOW, False, "base64"),
    ],
    ids=[
        "valid for one more second",
        "signed with the secondary key",
        "expires this second",
        "expired a second ago",
        "for the device, not the module",
        "signature over another resource",
        "signed with another key",
        "policy token",
        "no signature",
        "not a SAS token",
        "signature not base64",
    ],
)
def test_sas_rules(token: str, now: datetime, accepted: bool, reason: str) -> None:
    verdict = check_sas(token, resource=_RESOURCE, keys=(_KEY, _OTHER_KEY), now=now)
    assert verdict.accepted is accepted
    assert reason in verdict.reason
    assert _KEY not in verdict.reason
    assert "sig=" not in verdict.reason


@pytest.mark.parametrize(
    ("username", "accepted"),
    [
        ("hub.example/edge-1/certagent/?api-version=2019-10-01&DeviceClientType=x", True),
        ("HUB.example/edge-1/certagent/?api-version=2020-09-30", True),
        ("hub.example/edge-1/?api-version=2019-10-01", False),
        ("hub.example/EDGE-1/certagent/?api-version=2019-10-01", False),
        ("hub.example/edge-1/certagent/?DeviceClientType=x", False),
        (None, False),
    ],
    ids=[
        "as the SDK sends it",
        "host name in capitals",
        "device instead of module",
        "device id in capitals",
        "no api-version",
        "missing",
    ],
)
def test_username_rules(username: str | None, accepted: bool) -> None:
    verdict = check_username(username, hostname="hub.example", client_id="edge-1/certagent")
    assert verdict.accepted is accepted


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": 1, "b": 2}, {"a": None}, {"b": 2}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": None, "z": 3}}, {"a": {"x": 1, "z": 3}}),
        ({"a": 1}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"a": {"x": 1}}, {"a": [1, 2]}, {"a": [1, 2]}),
        ({}, {"gone": None}, {}),
    ],
    ids=["adds", "null deletes", "nested merge and delete", "value becomes object", "arrays replace", "delete absent"],
)
def test_merge_patch(target: dict[str, Any], patch: dict[str, Any], merged: dict[str, Any]) -> None:
    original = json.dumps(target)
    assert merge_patch(target, patch) == merged
    assert json.dumps(target) == original
