"""One WebSocket connection's state machine, sans-I/O (RFC 6455 §5-§7).

Bytes from the peer go in through :meth:`WebSocketConnection.receive_data`;
events (messages, pings, pongs, the peer's close) come out, and every frame
the connection must send (pongs, close frames, messages) is appended to its
outgoing queue ``out``, a list of ``bytes`` that the I/O loop flushes.  The
queue is shared with the fan-out, which appends the same already-encoded
frame bytes to many connections.

States (§4.1, §7): ``OPEN`` → ``CLOSING`` (we sent a close frame and wait for
the peer's) → ``CLOSED`` (the close handshake is over, or the connection
failed; the loop flushes what is queued and closes TCP).
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple, Union

from .frames import (
    CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, CLOSE_PROTOCOL_ERROR, OP_BINARY, OP_CLOSE,
    OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1, FrameParser, ProtocolError,
    encode_close_payload, encode_frame, parse_close_payload,
)
from .utf8 import Utf8Validator, is_utf8

if TYPE_CHECKING:  # pragma: no cover
    from .deflate import PerMessageDeflate
    from .frames import Frame

__all__ = ["OutputQueue", "State", "OPEN", "CLOSING", "CLOSED", "Message", "Ping", "Pong", "CloseReceived",
           "ConnectionFailed", "WebSocketConnection"]


class State(IntEnum):
    """A WebSocket connection's state after the opening handshake (RFC 6455 §4.1, §7)."""

    OPEN = 1
    CLOSING = 2  # our close frame is sent; waiting for the peer's
    CLOSED = 3


OPEN, CLOSING, CLOSED = (int(state) for state in State)  # plain ints for the hot paths


class Message:
    """A whole data message (§5.6): ``data`` is bytes; ``binary`` is False for text (valid UTF-8)."""

    __slots__ = ("data", "binary")

    def __init__(self, data: bytes, binary: bool) -> None:
        self.data = data
        self.binary = binary

    def __repr__(self) -> str:  # pragma: no cover
        return f"Message({'binary' if self.binary else 'text'}, {len(self.data)} bytes)"


class Ping:
    """§5.5.2: a ping arrived; the pong is already queued."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    """§5.5.3: a pong arrived (solicited or not)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class CloseReceived:
    """§5.5.1, §7.1.5: the peer's close frame; ``code`` is None when it carried no status (1005)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: Optional[int], reason: str) -> None:
        self.code = code
        self.reason = reason


class ConnectionFailed:
    """§7.1.7: the peer broke the protocol; a close frame with ``code`` is queued."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = Union[Message, Ping, Pong, CloseReceived, ConnectionFailed]


class OutputQueue:
    """Bytes waiting to be written to one peer: a list of buffers and their total size.

    Every transport session (WebSocket, and the HTTP fallbacks) is one, so the
    fan-out and the loop's writer treat them all alike: the fan-out appends
    already-encoded bytes; the loop writes ``out`` with one ``sendmsg`` and
    trims what was sent.
    """

    __slots__ = ("out", "out_bytes")

    def __init__(self) -> None:
        self.out: List[Union[bytes, memoryview]] = []
        self.out_bytes = 0

    def queue(self, data: bytes) -> None:
        """Append already-encoded bytes."""
        self.out.append(data)
        self.out_bytes += len(data)

    def discard_output(self, keep_head: Optional[Union[bytes, memoryview]] = None) -> None:
        """Drop everything queued except ``keep_head`` (the unsent rest of a partly written frame)."""
        self.out[:] = [keep_head] if keep_head else []
        self.out_bytes = len(keep_head) if keep_head else 0


class WebSocketConnection(OutputQueue):
    """Server side of one WebSocket connection after the opening handshake.

    ``max_message_size`` bounds a reassembled message (1009 beyond it, checked
    as pieces arrive; with permessage-deflate, the inflated size).
    ``max_fragments`` bounds the frames of one message (1009 beyond it;
    0 = no limit).  ``deflate`` is a negotiated
    :class:`zmqws.protocol.deflate.PerMessageDeflate`, or None.
    """

    __slots__ = ("state", "parser", "max_message_size", "max_fragments",
                 "deflate", "close_sent", "close_code", "close_reason",
                 "_msg_opcode", "_msg_parts", "_msg_size", "_msg_frames", "_msg_compressed",
                 "_utf8", "__weakref__")

    def __init__(self, *, max_message_size: int = 1 << 20, max_fragments: int = 0,
                 deflate: "Optional[PerMessageDeflate]" = None) -> None:
        super().__init__()
        self.state = OPEN
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self.deflate = deflate
        # The inflater checks a compressed message's real size; a compressed frame of
        # incompressible data may be a little larger than the message (zlib's deflateBound).
        self.parser = FrameParser(allowed_rsv=RSV1 if deflate is not None else 0,
                                  max_payload=max_message_size if deflate is None
                                  else max_message_size + (max_message_size >> 10) + 64)
        self.close_sent = False
        self.close_code: Optional[int] = None  # the code of the close that ended the connection
        self.close_reason = ""
        self._msg_opcode = 0  # opcode of the message being reassembled; 0 = none
        self._msg_parts: Union[List[bytes], Tuple[()]] = ()  # a list while a fragmented message arrives
        self._msg_size = 0
        self._msg_frames = 0
        self._msg_compressed = False
        self._utf8: Optional[Utf8Validator] = None

    # -- output ---------------------------------------------------------------

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        """§5.2: one whole frame, unmasked (server to client, §5.1)."""
        return encode_frame(opcode, payload)

    def send(self, data: Union[str, bytes]) -> None:
        """Queue one message: ``str`` as a text frame, ``bytes`` as binary (§5.6)."""
        if self.state != OPEN:
            return
        if isinstance(data, str):
            payload, opcode = data.encode("utf-8"), OP_TEXT
        else:
            payload, opcode = bytes(data), OP_BINARY
        if self.deflate is not None:
            self.queue(self.deflate.encode_message(opcode, payload))
        else:
            self.queue(self._frame(opcode, payload))

    def ping(self, payload: bytes = b"") -> None:
        """§5.5.2: queue a ping."""
        if self.state == OPEN:
            self.queue(self._frame(OP_PING, payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """§7.1.2: start the closing handshake; the loop waits briefly for the peer's close."""
        if self.state != OPEN:
            return
        self._send_close(code, reason)
        self.close_code = code
        self.close_reason = reason
        self.state = CLOSING

    def _send_close(self, code: Optional[int], reason: str) -> None:
        self.queue(self._frame(OP_CLOSE, encode_close_payload(code, reason)))
        self.close_sent = True

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> List[Event]:
        """Parse bytes from the peer; return the events they complete (see :meth:`receive`)."""
        return list(self.receive(data))

    def receive(self, data: bytes) -> Iterator[Event]:
        """Parse bytes from the peer, yielding events one at a time.

        Events are produced lazily, in order: what the caller does with a
        message (answering it, say) happens before a protocol error found
        later in the same bytes fails the connection, as it would had the
        bytes arrived one frame at a time.
        """
        if self.state == CLOSED:
            return
        parser = self.parser
        events: List[Event] = []
        try:
            while True:
                frames = parser.feed(data)
                data = b""
                for frame in frames:
                    if frame.opcode >= 8:
                        self._control_frame(frame, events)
                    elif self.state == OPEN:
                        self._data_frame(frame, events)
                    if events:
                        yield from events
                        events.clear()
                    if self.state == CLOSED:
                        return
                if parser.error is None:
                    return
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason, events)
            yield from events

    def _fail(self, code: int, reason: str, events: List[Event]) -> None:
        """§7.1.7: fail the connection: send a close frame (if not yet sent) and close."""
        if not self.close_sent:
            self._send_close(code, reason)
            self.close_code = code
            self.close_reason = reason
        self.state = CLOSED
        self._msg_parts = ()
        events.append(ConnectionFailed(code, reason))

    def _control_frame(self, frame: "Frame", events: List[Event]) -> None:
        if frame.rsv1:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame")
        opcode = frame.opcode
        if opcode == OP_PING:
            if self.state == OPEN:
                self.queue(self._frame(OP_PONG, frame.payload))
            events.append(Ping(frame.payload))
        elif opcode == OP_PONG:
            events.append(Pong(frame.payload))
        else:  # OP_CLOSE
            code, reason = parse_close_payload(frame.payload)
            if self.state == OPEN:
                # §5.5.1: answer with a close frame, echoing the status code.
                self._send_close(code, "" if code is None else reason)
                self.close_code = code
                self.close_reason = reason
            self.state = CLOSED
            self._msg_parts = ()
            events.append(CloseReceived(code, reason))

    def _data_frame(self, frame: "Frame", events: List[Event]) -> None:
        payload = frame.payload
        if frame.first:
            opcode = frame.opcode
            if opcode == OP_CONT:
                if not self._msg_opcode:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
                if frame.rsv1:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation frame")
                self._msg_frames += 1
                if self.max_fragments and self._msg_frames > self.max_fragments:
                    raise ProtocolError(CLOSE_MESSAGE_TOO_BIG,
                                        f"message of more than {self.max_fragments} frames")
            else:
                if self._msg_opcode:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented message")
                if frame.fin and frame.last and not frame.rsv1:
                    # Fast path: a whole, uncompressed message in one piece.
                    if opcode == OP_TEXT and not is_utf8(payload):
                        raise ProtocolError(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8")
                    events.append(Message(payload, opcode == OP_BINARY))
                    return
                self._msg_opcode = opcode
                self._msg_parts = []
                self._msg_size = 0
                self._msg_frames = 1
                self._msg_compressed = frame.rsv1
                if self._msg_compressed:
                    assert self.deflate is not None  # RSV1 is allowed only with deflate (§5.2)
                    self.deflate.start_message()
                self._utf8 = Utf8Validator() if opcode == OP_TEXT else None
        if self._msg_compressed:
            assert self.deflate is not None
            payload = self.deflate.decompress(payload, self.max_message_size - self._msg_size,
                                              frame.fin and frame.last)
        if payload:
            self._msg_size += len(payload)
            if self._msg_size > self.max_message_size:
                raise ProtocolError(CLOSE_MESSAGE_TOO_BIG,
                                    f"message exceeds the limit of {self.max_message_size} bytes")
            if self._utf8 is not None and not self._utf8.feed(payload):
                raise ProtocolError(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8")
            parts = self._msg_parts
            assert isinstance(parts, list)  # set by the message's first frame
            parts.append(payload)
        if frame.fin and frame.last:
            if self._utf8 is not None and not self._utf8.feed(b"", True):
                raise ProtocolError(CLOSE_INVALID_PAYLOAD, "text message is not UTF-8")
            parts = self._msg_parts
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            events.append(Message(data, self._msg_opcode == OP_BINARY))
            self._msg_opcode = 0
            self._msg_parts = ()
            self._utf8 = None


class ClientConnection(WebSocketConnection):
    """The client side of a connection (``python -m zmqws.client``), RFC 6455 §5.1, §5.3.

    Every frame it sends is masked with the next key of ``masking_keys``, an
    endless iterator of 4-byte keys from a strong source of entropy (the
    caller gives it, e.g. ``iter(functools.partial(os.urandom, 4), None)``, so
    that the protocol core draws no randomness of its own).  A masked frame
    from the server fails the connection with 1002.  No extension is negotiated.
    """

    __slots__ = ("masking_keys",)

    def __init__(self, masking_keys: Iterator[bytes], *, max_message_size: int = 1 << 20,
                 max_fragments: int = 0) -> None:
        super().__init__(max_message_size=max_message_size, max_fragments=max_fragments)
        self.masking_keys = masking_keys
        self.parser = FrameParser(require_mask=False, refuse_mask=True, max_payload=max_message_size)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        """§5.3: a masked frame."""
        return encode_frame(opcode, payload, mask=next(self.masking_keys))
