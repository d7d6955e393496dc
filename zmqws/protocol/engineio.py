"""Engine.IO protocol v4 and Socket.IO protocol v5 packets, sans-I/O.

Engine.IO v4 (https://socket.io/docs/v4/engine-io-protocol/): a packet is a
type character and data: ``0`` open, ``1`` close, ``2`` ping, ``3`` pong,
``4`` message, ``5`` upgrade, ``6`` noop.  Over HTTP long-polling a payload
is packets joined by the record separator ``\\x1e``, binary packets written
``b`` + base64.  Over WebSocket a packet is one frame: text for strings, a
binary frame (no type character) for a binary message.

Socket.IO v5 (https://socket.io/docs/v4/socket-io-protocol/) rides in
Engine.IO message packets: a type digit (``0`` CONNECT, ``1`` DISCONNECT,
``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5`` BINARY_EVENT, ``6``
BINARY_ACK), for binary packets the attachment count and ``-``, a namespace
and ``,`` unless it is ``/``, an ack id, and JSON data.  Binary packets are
followed by their attachments, which replace ``{"_placeholder": true, "num": N}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from enum import IntEnum
from typing import Any, List, Optional, Tuple, Union

from .errors import SocketIOError, ZmqwsError

__all__ = [
    "EngineIOError", "EngineErrorCode", "SioPacketType", "SocketIOError", "Packet",
    "decode_payload", "decode_payloads", "encode_payload",
    "SioPacket", "decode_sio", "encode_sio", "Reassembler", "ERROR_MESSAGES",
    "OPEN", "CLOSE", "PING", "PONG", "MESSAGE", "UPGRADE", "NOOP", "SEPARATOR", "SEPARATOR_BYTES",
    "CONNECT", "DISCONNECT", "EVENT", "ACK", "CONNECT_ERROR", "BINARY_EVENT", "BINARY_ACK",
]

# Engine.IO packet types
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0", "1", "2", "3", "4", "5", "6"
_EIO_TYPES = frozenset(OPEN + CLOSE + PING + PONG + MESSAGE + UPGRADE + NOOP)
SEPARATOR = "\x1e"
SEPARATOR_BYTES = b"\x1e"

class EngineErrorCode(IntEnum):
    """Engine.IO HTTP error codes (engine.io's ``Server.errors``)."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_VERSION = 5


UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, UNSUPPORTED_VERSION = (
    int(code) for code in EngineErrorCode)
ERROR_MESSAGES = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_VERSION: "Unsupported protocol version",
}


class SioPacketType(IntEnum):
    """Socket.IO v5 packet types."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


# Plain-int aliases (str() and formatting of an IntEnum member differ across Python versions).
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = (int(t) for t in SioPacketType)

MAX_ATTACHMENTS = 10
MAX_ACK_ID = 2 ** 53  # a JavaScript number stays exact up to here (16 digits)


class EngineIOError(ZmqwsError):
    """A request the Engine.IO server refuses: HTTP 400 (403 for FORBIDDEN) with ``{"code", "message"}``."""

    def __init__(self, code: int, message: Optional[str] = None) -> None:
        super().__init__(message or ERROR_MESSAGES[code])
        self.code = code
        self.message = message or ERROR_MESSAGES[code]

    @property
    def status(self) -> int:
        return 403 if self.code == FORBIDDEN else 400

    def body(self) -> bytes:
        return json.dumps({"code": self.code, "message": self.message}).encode("utf-8")


Packet = Tuple[str, Union[str, bytes]]  # (type, data); a binary message has type MESSAGE and bytes


def decode_payload(body: bytes, max_packets: int = 1000) -> List[Packet]:
    """An HTTP long-polling request body: packets separated by ``\\x1e``; ``b`` + base64 = binary."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SocketIOError("payload is not UTF-8") from None
    items = text.split(SEPARATOR)
    if len(items) > max_packets:
        raise SocketIOError("too many packets in one payload")
    packets: List[Packet] = []
    for item in items:
        if not item:
            raise SocketIOError("empty packet")
        kind = item[0]
        if kind == "b":
            try:
                packets.append((MESSAGE, base64.b64decode(item[1:], validate=True)))
            except (binascii.Error, ValueError):
                raise SocketIOError("invalid base64 packet") from None
        elif kind in _EIO_TYPES:
            packets.append((kind, item[1:]))
        else:
            raise SocketIOError(f"unknown packet type {kind!r}")
    return packets


def encode_payload(packets: List[Packet]) -> bytes:
    """Packets for a long-polling response: strings as is, binary as ``b`` + base64.  Encoded
    payloads join into one with :data:`SEPARATOR` (text packets never hold it: their JSON
    escapes control characters), so a payload can be built once and shared."""
    parts = []
    for kind, data in packets:
        if isinstance(data, bytes):
            parts.append("b" + base64.b64encode(data).decode("ascii"))
        else:
            parts.append(kind + data)
    return SEPARATOR.join(parts).encode("utf-8")


def decode_payloads(payloads: List[bytes]) -> List[Packet]:
    """Payloads :func:`encode_payload` made, back to their packets, however many (a polling
    session moving to WebSocket gets what waited for its next poll as frames)."""
    data = SEPARATOR_BYTES.join(payloads)
    return decode_payload(data, max_packets=len(data)) if data else []


def decode_ws_frame(data: Union[str, bytes]) -> Packet:
    """One WebSocket frame: text = type character + data; binary = a binary message."""
    if isinstance(data, bytes):
        return MESSAGE, data
    if not data or data[0] not in _EIO_TYPES:
        raise SocketIOError("unknown packet type")
    return data[0], data[1:]


class SioPacket:
    """A decoded Socket.IO packet."""

    __slots__ = ("type", "nsp", "id", "data", "attachments")

    def __init__(self, type_: int, nsp: str = "/", id_: Optional[int] = None, data: Any = None,
                 attachments: int = 0) -> None:
        self.type = type_
        self.nsp = nsp
        self.id = id_
        self.data = data
        self.attachments = attachments

    def __repr__(self) -> str:  # pragma: no cover
        return f"SioPacket({self.type}, {self.nsp!r}, {self.id}, {self.data!r})"


def decode_sio(text: str, max_attachments: int = MAX_ATTACHMENTS) -> SioPacket:
    """Parse a Socket.IO packet string (the data of an Engine.IO message packet)."""
    if not text or text[0] not in "0123456":  # not str.isdigit(): "²" is a digit to it
        raise SocketIOError("unknown Socket.IO packet type")
    kind = int(text[0])
    i = 1
    attachments = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", 1)
        count = text[1:dash] if dash > 0 else ""
        if not count.isdigit() or not count.isascii() or len(count) > len(str(max_attachments)):
            raise SocketIOError("illegal attachments")
        attachments = int(count)
        if attachments < 1 or attachments > max_attachments:
            raise SocketIOError("illegal attachments")
        i = dash + 1
    nsp = "/"
    if text[i:i + 1] == "/":
        comma = text.find(",", i)
        end = comma if comma >= 0 else len(text)
        nsp = text[i:end]
        i = end + 1 if comma >= 0 else end
    start = i
    while i < len(text) and text[i].isdigit() and text[i].isascii():
        i += 1
    if i - start > len(str(MAX_ACK_ID)):  # before int(), which refuses more than 4300 digits
        raise SocketIOError("ack id too large")
    ack_id = int(text[start:i]) if i > start else None
    if ack_id is not None and ack_id > MAX_ACK_ID:
        raise SocketIOError("ack id too large")
    data = None
    if i < len(text):
        try:
            data = json.loads(text[i:])
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise SocketIOError("invalid JSON") from None
    packet = SioPacket(kind, nsp, ack_id, data, attachments)
    _check_payload(packet)
    return packet


def _check_payload(packet: SioPacket) -> None:
    """socket.io-parser's isPayloadValid."""
    kind, data = packet.type, packet.data
    if kind == CONNECT:
        ok = data is None or isinstance(data, dict)
    elif kind == DISCONNECT:
        ok = data is None
    elif kind == CONNECT_ERROR:
        ok = isinstance(data, (str, dict))
    elif kind in (EVENT, BINARY_EVENT):
        ok = (isinstance(data, list) and len(data) > 0 and isinstance(data[0], (str, int, float))
              and not isinstance(data[0], bool))
    else:  # ACK, BINARY_ACK
        ok = isinstance(data, list)
    if not ok:
        raise SocketIOError("invalid payload for the packet type")


def encode_sio(kind: int, data: Any = None, nsp: str = "/", ack_id: Optional[int] = None,
               attachments: int = 0) -> str:
    """A Socket.IO packet string (without the Engine.IO ``4``)."""
    out = [str(kind)]
    if kind in (BINARY_EVENT, BINARY_ACK):
        out.append(f"{attachments}-")
    if nsp and nsp != "/":
        out.append(nsp + ",")
    if ack_id is not None:
        out.append(str(ack_id))
    if data is not None:
        out.append(json.dumps(data, separators=(",", ":")))
    return "".join(out)


def deconstruct(data: Any) -> Tuple[Any, List[bytes]]:
    """Replace bytes in ``data`` by placeholders; return (data, attachments)."""
    buffers: List[bytes] = []

    def walk(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(bytes(value))
            return {"_placeholder": True, "num": len(buffers) - 1}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(data), buffers


class Reassembler:
    """Collects the attachments of a binary Socket.IO packet, then puts them in place."""

    __slots__ = ("packet", "buffers")

    def __init__(self, packet: SioPacket) -> None:
        self.packet = packet
        self.buffers: List[bytes] = []

    def add(self, data: bytes) -> Optional[SioPacket]:
        """Take one attachment; the complete packet (as EVENT/ACK) once all have arrived."""
        self.buffers.append(data)
        if len(self.buffers) < self.packet.attachments:
            return None
        packet = self.packet
        try:
            packet.data = self._fill(packet.data)
        except RecursionError:
            raise SocketIOError("attachments nested too deep") from None
        packet.type = EVENT if packet.type == BINARY_EVENT else ACK
        return packet

    def _fill(self, value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("_placeholder") is True and isinstance(value.get("num"), int):
                num = value["num"]
                if not 0 <= num < len(self.buffers):
                    raise SocketIOError("illegal attachment placeholder")
                return self.buffers[num]
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value
