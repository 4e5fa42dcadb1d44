"""MQTT 3.1.1 packets: the ones IoT Hub speaks, as frozen values, with `encode` and `decode`.

Only what IoT Hub uses is supported (OASIS MQTT 3.1.1, section 3): CONNECT/CONNACK, PUBLISH at QoS 0
and 1 with PUBACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and DISCONNECT. QoS 2
(PUBREC/PUBREL/PUBCOMP) is refused like IoT Hub refuses it. Both directions are encoded and decoded,
so tests can speak to the broker with the same code. Anything malformed raises `ProtocolError`,
and the broker closes the connection (MQTT 3.1.1 section 4.8).
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "SUBSCRIBE_FAILURE",
    "ConnAck",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "Packet",
    "PingReq",
    "PingResp",
    "ProtocolError",
    "PubAck",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "decode",
    "encode",
    "read_packet",
    "topic_matches",
    "valid_topic_filter",
]

#: The largest remaining length accepted, in bytes (IoT Hub's own limit for a message is 256 KiB).
DEFAULT_MAX_PACKET_SIZE = 512 * 1024
#: The SUBACK return code for a refused subscription.
SUBSCRIBE_FAILURE = 0x80


class _Type(enum.IntEnum):
    """Control packet types (section 2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


_QOS2_TYPES = (_Type.PUBREC, _Type.PUBREL, _Type.PUBCOMP)
_MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable length integer (section 2.2.3)


class ProtocolError(Exception):
    """A packet that breaks MQTT 3.1.1 (or uses a part IoT Hub does not support)."""


class ConnectReturnCode(enum.IntEnum):
    """CONNACK return codes (section 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


@dataclass(frozen=True)
class Connect:
    """CONNECT: the client's identity, credentials and keep-alive (seconds, 0 = none)."""

    client_id: str
    keep_alive: int = 60
    clean_session: bool = True
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)
    will_topic: str | None = None
    will_payload: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True)
class ConnAck:
    """CONNACK: whether a stored session was resumed, and the return code."""

    session_present: bool
    return_code: int


@dataclass(frozen=True)
class Publish:
    """PUBLISH: a message; `packet_id` is set exactly when `qos` is 1 (or 2)."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    packet_id: int | None = None
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True)
class PubAck:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    """SUBSCRIBE: topic filters with the QoS asked for each."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SubAck:
    """SUBACK: the granted QoS per filter, or `SUBSCRIBE_FAILURE`."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True)
class Unsubscribe:
    """UNSUBSCRIBE: topic filters to forget."""

    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True)
class UnsubAck:
    """UNSUBACK: acknowledges an UNSUBSCRIBE."""

    packet_id: int


@dataclass(frozen=True)
class PingReq:
    """PINGREQ: the client's keep-alive."""


@dataclass(frozen=True)
class PingResp:
    """PINGRESP: the answer to PINGREQ."""


@dataclass(frozen=True)
class Disconnect:
    """DISCONNECT: the client closes the connection cleanly."""


Packet = (
    Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)


_TYPE_OF: dict[type, _Type] = {
    Connect: _Type.CONNECT,
    ConnAck: _Type.CONNACK,
    Publish: _Type.PUBLISH,
    PubAck: _Type.PUBACK,
    Subscribe: _Type.SUBSCRIBE,
    SubAck: _Type.SUBACK,
    Unsubscribe: _Type.UNSUBSCRIBE,
    UnsubAck: _Type.UNSUBACK,
    PingReq: _Type.PINGREQ,
    PingResp: _Type.PINGRESP,
    Disconnect: _Type.DISCONNECT,
}


# -- encoding -------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ProtocolError("a string is longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ProtocolError("binary data is longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    if length > _MAX_REMAINING_LENGTH:
        raise ProtocolError(f"a packet of {length} bytes is too long for MQTT")
    out = bytearray()
    while True:
        digit, length = length % 128, length // 128
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _frame(packet_type: int, flags: int, body: bytes) -> bytes:
    return bytes([packet_type << 4 | flags]) + _remaining_length(len(body)) + body


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ProtocolError(f"packet identifier {packet_id!r} is not in 1..65535")
    return struct.pack("!H", packet_id)


def _encode_connect(packet: Connect) -> bytes:
    flags = (
        (0x02 if packet.clean_session else 0)
        | (0x04 | packet.will_qos << 3 | (0x20 if packet.will_retain else 0) if packet.will_topic is not None else 0)
        | (0x40 if packet.password is not None else 0)
        | (0x80 if packet.username is not None else 0)
    )
    body = _string(packet.protocol_name) + bytes([packet.protocol_level, flags]) + struct.pack("!H", packet.keep_alive)
    body += _string(packet.client_id)
    if packet.will_topic is not None:
        body += _string(packet.will_topic) + _binary(packet.will_payload)
    if packet.username is not None:
        body += _string(packet.username)
    if packet.password is not None:
        body += _binary(packet.password)
    return _frame(_Type.CONNECT, 0, body)


def encode(packet: Packet) -> bytes:
    """The bytes of one packet on the wire."""
    flags, body = 0, b""
    match packet:
        case Connect():
            return _encode_connect(packet)
        case ConnAck(session_present, return_code):
            body = bytes([1 if session_present else 0, return_code])
        case Publish(topic, payload, qos, packet_id, retain, dup):
            if qos not in (0, 1, 2):
                raise ProtocolError(f"QoS {qos} does not exist")
            flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
            body = _string(topic) + (_packet_id(packet_id) if qos else b"") + payload
        case PubAck(packet_id) | UnsubAck(packet_id):
            body = _packet_id(packet_id)
        case Subscribe(packet_id, topics):
            flags, body = 0x02, _packet_id(packet_id) + b"".join(_string(f) + bytes([q]) for f, q in topics)
        case SubAck(packet_id, return_codes):
            body = _packet_id(packet_id) + bytes(return_codes)
        case Unsubscribe(packet_id, topics):
            flags, body = 0x02, _packet_id(packet_id) + b"".join(_string(f) for f in topics)
        case PingReq() | PingResp() | Disconnect():
            pass
    return _frame(_TYPE_OF[type(packet)], flags, body)


# -- decoding -------------------------------------------------------------------------------------


class _Reader:
    """Reads the fields of one packet body, raising ProtocolError when it runs short."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, count: int) -> bytes:
        if self._at + count > len(self._data):
            raise ProtocolError("the packet ends in the middle of a field")
        chunk = self._data[self._at : self._at + count]
        self._at += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("a string is not UTF-8") from exc
        if "\x00" in text:
            raise ProtocolError("a string contains U+0000")
        return text

    def packet_id(self) -> int:
        packet_id = self.uint16()
        if packet_id == 0:
            raise ProtocolError("packet identifier 0 is not allowed")
        return packet_id

    def rest(self) -> bytes:
        chunk = self._data[self._at :]
        self._at = len(self._data)
        return chunk

    @property
    def done(self) -> bool:
        return self._at == len(self._data)


def _decode_connect(body: _Reader) -> Connect:
    protocol_name = body.string()
    protocol_level = body.byte()
    flags = body.byte()
    keep_alive = body.uint16()
    if flags & 0x01:
        raise ProtocolError("the reserved CONNECT flag is set")
    will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    if will_qos == 3 or (not will and (will_qos or flags & 0x20)):
        raise ProtocolError("the CONNECT will flags are inconsistent")
    if flags & 0x40 and not flags & 0x80:
        raise ProtocolError("a CONNECT password needs a user name")
    client_id = body.string()
    will_topic = body.string() if will else None
    will_payload = body.binary() if will else b""
    username = body.string() if flags & 0x80 else None
    password = body.binary() if flags & 0x40 else None
    return Connect(
        client_id=client_id,
        keep_alive=keep_alive,
        clean_session=bool(flags & 0x02),
        username=username,
        password=password,
        will_topic=will_topic,
        will_payload=will_payload,
        will_qos=will_qos,
        will_retain=bool(flags & 0x20),
        protocol_name=protocol_name,
        protocol_level=protocol_level,
    )


def _decode_publish(flags: int, body: _Reader) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    topic = body.string()
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError(f"cannot publish to topic {topic!r}")
    packet_id = body.packet_id() if qos else None
    return Publish(topic, body.rest(), qos, packet_id, retain=bool(flags & 0x01), dup=bool(flags & 0x08))


def _decode_subscribe(body: _Reader) -> Subscribe:
    packet_id = body.packet_id()
    topics: list[tuple[str, int]] = []
    while not body.done:
        topic_filter = body.string()
        options = body.byte()
        if options & 0xFC:
            raise ProtocolError("the reserved bits of a requested QoS are set")
        if options == 3:
            raise ProtocolError("SUBSCRIBE asks for QoS 3")
        topics.append((topic_filter, options))
    if not topics:
        raise ProtocolError("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(topics))


def _decode_unsubscribe(body: _Reader) -> Unsubscribe:
    packet_id = body.packet_id()
    topics: list[str] = []
    while not body.done:
        topics.append(body.string())
    if not topics:
        raise ProtocolError("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, tuple(topics))


def _decode_connack(body: _Reader) -> ConnAck:
    flags, return_code = body.byte(), body.byte()
    return ConnAck(bool(flags & 0x01), return_code)


def _decode_suback(body: _Reader) -> SubAck:
    packet_id = body.packet_id()
    return SubAck(packet_id, tuple(body.rest()))


# How to read each packet type's body (PUBLISH also needs its fixed-header flags).
_DECODERS: dict[int, Callable[[_Reader], Packet]] = {
    _Type.CONNECT: _decode_connect,
    _Type.CONNACK: _decode_connack,
    _Type.PUBACK: lambda body: PubAck(body.packet_id()),
    _Type.SUBSCRIBE: _decode_subscribe,
    _Type.SUBACK: _decode_suback,
    _Type.UNSUBSCRIBE: _decode_unsubscribe,
    _Type.UNSUBACK: lambda body: UnsubAck(body.packet_id()),
    _Type.PINGREQ: lambda _body: PingReq(),
    _Type.PINGRESP: lambda _body: PingResp(),
    _Type.DISCONNECT: lambda _body: Disconnect(),
}
# The fixed-header flags every packet type other than PUBLISH must carry (section 2.2.2).
_REQUIRED_FLAGS: dict[int, int] = {_Type.SUBSCRIBE: 0x02, _Type.UNSUBSCRIBE: 0x02}


def decode(header: int, data: bytes) -> Packet:
    """Decode one packet from its first byte and its body (the bytes after the remaining length)."""
    packet_type, flags = header >> 4, header & 0x0F
    if packet_type in _QOS2_TYPES:
        raise ProtocolError(f"{_Type(packet_type).name}: QoS 2 is not supported")
    body = _Reader(data)
    if packet_type == _Type.PUBLISH:
        packet: Packet = _decode_publish(flags, body)
    elif packet_type in _DECODERS:
        if flags != _REQUIRED_FLAGS.get(packet_type, 0):
            raise ProtocolError(f"{_Type(packet_type).name} with fixed-header flags {flags:#x}")
        packet = _DECODERS[packet_type](body)
    else:
        raise ProtocolError(f"packet type {packet_type} does not exist")
    if not body.done:
        raise ProtocolError(f"{type(packet).__name__} has {len(body.rest())} unexpected trailing bytes")
    return packet


async def read_packet(reader: asyncio.StreamReader, *, max_size: int = DEFAULT_MAX_PACKET_SIZE) -> Packet:
    """Read and decode the next packet; `asyncio.IncompleteReadError` when the stream ends first."""
    header = (await reader.readexactly(1))[0]
    length, multiplier = 0, 1
    for _ in range(4):
        digit = (await reader.readexactly(1))[0]
        length += (digit & 0x7F) * multiplier
        if not digit & 0x80:
            break
        multiplier *= 128
    else:
        raise ProtocolError("the remaining length is longer than four bytes")
    if length > max_size:
        raise ProtocolError(f"a packet of {length} bytes is larger than the limit of {max_size}")
    return decode(header, await reader.readexactly(length))


# -- topics ---------------------------------------------------------------------------------------


def valid_topic_filter(topic_filter: str) -> bool:
    """Whether a SUBSCRIBE filter is well formed: `#` only last and alone, `+` only as a whole level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` (section 4.7); wildcards first never match `$` topics."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)
