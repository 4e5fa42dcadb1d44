"""A small asyncio MQTT 3.1.1 broker: TLS connections, an HTTP CONNECT proxy, sessions per client id.

The broker knows MQTT, not IoT Hub. Who may connect, subscribe and publish, and what a publish
means, it asks of an `Application` (the IoT Hub rules in `hub.py`), on its own event loop and
synchronously, so a decision and the packets it causes stay in order.

MQTT behaviour (OASIS MQTT 3.1.1), narrowed to what IoT Hub does (reference iothub-and-edge.md §2.1):
- Sessions are kept per client id across connections when `clean_session` is 0: subscriptions and
  unacknowledged QoS 1 messages, which are sent again (DUP) when the client comes back. Nothing is
  queued for a client that is away: IoT Hub only notifies connected clients.
- One connection per client id: a new CONNECT takes over and the older connection is closed.
- QoS 1 at most: SUBSCRIBE asking for QoS 2 is granted 1; a QoS 2 PUBLISH closes the connection.
- A client that sends nothing for 1.5 × its keep-alive is disconnected (section 3.1.2.10).

Two ways in: `accept_tls` for a TLS listener (the SDK's port 8883 on an address of its own), and
`accept_proxy`, an HTTP CONNECT proxy (RFC 9110 §9.3.6) on any port that tunnels every request to
this broker, which lets the unmodified SDK (always port 8883, reference §1.4) reach a broker on
any port through `ProxyOptions` or the `mqtt_proxy` environment variable.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from edgecert.sandbox.iothub.codec import (
    DEFAULT_MAX_PACKET_SIZE,
    SUBSCRIBE_FAILURE,
    ConnAck,
    Connect,
    ConnectReturnCode,
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
    encode,
    read_packet,
    topic_matches,
    valid_topic_filter,
)
from edgecert.sandbox.iothub.tls import peer_chain

__all__ = ["Application", "Broker", "Session"]

logger = logging.getLogger(__name__)

#: Seconds a new connection has for TLS, the proxy request and CONNECT.
CONNECT_TIMEOUT = 10.0
# Seconds a closing connection has to finish its TLS shutdown before it is aborted.
_CLOSE_TIMEOUT = 1.0
# A client that stops reading is cut off instead of growing the buffer without end.
_MAX_BUFFERED = 4 * 1024 * 1024
# QoS 1 messages a client may leave unacknowledged before it counts as stuck.
_MAX_INFLIGHT = 1024
_PROXY_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
_PROXY_NOT_CONNECT = (
    b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
# What a misbehaving or vanishing client can raise while being served; logged at debug.
_CLIENT_ERRORS = (OSError, EOFError, TimeoutError, ProtocolError, asyncio.LimitOverrunError)


class Application(Protocol):
    """The rules a broker asks about; called on the broker's event loop."""

    def authenticate(self, connect: Connect, chain: list[bytes]) -> ConnectReturnCode:
        """Judge a CONNECT and the client's certificate chain (DER, leaf first; empty without one)."""
        ...

    def may_subscribe(self, client_id: str, topic_filter: str) -> bool:
        """Whether the client may subscribe to this (well-formed) filter."""
        ...

    def accept_publish(self, client_id: str, publish: Publish) -> Callable[[], None] | None:
        """What to do with a client's PUBLISH (run after it is acknowledged); None closes the connection."""
        ...


class _Link:
    """One client connection (after TLS): writes packets without waiting, closes politely or not."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, packet: Packet) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(encode(packet))
        if self.writer.transport.get_write_buffer_size() > _MAX_BUFFERED:
            logger.debug("closing a connection that stopped reading")
            self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def flush_and_close(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), CONNECT_TIMEOUT)
        finally:
            self.writer.close()


@dataclass(eq=False)
class Session:
    """What the broker keeps for one client id: subscriptions, unacknowledged messages, the live link."""

    client_id: str
    subscriptions: dict[str, int] = field(default_factory=dict)
    inflight: dict[int, Publish] = field(default_factory=dict)
    link: _Link | None = None
    _last_packet_id: int = field(default=0, init=False, repr=False)

    def next_packet_id(self) -> int:
        """A packet identifier not in flight (1..65535, wrapping)."""
        while True:
            self._last_packet_id = self._last_packet_id % 0xFFFF + 1
            if self._last_packet_id not in self.inflight:
                return self._last_packet_id


class Broker:
    """MQTT sessions and connections on one event loop; `accept_*` are `asyncio.start_server` callbacks."""

    def __init__(self, app: Application, tls: ssl.SSLContext, *, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE):
        self._app = app
        self._tls = tls
        self._max_packet_size = max_packet_size
        self._sessions: dict[str, Session] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a client that connected to a listener: TLS, then MQTT."""
        await self._run(reader, writer, proxied=False)

    async def accept_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a client that connected to the proxy: `CONNECT host:port`, then TLS, then MQTT."""
        await self._run(reader, writer, proxied=True)

    def deliver(self, client_id: str, topic: str, payload: bytes) -> bool:
        """Send a message to a connected client subscribed to `topic`; False when it is not."""
        session = self._sessions.get(client_id)
        if session is None or session.link is None:
            return False
        granted = [qos for topic_filter, qos in session.subscriptions.items() if topic_matches(topic_filter, topic)]
        if not granted:
            return False
        if max(granted) == 0:
            session.link.send(Publish(topic, payload))
            return True
        if len(session.inflight) >= _MAX_INFLIGHT:
            logger.debug("client %s left %d messages unacknowledged; closing it", client_id, len(session.inflight))
            session.link.abort()
            return False
        packet_id = session.next_packet_id()
        session.inflight[packet_id] = Publish(topic, payload, qos=1, packet_id=packet_id)
        session.link.send(session.inflight[packet_id])
        return True

    def is_connected(self, client_id: str) -> bool:
        """Whether a connection with this client id is open."""
        session = self._sessions.get(client_id)
        return session is not None and session.link is not None

    def drop(self, client_id: str) -> bool:
        """Cut the client's TCP connection without DISCONNECT (its session stays); False if not connected."""
        session = self._sessions.get(client_id)
        if session is None or session.link is None:
            return False
        # Detached at once, so the client counts as disconnected until it connects again.
        session.link.abort()
        session.link = None
        return True

    async def close(self) -> None:
        """Abort every connection and wait for their tasks to end (cancelling any still running after 5 s)."""
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _done, running = await asyncio.wait(list(self._tasks), timeout=5)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    # -- one connection -------------------------------------------------------------------------

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, proxied: bool) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - asyncio.start_server runs callbacks as tasks
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if proxied and not await self._proxy_handshake(reader, writer):
                return
            await writer.start_tls(self._tls, ssl_handshake_timeout=CONNECT_TIMEOUT)
            await self._serve(reader, writer)
        except _CLIENT_ERRORS as exc:
            logger.debug("connection ended: %s: %s", type(exc).__name__, exc)
        except asyncio.CancelledError:
            # This is the root of the connection's own task, so ending it is all cancelling asks for;
            # and Python 3.11's start_server logs a cancelled client task as an error.
            logger.debug("connection cancelled")
        except Exception:
            logger.exception("the MQTT broker failed serving a connection")
        finally:
            await self._close(writer)
            self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Close politely (TLS close_notify) for a moment, then for certain.

        A TLS shutdown still pending when the loop stops would leave the TCP transport open.
        """
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
        except (*_CLIENT_ERRORS, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def _proxy_handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
        method, _, target = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        if method != "CONNECT":
            logger.debug("proxy: refused a %s request", method)
            writer.write(_PROXY_NOT_CONNECT)
            await writer.drain()
            return False
        # Every target leads to this broker; the client still checks our certificate against its name.
        logger.debug("proxy: tunnel for %s", target.rsplit(" ", 1)[0])
        writer.write(_PROXY_OK)
        await writer.drain()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connect = await asyncio.wait_for(read_packet(reader, max_size=self._max_packet_size), CONNECT_TIMEOUT)
        if not isinstance(connect, Connect):
            raise ProtocolError(f"the first packet is {type(connect).__name__}, not CONNECT")
        link = _Link(writer)
        code = self._judge(connect, writer)
        if code != ConnectReturnCode.ACCEPTED:
            logger.debug("refused CONNECT from %r: return code %d", connect.client_id, code)
            link.send(ConnAck(session_present=False, return_code=code))
            await link.flush_and_close()
            return
        session, present = self._attach(connect, link)
        try:
            link.send(ConnAck(session_present=present, return_code=ConnectReturnCode.ACCEPTED))
            for publish in session.inflight.values():
                link.send(replace(publish, dup=True))
            await self._read_loop(reader, link, session, keep_alive=connect.keep_alive)
        finally:
            self._detach(session, link, clean=connect.clean_session)

    def _judge(self, connect: Connect, writer: asyncio.StreamWriter) -> ConnectReturnCode:
        if connect.protocol_name != "MQTT" or connect.protocol_level != 4:
            return ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION
        if not connect.client_id:
            return ConnectReturnCode.IDENTIFIER_REJECTED
        return self._app.authenticate(connect, peer_chain(writer.get_extra_info("ssl_object")))

    def _attach(self, connect: Connect, link: _Link) -> tuple[Session, bool]:
        old = self._sessions.get(connect.client_id)
        if old is not None and old.link is not None:
            logger.debug("client %s connected again: closing its older connection", connect.client_id)
            old.link.abort()
            old.link = None
        if old is None or connect.clean_session:
            session, present = Session(connect.client_id), False
            self._sessions[connect.client_id] = session
        else:
            session, present = old, True
        session.link = link
        return session, present

    def _detach(self, session: Session, link: _Link, *, clean: bool) -> None:
        if session.link is link:
            session.link = None
        if clean and session.link is None and self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]

    async def _read_loop(self, reader: asyncio.StreamReader, link: _Link, session: Session, *, keep_alive: int) -> None:
        timeout = keep_alive * 1.5 if keep_alive else None
        while True:
            try:
                packet = await asyncio.wait_for(read_packet(reader, max_size=self._max_packet_size), timeout)
            except TimeoutError:
                logger.debug("client %s sent nothing for 1.5 x %d s: closing", session.client_id, keep_alive)
                return
            match packet:
                case Publish():
                    if not self._on_publish(link, session, packet):
                        return
                case PubAck(packet_id):
                    session.inflight.pop(packet_id, None)
                case Subscribe(packet_id, topics):
                    codes = [self._subscribe(session, topic_filter, qos) for topic_filter, qos in topics]
                    link.send(SubAck(packet_id, tuple(codes)))
                case Unsubscribe(packet_id, topics):
                    for topic_filter in topics:
                        session.subscriptions.pop(topic_filter, None)
                    link.send(UnsubAck(packet_id))
                case PingReq():
                    link.send(PingResp())
                case Disconnect():
                    return
                case _:
                    raise ProtocolError(f"a client does not send {type(packet).__name__}")

    def _subscribe(self, session: Session, topic_filter: str, qos: int) -> int:
        if not valid_topic_filter(topic_filter) or not self._app.may_subscribe(session.client_id, topic_filter):
            logger.debug("refused subscription of %s to %r", session.client_id, topic_filter)
            return SUBSCRIBE_FAILURE
        granted = min(qos, 1)
        session.subscriptions[topic_filter] = granted
        return granted

    def _on_publish(self, link: _Link, session: Session, publish: Publish) -> bool:
        if publish.qos > 1:
            logger.debug("client %s published at QoS 2, which IoT Hub does not support: closing", session.client_id)
            return False
        action = self._app.accept_publish(session.client_id, publish)
        if action is None:
            logger.debug("client %s may not publish to %r: closing", session.client_id, publish.topic)
            return False
        if publish.packet_id is not None:
            link.send(PubAck(publish.packet_id))
        action()
        return True
