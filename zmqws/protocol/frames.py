"""RFC 6455 §5: WebSocket frames, sans-I/O.

Encoding of server frames (unmasked, §5.1), masking (§5.3), the frame header
layout (§5.2), opcodes (§5.2, §11.8), close codes (§7.4) and an incremental
frame parser that takes bytes in any split and yields frames.

The parser hands data-frame payloads out in pieces as they arrive (so that a
text message can be checked for UTF-8 while it is still arriving, §8.1) and
control frames whole.  It never does I/O and never looks at the clock.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import List, Optional

from .errors import ProtocolError

__all__ = [
    "Opcode", "CloseCode", "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "ProtocolError", "Frame", "FrameParser", "encode_frame", "apply_mask",
    "encode_close_payload", "parse_close_payload", "is_valid_close_code",
]

class Opcode(IntEnum):
    """Frame opcodes, §5.2 and §11.8."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """Close codes, §7.4.1 (and 1012-1014, registered since, §11.7)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005           # never sent on the wire
    ABNORMAL = 1006            # never sent on the wire: the connection dropped without a close
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


# Plain-int aliases for the hot paths (an IntEnum member costs more in arithmetic and hashing).
OP_CONT = int(Opcode.CONTINUATION)
OP_TEXT = int(Opcode.TEXT)
OP_BINARY = int(Opcode.BINARY)
OP_CLOSE = int(Opcode.CLOSE)
OP_PING = int(Opcode.PING)
OP_PONG = int(Opcode.PONG)
DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

CLOSE_NORMAL = CloseCode.NORMAL
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
CLOSE_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
CLOSE_INVALID_PAYLOAD = CloseCode.INVALID_PAYLOAD
CLOSE_POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
CLOSE_MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
CLOSE_INTERNAL_ERROR = CloseCode.INTERNAL_ERROR

RSV1 = 0x40
RSV2 = 0x20
RSV3 = 0x10

_MAX_CONTROL_PAYLOAD = 125


def is_valid_close_code(code: int) -> bool:
    """§7.4.1/§7.4.2 and the IANA registry (§11.7): codes a peer may send.

    1000-1003, 1007-1011 (and 1012-1014, registered since) are defined; 1004,
    1005, 1006 and 1015 must never be on the wire; 3000-4999 are for libraries
    and applications; everything else is invalid.
    """
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


class Frame:
    """A whole control frame, or a piece of a data frame's payload.

    ``first`` marks the piece that starts a frame, ``last`` the piece that ends
    it; a control frame is always one piece with both set.  ``fin`` is the
    frame's FIN bit (§5.2), valid on every piece.
    """

    __slots__ = ("opcode", "fin", "rsv1", "payload", "first", "last")

    def __init__(self, opcode: int, fin: bool, rsv1: bool, payload: bytes,
                 first: bool = True, last: bool = True) -> None:
        self.opcode = opcode
        self.fin = fin
        self.rsv1 = rsv1
        self.payload = payload
        self.first = first
        self.last = last

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"Frame(opcode={self.opcode}, fin={self.fin}, rsv1={self.rsv1}, "
                f"len={len(self.payload)}, first={self.first}, last={self.last})")


def apply_mask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """§5.3: XOR ``data`` with the 4-byte ``mask``, starting at byte ``offset`` of the payload."""
    n = len(data)
    if not n:
        return b""
    if offset & 3:
        k = offset & 3
        mask = mask[k:] + mask[:k]
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


# §5.2: the two-byte headers of final unmasked frames shorter than 126 bytes, by opcode and length.
SHORT_HEADERS = [[bytes((0x80 | op, n)) for n in range(126)] for op in range(16)]
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack


def frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """§5.2: the header of an unmasked (server-to-client) frame."""
    b0 = (0x80 if fin else 0) | (RSV1 if rsv1 else 0) | opcode
    if length < 126:
        if b0 & 0xF0 == 0x80:
            return SHORT_HEADERS[opcode][length]
        return bytes((b0, length))
    if length < 65536:
        return _PACK_16(b0, 126, length)
    return _PACK_64(b0, 127, length)


def encode_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False,
                 mask: Optional[bytes] = None) -> bytes:
    """§5.2: one whole frame.  Servers send unmasked frames; ``mask`` is for clients and tests."""
    if mask is None:
        return frame_header(opcode, len(payload), fin, rsv1) + payload
    n = len(payload)
    b0 = (0x80 if fin else 0) | (RSV1 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = _PACK_16(b0, 0x80 | 126, n)
    else:
        head = _PACK_64(b0, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


def encode_close_payload(code: Optional[int], reason: str = "") -> bytes:
    """§5.5.1: a close payload: two-byte code and a UTF-8 reason, within 125 bytes."""
    if code is None:
        return b""
    raw = reason.encode("utf-8")[:_MAX_CONTROL_PAYLOAD - 2]
    # Do not cut a multi-byte character in half.
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


def parse_close_payload(payload: bytes) -> "tuple[Optional[int], str]":
    """§5.5.1, §7.1.5, §7.4: (code, reason) of a received close frame, or ProtocolError.

    An empty payload means "no status" (1005 to the application, nothing on
    the wire).  A one-byte payload or an invalid code is a protocol error
    (1002); a reason that is not UTF-8 is invalid data (1007).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code, reason


class FrameParser:
    """Incremental parser of client-to-server frames (§5.2).

    ``feed(data)`` returns the frames (or data-frame pieces) that the bytes
    received so far complete.  A violation raises :class:`ProtocolError` with
    the close code to send, but only once the frames before it have been
    returned: when a batch ends at a bad frame, ``feed`` returns the good
    frames, and the error is raised by the next call (check ``error``).
    After an error the parser must not be used again.

    * ``require_mask``: client frames must be masked (§5.1), else 1002.
    * ``refuse_mask``: for a client reading server frames: a masked frame is
      refused with 1002 (§5.1: "A client MUST close a connection if it detects
      a masked frame").
    * ``allowed_rsv``: RSV bits an extension negotiated (§5.2), else 1002.
    * ``max_payload``: a frame longer than this is refused with 1009 as soon as
      its header arrives, before any payload is buffered.
    """

    __slots__ = ("_buf", "require_mask", "refuse_mask", "allowed_rsv", "max_payload",
                 "_in_frame", "_opcode", "_fin", "_rsv1", "_mask", "_remaining", "_offset",
                 "error")

    def __init__(self, *, require_mask: bool = True, refuse_mask: bool = False, allowed_rsv: int = 0,
                 max_payload: int = 1 << 20) -> None:
        self._buf = bytearray()
        self.require_mask = require_mask
        self.refuse_mask = refuse_mask
        self.allowed_rsv = allowed_rsv
        self.max_payload = max_payload
        self._in_frame = False  # inside a data frame's payload
        self._opcode = 0
        self._fin = True
        self._rsv1 = False
        self._mask: Optional[bytes] = None
        self._remaining = 0
        self._offset = 0
        self.error: Optional[ProtocolError] = None

    def feed(self, data: bytes) -> List[Frame]:
        if self.error is not None:
            raise self.error
        out: List[Frame] = []
        try:
            self._parse(data, out)
        except ProtocolError as exc:
            if not out:
                raise
            self.error = exc
        return out

    def _parse(self, data: bytes, out: List[Frame]) -> None:
        buf = self._buf
        if data:
            buf += data
        pos = 0
        end = len(buf)
        while True:
            if self._in_frame:
                avail = end - pos
                if not avail and self._remaining:
                    break
                take = self._remaining if avail >= self._remaining else avail
                chunk = bytes(buf[pos:pos + take])
                pos += take
                if self._mask is not None:
                    chunk = apply_mask(chunk, self._mask, self._offset)
                first = self._offset == 0
                self._offset += take
                self._remaining -= take
                last = self._remaining == 0
                out.append(Frame(self._opcode, self._fin, self._rsv1, chunk, first, last))
                if not last:
                    break
                self._in_frame = False
                continue
            if end - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            masked = b1 & 0x80
            need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
            opcode = b0 & 0x0F
            try:
                self._check_header(b0, opcode, masked, length)
            except ProtocolError:
                del buf[:pos]
                raise
            if end - pos < need:
                break
            p = pos + 2
            if length == 126:
                length = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif length == 127:
                length = int.from_bytes(buf[p:p + 8], "big")
                p += 8
                if length >> 63:
                    del buf[:pos]
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "64-bit length with the top bit set")
            if length > self.max_payload:
                del buf[:pos]
                raise ProtocolError(CLOSE_MESSAGE_TOO_BIG,
                                    f"frame of {length} bytes exceeds the limit of {self.max_payload}")
            mask = bytes(buf[p:p + 4]) if masked else None
            p += 4 if masked else 0
            fin = bool(b0 & 0x80)
            rsv1 = bool(b0 & RSV1)
            if opcode >= 8:
                # Control frames are delivered whole (<= 125 bytes).
                if end - p < length:
                    break
                payload = bytes(buf[p:p + length])
                if mask is not None:
                    payload = apply_mask(payload, mask)
                pos = p + length
                out.append(Frame(opcode, fin, rsv1, payload))
                continue
            pos = p
            self._in_frame = True
            self._opcode = opcode
            self._fin = fin
            self._rsv1 = rsv1
            self._mask = mask
            self._remaining = length
            self._offset = 0
            if length == 0:
                self._in_frame = False
                out.append(Frame(opcode, fin, rsv1, b"", True, True))
        if pos:
            del buf[:pos]

    def _check_header(self, b0: int, opcode: int, masked: int, length: int) -> None:
        """§5.2 rules that the first two bytes already decide."""
        if b0 & 0x70 & ~self.allowed_rsv:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode >= 8:
            if not b0 & 0x80:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > _MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes")
        if self.require_mask and not masked:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frame is not masked")
        if self.refuse_mask and masked:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "server frame is masked")

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a frame or piece."""
        return len(self._buf)
