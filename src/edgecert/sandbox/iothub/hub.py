"""IoT Hub semantics on top of the MQTT broker: identities, authentication, twins, direct methods, telemetry.

`IotHub` is the broker's `Application` and the state behind the control API. All of it lives on the
emulator's event loop; nothing here is thread-safe, by design (`IotHubEmulator` marshals calls).
Topics and payloads follow reference iothub-and-edge.md §2.1 and §2.3:

- twin GET `$iothub/twin/GET/?$rid=R` → `$iothub/twin/res/200/?$rid=R`, body `{"desired", "reported"}`,
  each with its own `$version`;
- reported PATCH `$iothub/twin/PATCH/properties/reported/?$rid=R` → `$iothub/twin/res/204/?$rid=R&$version=N`
  (400 for a body that is not a JSON object); JSON merge semantics (RFC 7386), `null` deletes;
- desired patches → `$iothub/twin/PATCH/properties/desired/?$version=N`, the patch plus `$version`;
- direct methods → `$iothub/methods/POST/{name}/?$rid=R`, answered on `$iothub/methods/res/{status}/?$rid=R`;
- telemetry on `devices/{d}[/modules/{m}]/messages/events/{properties}` is recorded.
A client publishing anywhere else, or as another identity, is disconnected, as IoT Hub does.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import json
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from cryptography import x509

from edgecert.sandbox.iothub.auth import (
    Verdict,
    check_certificate,
    check_sas,
    check_username,
    normalize_thumbprint,
    resource_uri,
)
from edgecert.sandbox.iothub.broker import Broker
from edgecert.sandbox.iothub.codec import Connect, ConnectReturnCode, Publish
from edgecert.sandbox.iothub.errors import (
    BadRequestError,
    IdentityNotFoundError,
    MethodTimeoutError,
    NotConnectedError,
)

__all__ = [
    "DEVICE_ITSELF",
    "DesiredPatchResult",
    "Identity",
    "IotHub",
    "Message",
    "MethodResult",
    "Twin",
    "client_id",
    "merge_patch",
]

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]

# IoT Hub's characters for device and module ids (case-sensitive, up to 128).
_ID = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}")
#: The module id the control API uses in paths for "the device itself"; so no module may be called that.
DEVICE_ITSELF = "-"
#: Telemetry messages kept for the control API (oldest dropped first).
MAX_RECORDED_MESSAGES = 10_000
#: Longest direct method timeout, seconds (IoT Hub's responseTimeoutInSeconds maximum).
MAX_METHOD_TIMEOUT = 300.0


@dataclass(frozen=True)
class Identity:
    """A device or module identity with its two symmetric keys (base64) and generation id."""

    device_id: str
    module_id: str | None
    primary_key: str = field(repr=False)
    secondary_key: str = field(repr=False)
    generation_id: str

    @property
    def client_id(self) -> str:
        """The MQTT client id: `device` or `device/module`."""
        return client_id(self.device_id, self.module_id)


@dataclass
class Twin:
    """A twin's desired and reported sections, each with its own version (both start at 1)."""

    desired: JsonObject = field(default_factory=dict)
    desired_version: int = 1
    reported: JsonObject = field(default_factory=dict)
    reported_version: int = 1

    def document(self) -> JsonObject:
        """The twin as IoT Hub's MQTT GET returns it (a copy: callers may be in another thread)."""
        return copy.deepcopy(
            {
                "desired": {**self.desired, "$version": self.desired_version},
                "reported": {**self.reported, "$version": self.reported_version},
            }
        )


@dataclass(frozen=True)
class Message:
    """One telemetry message as recorded: sender, properties from the topic, body, arrival (UTC)."""

    device_id: str
    module_id: str | None
    properties: dict[str, str | None]
    body: bytes
    enqueued_at: datetime

    def to_json(self) -> JsonObject:
        """The control API's form: the body as text when it is UTF-8, always as base64."""
        try:
            text: str | None = self.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {
            "deviceId": self.device_id,
            "moduleId": self.module_id,
            "properties": self.properties,
            "body": text,
            "bodyBase64": base64.b64encode(self.body).decode("ascii"),
            "enqueuedTime": self.enqueued_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class MethodResult:
    """A direct method's response: the status the client chose and its JSON payload."""

    status: int
    payload: Any


@dataclass(frozen=True)
class DesiredPatchResult:
    """The desired section's new version, and whether a connected, subscribed client was sent the patch."""

    version: int
    delivered: bool


@dataclass(frozen=True)
class _PendingMethod:
    client_id: str
    future: asyncio.Future[MethodResult]


def client_id(device_id: str, module_id: str | None) -> str:
    """The MQTT client id of an identity: `device` or `device/module`."""
    return f"{device_id}/{module_id}" if module_id else device_id


def merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    """JSON merge patch (RFC 7386) of objects: members merge recursively, `null` deletes."""
    merged = dict(target)
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        elif isinstance(value, dict):
            current = merged.get(name)
            merged[name] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            merged[name] = value
    return merged


def _dollar_member(value: Any) -> str | None:
    """The first member name starting with `$` (IoT Hub reserves them in twin patches), if any."""
    if isinstance(value, dict):
        for name, member in value.items():
            if name.startswith("$"):
                return str(name)
            found = _dollar_member(member)
            if found:
                return found
    return None


def _patch_problem(patch: Any) -> str | None:
    if not isinstance(patch, dict):
        return "a twin patch must be a JSON object"
    reserved = _dollar_member(patch)
    if reserved:
        return f"twin patches may not set {reserved!r}: names starting with '$' are IoT Hub's"
    return None


def _query(text: str) -> dict[str, str | None]:
    """Topic properties `k=v&k2` as the SDK writes them: percent-encoded, `+` is a plus, no `=` is None."""
    properties: dict[str, str | None] = {}
    for part in text.split("&") if text else ():
        name, sep, value = part.partition("=")
        properties[unquote(name)] = unquote(value) if sep else None
    return properties


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class IotHub:
    """Identities, twins, methods and telemetry of one emulated hub, and the broker that serves them."""

    def __init__(self, hostname: str, *, tls: ssl.SSLContext, clock: Callable[[], datetime]) -> None:
        self.hostname = hostname
        self.broker = Broker(self, tls)
        self._clock = clock
        self._identities: dict[str, Identity] = {}
        self._modules: dict[tuple[str, str], Identity] = {}
        self._twins: dict[str, Twin] = {}
        self._thumbprints: dict[str, tuple[str | None, str | None]] = {}
        self._cas: dict[str, x509.Certificate] = {}
        self._messages: collections.deque[Message] = collections.deque(maxlen=MAX_RECORDED_MESSAGES)
        self._methods: dict[str, _PendingMethod] = {}
        self._last_rid = 0

    # -- registry ------------------------------------------------------------------------------

    def add_identity(self, device_id: str, module_id: str | None = None) -> Identity:
        """Create a device (and the module, if given) with random keys; an existing one is returned as is."""
        for kind, value in (("deviceId", device_id), ("moduleId", module_id)):
            if value is not None and (not _ID.fullmatch(value) or value == DEVICE_ITSELF):
                raise BadRequestError(
                    f"{kind} {value!r} is not an IoT Hub id: use 1-128 letters, digits or -:.+%_#*?!(),=@$' "
                    f"(and not {DEVICE_ITSELF!r} alone)"
                )
        identities = [Identity(device_id, None, _new_key(), _new_key(), secrets.token_hex(8))]
        if module_id is not None:
            identities.append(Identity(device_id, module_id, _new_key(), _new_key(), secrets.token_hex(8)))
        for identity in identities:
            if identity.client_id not in self._identities:
                self._identities[identity.client_id] = identity
                self._twins[identity.client_id] = Twin()
                if identity.module_id:
                    self._modules[identity.module_id, identity.generation_id] = identity
        return self._identities[identities[-1].client_id]

    def identity(self, device_id: str, module_id: str | None = None) -> Identity:
        """An existing identity; `IdentityNotFoundError` otherwise."""
        found = self._identities.get(client_id(device_id, module_id))
        if found is None:
            what = f"module {device_id}/{module_id}" if module_id else f"device {device_id}"
            raise IdentityNotFoundError(f"{what} does not exist: create it first (add_device, POST /_sandbox/devices)")
        return found

    def find_module(self, module_id: str, generation_id: str) -> Identity | None:
        """The module identity with this id and generation id (how the workload API finds keys)."""
        return self._modules.get((module_id, generation_id))

    def register_ca(self, name: str, pem: bytes) -> x509.Certificate:
        """Trust a CA certificate (PEM) for X.509 device authentication, under a name (replacing that name's)."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise BadRequestError(f"CA {name!r}: not a PEM certificate ({exc})") from None
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise BadRequestError(f"CA {name!r}: the certificate is not a CA (basicConstraints CA:TRUE is missing)")
        self._cas[name] = cert
        return cert

    def set_thumbprints(
        self, device_id: str, primary: str | None, secondary: str | None
    ) -> tuple[str | None, str | None]:
        """Register the SHA-256 thumbprints (hex) of a device's self-signed certificates; None clears a slot."""
        identity = self.identity(device_id)
        try:
            pair = tuple(normalize_thumbprint(t) if t else None for t in (primary, secondary))
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        self._thumbprints[identity.client_id] = (pair[0], pair[1])
        return pair[0], pair[1]

    # -- twins, methods, connections, telemetry ------------------------------------------------

    def twin(self, device_id: str, module_id: str | None = None) -> JsonObject:
        """The twin document: `{"desired": {..., "$version"}, "reported": {..., "$version"}}`."""
        return self._twins[self.identity(device_id, module_id).client_id].document()

    def patch_desired(self, device_id: str, module_id: str | None, patch: Any) -> DesiredPatchResult:
        """Merge a patch into the desired section, bump its version, push it to a subscribed client."""
        identity = self.identity(device_id, module_id)
        problem = _patch_problem(patch)
        if problem:
            raise BadRequestError(problem)
        patch = copy.deepcopy(patch)  # the caller's object may live on in another thread
        twin = self._twins[identity.client_id]
        twin.desired = merge_patch(twin.desired, patch)
        twin.desired_version += 1
        body = json.dumps({**patch, "$version": twin.desired_version}).encode()
        topic = f"$iothub/twin/PATCH/properties/desired/?$version={twin.desired_version}"
        return DesiredPatchResult(twin.desired_version, self.broker.deliver(identity.client_id, topic, body))

    async def invoke_method(
        self, device_id: str, module_id: str | None, name: str, payload: Any, *, timeout: float
    ) -> MethodResult:
        """Call a direct method and wait for the client's response (`MethodTimeoutError` after `timeout` s)."""
        identity = self.identity(device_id, module_id)
        if not name or "/" in name:
            raise BadRequestError(f"method name {name!r} must be non-empty and without '/'")
        if not 0 < timeout <= MAX_METHOD_TIMEOUT:
            raise BadRequestError(f"timeoutSeconds {timeout} must be more than 0 and at most {MAX_METHOD_TIMEOUT:g}")
        self._last_rid += 1
        rid = format(self._last_rid, "x")
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._methods[rid] = _PendingMethod(identity.client_id, future)
        try:
            topic = f"$iothub/methods/POST/{quote(name, safe='')}/?$rid={rid}"
            if not self.broker.deliver(identity.client_id, topic, json.dumps(payload).encode()):
                raise NotConnectedError(
                    f"{identity.client_id} is not connected or has not subscribed to direct methods "
                    "(set on_method_request_received)"
                )
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise MethodTimeoutError(
                    f"{identity.client_id} did not answer method {name!r} within {timeout:g} s"
                ) from None
        finally:
            del self._methods[rid]

    def drop(self, device_id: str, module_id: str | None = None) -> None:
        """Close the identity's TCP connection without DISCONNECT (the SDK reconnects); its session stays."""
        identity = self.identity(device_id, module_id)
        if not self.broker.drop(identity.client_id):
            raise NotConnectedError(f"{identity.client_id} is not connected")

    def is_connected(self, device_id: str, module_id: str | None = None) -> bool:
        """Whether the identity has an open connection."""
        return self.broker.is_connected(self.identity(device_id, module_id).client_id)

    def messages(self) -> list[Message]:
        """Recorded telemetry, oldest first (at most `MAX_RECORDED_MESSAGES`)."""
        return list(self._messages)

    async def close(self) -> None:
        """Close every connection; pending direct methods end with `MethodTimeoutError`."""
        for pending in self._methods.values():
            if not pending.future.done():
                pending.future.set_exception(MethodTimeoutError("the IoT Hub emulator stopped before a response"))
        await self.broker.close()

    # -- the broker's Application --------------------------------------------------------------

    def authenticate(self, connect: Connect, chain: list[bytes]) -> ConnectReturnCode:
        """CONNECT: a known identity, the IoT Hub user name, and a SAS token or an X.509 certificate."""
        identity = self._identities.get(connect.client_id)
        if identity is None:
            verdict = Verdict(accepted=False, reason="no such identity")
        else:
            verdict = check_username(connect.username, hostname=self.hostname, client_id=connect.client_id)
            if verdict.accepted and connect.password is not None:
                verdict = check_sas(
                    connect.password.decode("utf-8", "replace"),
                    resource=resource_uri(self.hostname, identity.device_id, identity.module_id),
                    keys=(identity.primary_key, identity.secondary_key),
                    now=self._clock(),
                )
            elif verdict.accepted:
                verdict = check_certificate(
                    chain,
                    client_id=connect.client_id,
                    cas=list(self._cas.values()),
                    thumbprints=[t for t in self._thumbprints.get(connect.client_id, ()) if t],
                    now=self._clock(),
                )
        if not verdict.accepted:
            logger.debug("CONNECT %r not authorized: %s", connect.client_id, verdict.reason)
            return ConnectReturnCode.NOT_AUTHORIZED
        logger.debug("CONNECT %r authorized: %s", connect.client_id, verdict.reason)
        return ConnectReturnCode.ACCEPTED

    def may_subscribe(self, client_id: str, topic_filter: str) -> bool:
        """Twin responses and desired patches, methods, and the identity's own inputs or cloud messages."""
        identity = self._identities[client_id]
        own = (
            f"devices/{identity.device_id}/modules/{identity.module_id}/inputs"
            if identity.module_id
            else f"devices/{identity.device_id}/messages/devicebound"
        )
        bases = ("$iothub/twin/res", "$iothub/twin/PATCH/properties/desired", "$iothub/methods/POST", own)
        return any(topic_filter.startswith(base + "/") for base in bases)

    def accept_publish(self, client_id: str, publish: Publish) -> Callable[[], None] | None:
        """Route a client's PUBLISH by topic; None (disconnect) for a topic this identity may not use."""
        identity = self._identities[client_id]
        path, _, query = publish.topic.partition("?")
        properties = _query(query)
        rid = properties.get("$rid")
        if path == "$iothub/twin/GET/" and rid:
            return lambda: self._answer_twin_get(identity, rid)
        if path == "$iothub/twin/PATCH/properties/reported/" and rid:
            return lambda: self._patch_reported(identity, rid, publish.payload)
        parts = path.split("/")
        if path.startswith("$iothub/methods/res/") and len(parts) == 5 and rid:
            return lambda: self._method_response(identity, parts[3], rid, publish.payload)
        base = f"devices/{identity.device_id}" + (f"/modules/{identity.module_id}" if identity.module_id else "")
        events = f"{base}/messages/events"
        if publish.topic == events or publish.topic.startswith(events + "/"):
            return lambda: self._record(identity, publish.topic[len(events) + 1 :], publish.payload)
        return None

    def _answer_twin_get(self, identity: Identity, rid: str) -> None:
        body = json.dumps(self._twins[identity.client_id].document()).encode()
        self._respond(identity, f"$iothub/twin/res/200/?$rid={quote(rid, safe='')}", body)

    def _patch_reported(self, identity: Identity, rid: str, payload: bytes) -> None:
        rid_query = f"$rid={quote(rid, safe='')}"
        try:
            patch = json.loads(payload)
        except ValueError:
            patch = None
        problem = _patch_problem(patch) if patch is not None else "the reported patch is not JSON"
        if problem:
            logger.debug("reported patch from %s refused: %s", identity.client_id, problem)
            error = json.dumps({"errorCode": 400, "message": problem}).encode()
            self._respond(identity, f"$iothub/twin/res/400/?{rid_query}", error)
            return
        twin = self._twins[identity.client_id]
        twin.reported = merge_patch(twin.reported, patch)
        twin.reported_version += 1
        self._respond(identity, f"$iothub/twin/res/204/?{rid_query}&$version={twin.reported_version}", b"")

    def _respond(self, identity: Identity, topic: str, body: bytes) -> None:
        if not self.broker.deliver(identity.client_id, topic, body):
            logger.debug("%s has not subscribed to $iothub/twin/res/#: response dropped", identity.client_id)

    def _method_response(self, identity: Identity, status: str, rid: str, payload: bytes) -> None:
        pending = self._methods.get(rid)
        if pending is None or pending.client_id != identity.client_id or pending.future.done():
            logger.debug("method response from %s for unknown or finished request %r", identity.client_id, rid)
            return
        try:
            code = int(unquote(status))
        except ValueError:
            logger.debug("method response from %s with status %r, not a number", identity.client_id, status)
            return
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            body = payload.decode("utf-8", "replace")
        pending.future.set_result(MethodResult(code, body))

    def _record(self, identity: Identity, properties: str, payload: bytes) -> None:
        self._messages.append(
            Message(identity.device_id, identity.module_id, _query(properties), payload, self._clock())
        )
