"""Fuzz targets for the sans-I/O protocol core, shared by ``tests/test_fuzz.py`` (hypothesis)
and the coverage-guided harnesses in this folder (atheris).

Each target takes arbitrary bytes and split points (the same bytes arriving in
arbitrary pieces) and fails (raises something else than AssertionError's
siblings HTTPError / ProtocolError, or trips an assertion) only on a bug:

* :func:`handshake_target`: ``RequestParser`` (then ``websocket_accept`` with
  permessage-deflate negotiation, the token lookup and every Request accessor
  on what parses).  Allowed: :class:`HTTPError` with a 4xx/5xx status.
* :func:`frames_target`: ``FrameParser`` (allowed: :class:`ProtocolError` with a
  close code the server may send) and ``WebSocketConnection.receive_data``
  (allowed: nothing; events only), plus a differential check: the same bytes
  fed in one piece give the same messages and the same failed-or-not outcome.
* :func:`deflate_target`: ``PerMessageDeflate.decompress`` directly and through
  a ``WebSocketConnection`` with permessage-deflate negotiated; the inflated
  size never passes the limit.

No file here is named ``test_*.py``: pytest does not collect this folder.
"""

from __future__ import annotations

import zlib
from typing import Iterable, List, Optional, Sequence

from zmqws.auth import request_token
from zmqws.protocol.connection import (
    CLOSED, CloseReceived, ConnectionFailed, Message, Ping, Pong, WebSocketConnection,
)
from zmqws.protocol.deflate import DeflateConfig, PerMessageDeflate
from zmqws.protocol.frames import RSV1, FrameParser, ProtocolError, encode_frame
from zmqws.protocol.handshake import (
    HTTPError, RequestParser, error_response, is_websocket_upgrade, parse_extensions,
    websocket_accept,
)
from zmqws.protocol.utf8 import is_utf8

__all__ = ["split", "handshake_target", "frames_target", "deflate_target",
           "HANDSHAKE_SEEDS", "FRAME_SEEDS", "DEFLATE_SEEDS", "MAX_MESSAGE"]

MAX_MESSAGE = 4096      # small limits: the fuzzer reaches them
MAX_FRAGMENTS = 8
SERVER_CLOSE_CODES = {1002, 1007, 1008, 1009, 1011}
MASK = b"\x01\x02\x03\x04"


def split(data: bytes, cuts: Iterable[int]) -> List[bytes]:
    """``data`` cut at the positions ``cuts`` (taken modulo len + 1): its pieces, in order."""
    n = len(data)
    points = sorted({c % (n + 1) for c in cuts})
    pieces = []
    previous = 0
    for point in points:
        pieces.append(data[previous:point])
        previous = point
    pieces.append(data[previous:])
    return pieces


# -- the opening handshake ------------------------------------------------------------------------


def _check_request(request) -> None:
    """Every accessor of a parsed request, then the upgrade checks; HTTPError only."""
    assert request.method and request.target and request.version in ("HTTP/1.1", "HTTP/1.0")
    assert request.path.startswith("/") or request.path
    assert request.keep_alive in (True, False)
    request.header("host")
    request.tokens("connection")
    request.query_value("topic")
    request_token(request)
    if is_websocket_upgrade(request):
        config = DeflateConfig()
        try:
            response, subprotocol, extension = websocket_accept(request, ["chat", "v2.zmqws"],
                                                                config.negotiate)
        except HTTPError as exc:
            _check_error(exc)
            return
        assert response.startswith(b"HTTP/1.1 101 ") and response.endswith(b"\r\n\r\n")
        assert subprotocol in (None, "chat", "v2.zmqws")
        assert extension is None or isinstance(extension, PerMessageDeflate)
    value = request.header("sec-websocket-extensions")
    if value is not None:
        try:
            offers = parse_extensions(value)
        except HTTPError as exc:
            _check_error(exc)
        else:
            DeflateConfig(max_window_bits=9).negotiate(offers)


def _check_error(exc: HTTPError) -> None:
    assert 400 <= exc.status <= 599, exc.status
    response = error_response(exc)
    assert response.startswith(b"HTTP/1.1 %d " % exc.status)


def handshake_target(data: bytes, cuts: Sequence[int] = ()) -> int:
    """Feed ``data`` in pieces to a RequestParser (as the server does, requests back to back).
    Returns the number of requests parsed."""
    parser = RequestParser(max_header_size=2048, max_body_size=256, max_headers=16)
    parsed = 0
    try:
        for piece in split(data, cuts):
            request = parser.feed(piece)
            while request is not None:
                parsed += 1
                assert len(request.body) <= 256
                _check_request(request)
                request = parser.feed(parser.reset())
    except HTTPError as exc:
        _check_error(exc)
    return parsed


# -- frames and the connection state machine ------------------------------------------------------


def _whole_frames(parser: FrameParser, pieces: Sequence[bytes]):
    """Feed the pieces; merge the data-frame pieces into whole frames: (frames, error code)."""
    frames: List[list] = []
    code: Optional[int] = None
    for piece in pieces:
        try:
            out = parser.feed(piece)
        except ProtocolError as exc:
            code = exc.code
            break
        for frame in out:
            if frame.opcode >= 8:
                assert frame.first and frame.last and frame.fin and len(frame.payload) <= 125
            else:
                assert frame.opcode in (0, 1, 2), frame.opcode
            if frame.first:
                frames.append([frame.opcode, frame.fin, frame.rsv1, frame.payload])
            else:
                assert frames and frames[-1][0] == frame.opcode
                frames[-1][3] += frame.payload
        if parser.error is not None:
            code = parser.error.code
            break
    if code is not None:
        assert code in SERVER_CLOSE_CODES, code
    return frames, code


def _connection_events(ws: WebSocketConnection, pieces: Sequence[bytes]):
    """Feed the pieces to a connection; (messages, failed code or None, closed by the peer)."""
    messages = []
    failed = None
    peer_closed = False
    for piece in pieces:
        for event in ws.receive_data(piece):
            if isinstance(event, Message):
                assert failed is None
                assert len(event.data) <= ws.max_message_size
                if not event.binary:
                    assert is_utf8(event.data)
                messages.append((event.binary, event.data))
            elif isinstance(event, ConnectionFailed):
                assert event.code in SERVER_CLOSE_CODES, event.code
                failed = event.code
            elif isinstance(event, CloseReceived):
                peer_closed = True
            else:
                assert isinstance(event, (Ping, Pong)), event
    if failed is not None or peer_closed:
        assert ws.state == CLOSED
    # Whatever happened, what the connection queued is well-formed output.
    assert ws.out_bytes == sum(len(b) for b in ws.out)
    return messages, failed, peer_closed


def _negotiated(offer: str = "permessage-deflate; client_max_window_bits") -> PerMessageDeflate:
    agreed = DeflateConfig().negotiate(parse_extensions(offer))
    assert agreed is not None
    return agreed[1]


def frames_target(data: bytes, cuts: Sequence[int] = (), deflate: bool = False) -> None:
    """FrameParser and WebSocketConnection on ``data`` in pieces, and in one piece."""
    pieces = split(data, cuts)
    allowed_rsv = RSV1 if deflate else 0
    frames_split, code_split = _whole_frames(FrameParser(allowed_rsv=allowed_rsv, max_payload=MAX_MESSAGE),
                                             pieces)
    frames_whole, code_whole = _whole_frames(FrameParser(allowed_rsv=allowed_rsv, max_payload=MAX_MESSAGE),
                                             [data])
    assert frames_split == frames_whole
    assert code_split == code_whole

    def connection() -> WebSocketConnection:
        return WebSocketConnection(max_message_size=MAX_MESSAGE, max_fragments=MAX_FRAGMENTS,
                                   deflate=_negotiated() if deflate else None)

    split_result = _connection_events(connection(), pieces)
    whole_result = _connection_events(connection(), [data])
    # The same messages; failed or not alike (the code may differ: a size and a UTF-8
    # error in the same frame are found in a different order when the frame is split).
    assert split_result[0] == whole_result[0]
    assert (split_result[1] is None) == (whole_result[1] is None)
    assert split_result[2] == whole_result[2]


# -- permessage-deflate ------------------------------------------------------------------------


def deflate_target(data: bytes, cuts: Sequence[int] = (), max_size: int = MAX_MESSAGE,
                   no_context_takeover: bool = False) -> Optional[bytes]:
    """``PerMessageDeflate.decompress`` on ``data`` (one message's compressed payload) in pieces;
    the inflated message, or None when it was refused (ProtocolError 1007/1009)."""
    offer = "permessage-deflate; client_max_window_bits"
    if no_context_takeover:
        offer += "; client_no_context_takeover"
    pmd = _negotiated(offer)
    pieces = split(data, cuts)
    pmd.start_message()
    out = b""
    try:
        for i, piece in enumerate(pieces):
            got = pmd.decompress(piece, max_size - len(out), i == len(pieces) - 1)
            out += got
            assert len(out) <= max_size
    except ProtocolError as exc:
        assert exc.code in (1007, 1009), exc.code
        return None
    return out


def deflate_frames(data: bytes, cuts: Sequence[int] = ()) -> None:
    """``data`` as the payload of compressed frames (RSV1) behind a valid header, through a
    connection with permessage-deflate: events only, never an exception."""
    pieces = split(data, cuts)
    stream = b"".join(encode_frame(0x1 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1,
                                   rsv1=i == 0, mask=MASK) for i, piece in enumerate(pieces))
    frames_target(stream, cuts, deflate=True)


def compress(payload: bytes, wbits: int = 15) -> bytes:
    """A client's compressed message (§7.2.1): raw DEFLATE, sync flush, tail removed."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def _finished(payload: bytes) -> bytes:
    """A compressed message that ends the DEFLATE stream (Z_FINISH) instead of a sync flush."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush(zlib.Z_FINISH)


# -- seeds for the coverage-guided harnesses ------------------------------------------------------


HANDSHAKE_SEEDS = [
    b"GET /?topic=news&format=json&token=abc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
    b"permessage-deflate\r\nOrigin: https://example.com\r\n\r\n",
    b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nLast-Event-ID: 12\r\n\r\n",
    b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\n\r\n",
    b"\r\n\r\nGET http://h/x?%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]

FRAME_SEEDS = [
    encode_frame(0x1, b"hello", mask=MASK) + encode_frame(0x9, b"p", mask=MASK)
    + encode_frame(0x2, b"\x00\xff" * 70, fin=False, mask=MASK) + encode_frame(0x0, b"x" * 200, mask=MASK)
    + encode_frame(0x8, b"\x03\xe8bye", mask=MASK),
    encode_frame(0x1, "é".encode() * 40, fin=False, mask=MASK) + encode_frame(0xA, b"", mask=MASK)
    + encode_frame(0x0, b"\xc3", fin=False, mask=MASK) + encode_frame(0x0, b"\xa9", mask=MASK),
    encode_frame(0x1, compress(b"compressed " * 30), rsv1=True, mask=MASK),
    encode_frame(0x2, b"z" * 70000, mask=MASK)[:200],
]

DEFLATE_SEEDS = [
    compress(b"hello hello hello hello"),
    compress(bytes(range(256)) * 8),
    compress(b"x" * 10000),  # inflates over the limit
    zlib.compress(b"zlib wrapper, not raw deflate"),
    _finished(b"a message that ends with a BFINAL block (RFC 7692 section 7.2.3.4)"),
]
