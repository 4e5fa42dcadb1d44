"""The IoT Hub emulator's errors: what its Python API raises and its control API answers.

Each carries the HTTP status and the IoT Hub error code the control API puts in
`{"error": {"code", "message"}}` (codes as IoT Hub's REST API names them).

    HubError                 500  InternalServerError
    ├── BadRequestError      400  BadRequest           a malformed request, id, patch or certificate
    ├── IdentityNotFoundError 404 DeviceNotFound       no such device or module identity
    ├── NotConnectedError    404  DeviceNotOnline      not connected, or not subscribed to the feature
    └── MethodTimeoutError   504  GatewayTimeout       a direct method got no response in time
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BadRequestError", "HubError", "IdentityNotFoundError", "MethodTimeoutError", "NotConnectedError"]


class HubError(Exception):
    """Base of the emulator's errors; `status` and `code` are what the control API answers."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "InternalServerError"


class BadRequestError(HubError):
    """The request is malformed: an id, a JSON body, a twin patch, a thumbprint or a certificate."""

    status = 400
    code = "BadRequest"


class IdentityNotFoundError(HubError):
    """No device or module identity with that id (create it with add_device first)."""

    status = 404
    code = "DeviceNotFound"


class NotConnectedError(HubError):
    """The identity has no open connection, or has not subscribed to the feature asked for."""

    status = 404
    code = "DeviceNotOnline"


class MethodTimeoutError(HubError):
    """A direct method request got no response within its timeout."""

    status = 504
    code = "GatewayTimeout"
