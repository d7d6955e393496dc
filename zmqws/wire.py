"""Wire kinds: how one message is encoded once for every member of a route. Sans-I/O.

The hub groups subscribers by (prefixes, envelope, wire kind) into routes and,
each loop turn, encodes a route's messages once and queues the same bytes on
every member.  A :class:`Wire` is that encoder: a WebSocket frame (plain, or
compressed for one deflate window size), a Server-Sent Event, or (in
:mod:`zmqws.transports.socketio`) Engine.IO frames.  Wires whose members each
need their own answer (a held long-poll, a Socket.IO polling session) are not
``shared`` and deliver a turn's messages themselves.

:class:`Envelopes` turns a stored message into what a client asked to see
(``?format=``): the payload, ``topic SEPARATOR payload``, or a JSON object.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .protocol import sse
from .protocol.frames import OP_BINARY, OP_TEXT, SHORT_HEADERS, frame_header
from .protocol.utf8 import is_utf8

if TYPE_CHECKING:  # pragma: no cover
    from .protocol.deflate import PerMessageDeflate
    from .routing import Stored

__all__ = ["Wire", "WebSocketWire", "SseWire", "Envelopes", "TurnEncodings", "json_doc", "json_bytes"]


def json_doc(m: "Stored") -> Dict[str, Any]:
    """The ``json`` envelope: ``{"id", "topic", "data"}``, binary data as base64 with ``"binary": true``."""
    doc: Dict[str, Any] = {"id": m.id, "topic": m.topic.decode("utf-8", "replace")}
    if m.opcode == OP_TEXT:
        doc["data"] = m.payload.decode("utf-8")
    else:
        doc["data"] = base64.b64encode(m.payload).decode("ascii")
        doc["binary"] = True
    return doc


def json_bytes(m: "Stored") -> bytes:
    """:func:`json_doc` encoded (compact, ASCII: ``json.dumps``' ``ensure_ascii``), once per
    message: kept on the message (``Stored.json``) for every later client, route and poll."""
    encoded = m.json
    if encoded is None:
        encoded = m.json = json.dumps(json_doc(m), separators=(",", ":")).encode("ascii")
    return encoded


class Envelopes:
    """The envelopes a client may ask for: ``payload``, ``topic`` (with ``separator``), ``json``."""

    __slots__ = ("separator", "_separator_text")

    def __init__(self, separator: bytes) -> None:
        self.separator = separator
        self._separator_text = separator.decode("utf-8", "replace")

    def body(self, m: "Stored", envelope: str) -> Tuple[int, bytes]:
        """(opcode, bytes) of a message in an envelope."""
        if envelope == "payload":
            return m.opcode, m.payload
        if envelope == "topic":
            if not m.multipart:
                return m.opcode, m.payload
            head = m.topic + self.separator
            text = m.opcode == OP_TEXT and is_utf8(head)
            return (OP_TEXT if text else OP_BINARY), head + m.payload
        return OP_TEXT, json_bytes(m)

    def notice(self, notice: Dict[str, Any], envelope: str) -> bytes:
        """A gateway notice (``{"gap": [first, last]}``) as a client of ``envelope`` reads it."""
        text = json.dumps(notice, separators=(",", ":"))
        if envelope == "topic":
            text = "$" + next(iter(notice)) + self._separator_text + text
        return text.encode("utf-8")


class Wire:
    """A wire kind (the base: see the module docstring).  Hashable by identity: one object per
    kind (and per deflate window size), so that clients on it share routes."""

    __slots__ = ("envelopes",)
    shared = True        # one encoding queued on every member (else: deliver() per member)
    gap_notices = True   # members can be told in-band which ids they lost
    name = "websocket"   # the transport's name in /metrics and logs

    def __init__(self, envelopes: Envelopes) -> None:
        self.envelopes = envelopes

    def encode(self, m: "Stored", envelope: str) -> bytes:
        raise NotImplementedError

    def encode_notice(self, notice: Dict[str, Any], envelope: str) -> bytes:
        raise NotImplementedError

    def encode_batch(self, batch: List["Stored"], envelope: str) -> bytes:
        """A turn's messages of a route, encoded and joined: what is queued on each member."""
        if len(batch) == 1:
            return self.encode(batch[0], envelope)
        return b"".join([self.encode(m, envelope) for m in batch])

    def deliver(self, members: List[Any], batch: List["Stored"]) -> None:
        """A turn's messages to each member of a route that is not ``shared``."""
        raise NotImplementedError

    def answer(self, member: Any, items: List[Any]) -> bool:
        """A resume with something to tell (a notice, messages) to a member of a wire that is
        not ``shared``: True when that ends its subscription (a long-poll is answered)."""
        raise NotImplementedError


class WebSocketWire(Wire):
    """WebSocket frames (RFC 6455 §5.2), compressed by ``deflater`` when one is given (RFC 7692
    §7.2.1, no context takeover: the same bytes suit every client of that window size)."""

    __slots__ = ("deflater",)

    def __init__(self, envelopes: Envelopes, deflater: Optional["PerMessageDeflate"] = None) -> None:
        super().__init__(envelopes)
        self.deflater = deflater

    def frame(self, opcode: int, body: bytes) -> bytes:
        if self.deflater is None:
            return frame_header(opcode, len(body)) + body
        return self.deflater.encode_message(opcode, body)

    def encode(self, m: "Stored", envelope: str) -> bytes:
        return self.frame(*self.envelopes.body(m, envelope))

    def encode_notice(self, notice: Dict[str, Any], envelope: str) -> bytes:
        return self.frame(OP_TEXT, self.envelopes.notice(notice, envelope))

    def encode_batch(self, batch: List["Stored"], envelope: str) -> bytes:
        """The hot path (uncompressed payloads): header and payload of every message joined
        at once, short headers from the table (§5.2)."""
        if self.deflater is not None or envelope != "payload" or len(batch) == 1:
            return super().encode_batch(batch, envelope)
        parts: List[bytes] = []
        append = parts.append
        for m in batch:
            payload = m.payload
            n = len(payload)
            append(SHORT_HEADERS[m.opcode][n] if n < 126 else frame_header(m.opcode, n))
            append(payload)
        return b"".join(parts)


class SseWire(Wire):
    """Server-Sent Events (HTML Living Standard §9.2): the message id as the event id."""

    __slots__ = ()
    name = "sse"

    def encode(self, m: "Stored", envelope: str) -> bytes:
        opcode, body = self.envelopes.body(m, envelope)
        return sse.encode_event(body, m.id, binary=opcode == OP_BINARY)

    def encode_notice(self, notice: Dict[str, Any], envelope: str) -> bytes:
        text = json.dumps(notice, separators=(",", ":")).encode("utf-8")
        return sse.encode_event(text, event=next(iter(notice)))


class TurnEncodings:
    """A wire's encodings of this turn's messages by id, so that the routes of one wire (other
    topics) share them: for wires that are not ``shared`` (they deliver each turn's messages
    themselves), a message is still encoded once per wire and turn."""

    __slots__ = ("wire", "separator", "_by_id", "_newest")

    def __init__(self, wire: Wire, separator: bytes) -> None:
        self.wire = wire
        self.separator = separator  # between two messages' encodings
        self._by_id: Dict[int, bytes] = {}
        self._newest = 0

    def join(self, batch: List["Stored"], envelope: str) -> bytes:
        """A route's messages of this turn, encoded (once per turn) and joined."""
        if batch[0].id > self._newest:  # ids only grow: a later turn, the previous one's are done
            self._by_id = {}
        by_id = self._by_id
        encode = self.wire.encode
        parts = []
        for m in batch:
            encoded = by_id.get(m.id)
            if encoded is None:
                encoded = by_id[m.id] = encode(m, envelope)
            parts.append(encoded)
        self._newest = max(self._newest, batch[-1].id)
        return self.separator.join(parts)
