"""`edgecert run`: the module's entry point (the Docker image's command).

Everything it needs comes from the environment IoT Edge gives a module, plus a few settings of its
own (all optional):

| variable | meaning | default |
|---|---|---|
| IOTEDGE_* | the module identity and workload API (set by edgeAgent) | - |
| EDGECERT_CONNECTION_STRING | a module connection string instead (hosts, tests) | - |
| EDGECERT_HUB_CA_FILE | with a connection string: the CA of the hub's (or edgeHub's) TLS certificate | system CAs |
| EDGECERT_MQTT_PROXY | `host:port` of an HTTP CONNECT proxy to reach the hub | - |
| EDGECERT_STATE_DIR | the agent's state file folder (a volume, so it survives restarts) | /var/lib/edgecert |
| EDGECERT_REQUEST_DIR | the folder shared with the host helper for restart requests | /run/edgecert/requests |
| EDGECERT_METRICS_PORT | the Prometheus port; `off` disables it | 9600 |
| EDGECERT_VAULT_CA_FILE | a CA bundle for the vault when the configuration names none | - |
| EDGECERT_LOG_FORMAT, RuntimeLogLevel | `json` or text; the log level IoT Edge sets | text, info |

SIGTERM (edgeAgent stopping the module) ends the run within 10 s with the store consistent.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from edgecert.adapters.twin import ModuleTwin, TwinConnection
from edgecert.errors import UsageError
from edgecert.logs import configure_logging
from edgecert.service import Agent, AgentSettings

__all__ = ["run_module", "settings_from_environment"]


def settings_from_environment() -> tuple[AgentSettings, TwinConnection]:
    """The agent's settings and how to reach its twin, from the environment."""
    env = os.environ
    connection_string = env.get("EDGECERT_CONNECTION_STRING")
    if connection_string:
        fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
        device_id, module_id = fields.get("DeviceId"), fields.get("ModuleId")
        ca_file = env.get("EDGECERT_HUB_CA_FILE")
        proxy = env.get("EDGECERT_MQTT_PROXY")
        twin = TwinConnection(
            connection_string=connection_string,
            server_verification_cert=Path(ca_file).read_text() if ca_file else None,
            proxy=(proxy.rsplit(":", 1)[0], int(proxy.rsplit(":", 1)[1])) if proxy else None,
        )
    else:
        device_id, module_id = env.get("IOTEDGE_DEVICEID"), env.get("IOTEDGE_MODULEID")
        twin = TwinConnection()
    if not device_id or not module_id:
        raise UsageError(
            "no module identity in the environment",
            remedy="run as an IoT Edge module (IOTEDGE_* are set by edgeAgent) or set EDGECERT_CONNECTION_STRING "
            "to a module connection string",
        )
    port = env.get("EDGECERT_METRICS_PORT", "9600")
    settings = AgentSettings(
        device_id=device_id,
        module_id=module_id,
        state_file=Path(env.get("EDGECERT_STATE_DIR", "/var/lib/edgecert")) / "agent.json",
        request_dir=Path(env.get("EDGECERT_REQUEST_DIR", "/run/edgecert/requests")),
        metrics_port=None if port.lower() == "off" else int(port),
        vault_ca_file=Path(env["EDGECERT_VAULT_CA_FILE"]) if env.get("EDGECERT_VAULT_CA_FILE") else None,
    )
    return settings, twin


def run_module() -> int:
    """Run the agent until SIGTERM or SIGINT."""
    configure_logging()
    settings, connection = settings_from_environment()
    return asyncio.run(_main(settings, connection))


async def _main(settings: AgentSettings, connection: TwinConnection) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings, ModuleTwin(connection))
    await agent.run(stop)
    return 0
