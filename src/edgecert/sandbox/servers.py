"""Running emulators: an event loop in its own thread, TLS listeners on loopback, admin auth.

Emulators never share the event loop of the code under test: azure-iot-device's handler setters
block until SUBACK and deadlock when the broker runs on the caller's loop (reference
iothub-and-edge.md §2.4), and a test's own loop must stay free for the SDK clients.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from edgecert.serving import SSL_SHUTDOWN_TIMEOUT, listen

__all__ = ["SSL_SHUTDOWN_TIMEOUT", "LoopThread", "admin_auth", "json_error", "listen", "server_tls"]

_T = TypeVar("_T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopThread:
    """An asyncio event loop running in a daemon thread; `run` executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30) -> _T:
        """Run `coro` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], _T], timeout: float = 30) -> _T:
        """Run a plain function on the thread's loop (where an emulator's state lives) and return its result."""

        async def invoke() -> _T:
            return fn()

        return self.run(invoke(), timeout)

    def stop(self) -> None:
        """Stop the loop and wait for the thread to end."""
        if self._thread.is_alive():
            # TLS connections close in steps (close_notify, then the socket): let those steps run
            self.run(asyncio.sleep(SSL_SHUTDOWN_TIMEOUT * 2))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


def server_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 and 1.3) for one listener."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def admin_auth(token: str) -> Middleware:
    """Middleware: every control request carries `Authorization: Bearer <token>`."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return json_error(401, "Unauthorized", "control requests need 'Authorization: Bearer <adminToken>'")
        return await handler(request)

    return check


def json_error(status: int, code: str, message: str) -> web.Response:
    """An error in the control API's shape: {"error": {"code", "message"}}."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
