"""The module twin and direct methods through azure-iot-device's aio `IoTHubModuleClient`.

Only this module imports `azure.iot.device`. What the SDK does and the field has taught
(reference iothub-and-edge.md §2.3-2.6, §6), and how this adapter copes:

- handlers run on the SDK's own threads and loops: desired patches, method calls and connection
  changes are handed to the agent's loop with `call_soon_threadsafe` onto an asyncio queue;
- the handler setters block until SUBACK: they are set from a worker thread, not the agent's loop;
- twin calls have no timeout of their own: every call here runs under one;
- CONNACK refused (bad credentials) and an unreachable proxy are never retried by the SDK, and a
  stale trust bundle after an Edge CA renewal makes it retry TLS forever: the adapter reports
  `ConnectionLost` and the agent makes a new client (which fetches the trust bundle again), with
  backoff;
- after a reconnect the SDK may deliver the whole desired section as a "patch": the agent treats
  every desired event as possibly complete, and re-reads the twin on `Reconnected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from azure.iot.device import MethodResponse, ProxyOptions
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.device.exceptions import ClientError, CredentialError

from edgecert.errors import TwinError
from edgecert.ports import ConnectionLost, DesiredPatch, MethodCall, Reconnected, TwinEvent

__all__ = ["ModuleTwin", "TwinConnection"]

logger = logging.getLogger("edgecert.twin")

#: Background errors after which azure-iot-device 2.14 stops reconnecting on its own (its retry list
#: holds only transient connection errors, reference §2.6; a refused proxy was seen here too).
_NOT_RETRIED_BY_THE_SDK = frozenset(
    {"ProtocolProxyError", "UnauthorizedError", "CredentialError", "ProtocolClientError", "TlsExchangeAuthError"}
)


@dataclass(frozen=True)
class TwinConnection:
    """How to make the module client: from the IoT Edge environment, or from a connection string."""

    connection_string: str | None = None
    server_verification_cert: str | None = None
    proxy: tuple[str, int] | None = None
    retry_interval: timedelta = timedelta(seconds=10)
    keep_alive: int = 60

    def make(self) -> IoTHubModuleClient:
        """A new client (for the edge environment this reads the workload API's trust bundle again)."""
        options: dict[str, Any] = {
            "connection_retry_interval": max(1, int(self.retry_interval.total_seconds())),
            "keep_alive": self.keep_alive,
        }
        if self.proxy is not None:
            # the SDK's ProxyOptions has no annotations
            options["proxy_options"] = ProxyOptions("HTTP", self.proxy[0], self.proxy[1])  # type: ignore[no-untyped-call]
        if self.connection_string is None:
            return IoTHubModuleClient.create_from_edge_environment(**options)
        return IoTHubModuleClient.create_from_connection_string(
            self.connection_string, server_verification_cert=self.server_verification_cert, **options
        )


class ModuleTwin:
    """The agent's channel to its module twin: events in, reported patches and method answers out."""

    def __init__(
        self,
        connection: TwinConnection,
        *,
        timeout: timedelta = timedelta(seconds=30),
        make_client: Callable[[], IoTHubModuleClient] | None = None,
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.events: asyncio.Queue[TwinEvent] = asyncio.Queue()
        self._make = make_client or connection.make
        self._client: IoTHubModuleClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()  # noqa: S311 - reconnect jitter

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Make a client, install the handlers and connect, retrying with backoff until `stop` is set."""
        self._loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            try:
                await self._open()
            except TwinError as exc:
                logger.warning("twin connection failed, retrying in %.0f s: %s", delay, exc)
                await self._close_client()
                if stop is not None and stop.is_set():
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait() if stop is not None else asyncio.sleep(delay), delay)
                if stop is not None and stop.is_set():
                    raise
                delay = min(60.0, delay * 2) * (0.5 + self._rng.random() / 2)
                continue
            return

    async def restart(self) -> None:
        """Throw the client away and make a new one (stale trust bundle, refused credentials)."""
        await self._close_client()
        await self.start()
        self.events.put_nowait(Reconnected())

    async def close(self) -> None:
        """Disconnect and release the client."""
        await self._close_client()

    async def _open(self) -> None:
        try:
            client = await asyncio.to_thread(self._make)
        except (ValueError, OSError) as exc:
            raise TwinError("make the module client", exc) from exc
        self._client = client
        # annotated in the SDK as taking an argument; it calls the handler with none
        client.on_connection_state_change = self._connection_changed  # type: ignore[assignment]
        client.on_background_exception = self._background
        # the setters block until the SUBACK arrives: never on this loop
        await self._call(
            "subscribe to desired patches",
            asyncio.to_thread(setattr, client, "on_twin_desired_properties_patch_received", self._desired),
        )
        await self._call(
            "subscribe to methods", asyncio.to_thread(setattr, client, "on_method_request_received", self._method)
        )
        await self._call("connect", client.connect())

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # shutting down a broken client may fail in many ways
                await asyncio.wait_for(client.shutdown(), self.timeout.total_seconds())

    # -- calls -----------------------------------------------------------------------------------

    async def desired(self) -> dict[str, Any]:
        """The whole desired section (with `$version`)."""
        twin = await self._call("get the twin", self._require().get_twin())
        desired = twin.get("desired") if isinstance(twin, dict) else None
        return desired if isinstance(desired, dict) else {}

    async def report(self, patch: dict[str, Any]) -> None:
        """Patch the reported properties."""
        await self._call("patch reported properties", self._require().patch_twin_reported_properties(patch))

    async def respond(self, call: MethodCall, status: int, payload: Any) -> None:
        """Answer a direct method."""
        response = MethodResponse.create_from_method_request(call.request, status, payload)
        await self._call(f"answer method {call.name}", self._require().send_method_response(response))

    @property
    def connected(self) -> bool:
        """Whether the SDK says it is connected."""
        return bool(self._client is not None and self._client.connected)

    def _require(self) -> IoTHubModuleClient:
        if self._client is None:
            raise TwinError("use the twin", "no client (not started, or being made again)")
        return self._client

    async def _call(self, operation: str, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.timeout.total_seconds())
        except TimeoutError:
            raise TwinError(operation, f"no answer within {self.timeout.total_seconds():.0f} s") from None
        except (ClientError, CredentialError, ValueError, OSError) as exc:
            raise TwinError(operation, exc) from exc

    # -- handlers (SDK threads) ------------------------------------------------------------------

    def _post(self, event: TwinEvent) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _desired(self, patch: Any) -> None:
        if isinstance(patch, dict):
            self._post(DesiredPatch(patch))

    def _method(self, request: Any) -> None:
        self._post(MethodCall(str(request.request_id), str(request.name), request.payload, request))

    def _connection_changed(self) -> None:
        client = self._client
        if client is not None and client.connected:
            self._post(Reconnected())

    def _background(self, exc: Exception) -> None:
        kind = type(exc).__name__
        logger.warning("module client background error: %s", kind)
        if kind in _NOT_RETRIED_BY_THE_SDK:
            self._post(ConnectionLost(kind))
