"""Running emulators: an event loop in its own thread, TLS listeners on loopback, admin auth.

Emulators never share the event loop of the code under test: azure-iot-device's handler setters
block until SUBACK and deadlock when the broker runs on the caller's loop (reference
iothub-and-edge.md §2.4), and a test's own loop must stay free for the SDK clients.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = ["LoopThread", "admin_auth", "json_error", "listen", "server_tls"]

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


async def listen(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); return the runner and the real port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))

    async def close_listener(_app: web.Application) -> None:
        sock.close()  # the site stops listening, but the socket given to it stays ours to close

    app.on_cleanup.append(close_listener)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = _QuickTlsShutdownSite(runner, sock, ssl_context=tls)
    await site.start()
    return runner, int(sock.getsockname()[1])


#: How long a closing TLS connection waits for the peer's close_notify before it is aborted.
SSL_SHUTDOWN_TIMEOUT = 0.1


class _QuickTlsShutdownSite(web.SockSite):
    """A SockSite whose TLS connections give up waiting for close_notify quickly.

    An idle client (a connection pool) never answers close_notify; asyncio then waits 30 s by default
    before it closes the socket, longer than an emulator stop waits, and the socket leaks.
    """

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:  # pragma: no cover - setup() ran in listen()
            raise RuntimeError("the runner is not set up")
        self._server = await asyncio.get_running_loop().create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT if self._ssl_context is not None else None,
        )


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
