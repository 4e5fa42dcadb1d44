"""The IoT Hub and IoT Edge workload API emulators: MQTT 3.1.1 over TLS for the unmodified azure-iot-device.

    codec.py      MQTT 3.1.1 packets (encode/decode), topic matching
    tls.py        the TLS 1.2 listener context that lets X.509 clients through to the IoT Hub rules
    broker.py     connections, sessions per client id, keep-alive, the HTTP CONNECT proxy
    auth.py       user name, SAS token and X.509 rules (pure)
    hub.py        identities, twins, direct methods, telemetry: the broker's Application
    workload.py   the IoT Edge workload API (trust bundle, sign)
    control.py    the JSON control API
    emulator.py   IotHubEmulator: all of it in one thread, with a Python API mirroring the control API

The control API is documented in docs/sandbox.md ("IoT Hub and workload API").
"""

from edgecert.sandbox.iothub.control import DeviceCredentials
from edgecert.sandbox.iothub.emulator import DEFAULT_HOSTNAME, IotHubEmulator
from edgecert.sandbox.iothub.errors import (
    BadRequestError,
    HubError,
    IdentityNotFoundError,
    MethodTimeoutError,
    NotConnectedError,
)
from edgecert.sandbox.iothub.hub import DesiredPatchResult, Message, MethodResult

__all__ = [
    "DEFAULT_HOSTNAME",
    "BadRequestError",
    "DesiredPatchResult",
    "DeviceCredentials",
    "HubError",
    "IdentityNotFoundError",
    "IotHubEmulator",
    "Message",
    "MethodResult",
    "MethodTimeoutError",
    "NotConnectedError",
]
