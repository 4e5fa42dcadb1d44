"""The IoT Hub emulator's control API: JSON over HTTPS, every request with `Authorization: Bearer <adminToken>`.

Handlers call the same `IotHub` methods as the emulator's Python API. In paths, `{moduleId}` is `-`
for the device itself. Errors answer `{"error": {"code", "message"}}` with IoT Hub's codes
(`errors.py`). Routes (documented for users in docs/sandbox.md):

    POST  /_sandbox/devices                              {"deviceId", "moduleId"?} → credentials
    POST  /_sandbox/cas                                  {"name", "pem"}
    PUT   /_sandbox/devices/{deviceId}/thumbprints       {"primary", "secondary"}
    GET   /_sandbox/twins/{deviceId}/{moduleId}
    PATCH /_sandbox/twins/{deviceId}/{moduleId}/desired  a JSON merge patch
    POST  /_sandbox/methods/{deviceId}/{moduleId}/{name} {"payload", "timeoutSeconds"}
    POST  /_sandbox/connections/{deviceId}/{moduleId}/drop
    GET   /_sandbox/messages
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from edgecert.sandbox.iothub.auth import thumbprint
from edgecert.sandbox.iothub.errors import BadRequestError, HubError
from edgecert.sandbox.iothub.hub import DEVICE_ITSELF, Identity, IotHub
from edgecert.sandbox.servers import Handler, admin_auth, json_error

__all__ = ["DEFAULT_METHOD_TIMEOUT", "DeviceCredentials", "control_app"]

#: Seconds a direct method waits for its response when the request does not say.
DEFAULT_METHOD_TIMEOUT = 30.0


@dataclass(frozen=True)
class DeviceCredentials:
    """What a client of one identity needs: its connection string, the CA to trust, the IoT Edge variables."""

    device_id: str
    module_id: str | None
    connection_string: str = field(repr=False)
    ca_file: Path
    #: The seven IOTEDGE_* variables of `create_from_edge_environment()`; None for a device identity.
    edge_env: dict[str, str] | None
    #: `http://127.0.0.1:PORT` of the HTTP CONNECT proxy to the broker (the SDK's `mqtt_proxy`), if it runs.
    mqtt_proxy: str | None

    def to_json(self) -> dict[str, Any]:
        """The control API's form."""
        return {
            "deviceId": self.device_id,
            "moduleId": self.module_id,
            "connectionString": self.connection_string,
            "caFile": str(self.ca_file),
            "edgeEnv": self.edge_env,
            "mqttProxy": self.mqtt_proxy,
        }


def _module(request: web.Request) -> str | None:
    module_id = request.match_info["moduleId"]
    return None if module_id == DEVICE_ITSELF else module_id


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise BadRequestError("the request body is not JSON") from None


async def _object(request: web.Request) -> dict[str, Any]:
    body = await _body(request)
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def _optional(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequestError(f"{name} must be a non-empty string (or left out)")
    return value


def _required(body: dict[str, Any], name: str) -> str:
    value = _optional(body, name)
    if value is None:
        raise BadRequestError(f"{name} is required")
    return value


@web.middleware
async def _hub_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as exc:
        return json_error(exc.status, exc.code, str(exc))


def control_app(
    hub: IotHub, *, admin_token: str, credentials: Callable[[Identity], DeviceCredentials]
) -> web.Application:
    """The control API of one hub; `credentials` describes an identity for its clients."""

    async def add_device(request: web.Request) -> web.Response:
        body = await _object(request)
        identity = hub.add_identity(_required(body, "deviceId"), _optional(body, "moduleId"))
        return web.json_response(credentials(identity).to_json())

    async def register_ca(request: web.Request) -> web.Response:
        body = await _object(request)
        name = _required(body, "name")
        cert = hub.register_ca(name, _required(body, "pem").encode())
        der = cert.public_bytes(serialization.Encoding.DER)
        subject = cert.subject.rfc4514_string()
        return web.json_response({"name": name, "subject": subject, "thumbprint": thumbprint(der)})

    async def set_thumbprints(request: web.Request) -> web.Response:
        body = await _object(request)
        primary, secondary = _optional(body, "primary"), _optional(body, "secondary")
        stored = hub.set_thumbprints(request.match_info["deviceId"], primary, secondary)
        return web.json_response({"primary": stored[0], "secondary": stored[1]})

    async def get_twin(request: web.Request) -> web.Response:
        return web.json_response(hub.twin(request.match_info["deviceId"], _module(request)))

    async def patch_desired(request: web.Request) -> web.Response:
        result = hub.patch_desired(request.match_info["deviceId"], _module(request), await _body(request))
        return web.json_response({"$version": result.version, "delivered": result.delivered})

    async def invoke_method(request: web.Request) -> web.Response:
        body = await _object(request)
        timeout = body.get("timeoutSeconds", DEFAULT_METHOD_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise BadRequestError("timeoutSeconds must be a number")
        result = await hub.invoke_method(
            request.match_info["deviceId"],
            _module(request),
            request.match_info["name"],
            body.get("payload"),
            timeout=float(timeout),
        )
        return web.json_response({"status": result.status, "payload": result.payload})

    async def drop(request: web.Request) -> web.Response:
        hub.drop(request.match_info["deviceId"], _module(request))
        return web.json_response({"dropped": True})

    async def messages(_request: web.Request) -> web.Response:
        return web.json_response({"messages": [message.to_json() for message in hub.messages()]})

    app = web.Application(middlewares=[admin_auth(admin_token), _hub_errors])
    app.router.add_post("/_sandbox/devices", add_device)
    app.router.add_post("/_sandbox/cas", register_ca)
    app.router.add_put("/_sandbox/devices/{deviceId}/thumbprints", set_thumbprints)
    app.router.add_get("/_sandbox/twins/{deviceId}/{moduleId}", get_twin)
    app.router.add_patch("/_sandbox/twins/{deviceId}/{moduleId}/desired", patch_desired)
    app.router.add_post("/_sandbox/methods/{deviceId}/{moduleId}/{name}", invoke_method)
    app.router.add_post("/_sandbox/connections/{deviceId}/{moduleId}/drop", drop)
    app.router.add_get("/_sandbox/messages", messages)
    return app
