"""Serving an aiohttp application on an address of our choosing (the metrics endpoint, the emulators)."""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web

__all__ = ["SSL_SHUTDOWN_TIMEOUT", "listen"]


async def listen(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); return the runner and the real port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))

    async def close_listener(_app: web.Application) -> None:
        sock.close()  # the site stops listening, but the socket given to it stays ours to close

    app.on_cleanup.append(close_listener)
    # in-flight requests get 2 s at shutdown (an emulator stopping mid-request must not hang the caller)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
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
