"""RFC 7692 permessage-deflate, sans-I/O, with the standard library's ``zlib``.

* :class:`DeflateConfig` holds the server's settings and negotiates the
  extension from a client's ``Sec-WebSocket-Extensions`` offers (§5, §7.1).
* :class:`PerMessageDeflate` is one connection's negotiated state: it inflates
  the client's compressed messages (§7.2.2) with a hard bound on the inflated
  size, and encodes the server's messages (§7.2.1, §6).
* :func:`compress_message` / :func:`encode_compressed_frame` compress one
  message on its own, so that the fan-out can compress a message once and
  queue the same bytes on every client with the same window size.

Policy of this server (all allowed by RFC 7692):

* The server always answers ``server_no_context_takeover`` (§7.1.1.1: a server
  may include it even when it was not offered) and compresses every message
  with a fresh compressor.  The compressed bytes of a message then depend only
  on the payload, the window size and the compression level and memory level,
  which is what lets the fan-out encode once and send many (DESIGN.md).  The
  cost is a worse ratio for runs of small, similar messages.
* The client keeps its context (§7.1.1.2) unless it offered
  ``client_no_context_takeover``, which is echoed.
* Window sizes: see :class:`DeflateConfig` and :func:`compress_message`,
  including the ``server_max_window_bits=8`` case.

Nothing here raises :class:`~zmqws.protocol.handshake.HTTPError`: RFC 7692 never
requires a server to fail the opening handshake.  §5 says a server *declines*
an offer it cannot or will not accept (unknown or repeated parameter, invalid
value, unsupported configuration), and the connection then simply goes on
without the extension; the "MUST _Fail the WebSocket Connection_" rules of
§5 and §7.1 all apply to the *client* reading the server's response.  A
syntactically malformed header is a different matter, rejected with 400 by
:func:`zmqws.protocol.handshake.parse_extensions` before negotiation starts.
"""

from __future__ import annotations

import sys
import zlib
from typing import List, Optional, Sequence, Tuple

from .frames import (
    CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, ProtocolError, frame_header,
)

__all__ = ["EXTENSION_NAME", "DeflateConfig", "PerMessageDeflate", "compress_message",
           "encode_compressed_frame"]

EXTENSION_NAME = "permessage-deflate"

#: §7.2.1/§7.2.2: the empty stored block that ends a sync flush; the sender strips it,
#: the receiver appends it back.
_TAIL = b"\x00\x00\xff\xff"

#: After a DEFLATE block with BFINAL set (§7.2.3.4) the stream is over; the
#: client may send a few more bytes (the RFC's example sends one 0x00 octet that,
#: with the appended tail, forms an empty stored block).  More than this is not a
#: valid message and is refused instead of being buffered in ``unused_data``.
_MAX_TRAILING = 32

_MAX_LENGTH = sys.maxsize  # zlib's max_length is a Py_ssize_t

#: §7.1.2.1, §7.1.2.2: "a decimal integer value without leading zeroes between
#: 8 to 15, inclusive" (after unquoting, which parse_extensions already did).
_WINDOW_BITS_VALUES = {str(bits): bits for bits in range(8, 16)}

_PARAMS = frozenset(("server_no_context_takeover", "client_no_context_takeover",
                     "server_max_window_bits", "client_max_window_bits"))

Offers = Sequence[Tuple[str, Sequence[Tuple[str, Optional[str]]]]]


def _compress_wbits(wbits: int) -> int:
    """The raw-deflate window zlib is asked for when ``wbits`` was negotiated.

    zlib >= 1.2.9 refuses a raw deflate window of 8 bits (``deflateInit2``
    returns Z_STREAM_ERROR, Python raises ValueError; madler/zlib#171); older
    versions silently used 9.  Compressing with 9 is still within a negotiated
    ``server_max_window_bits=8``: zlib's deflate never emits a match distance
    beyond ``(1 << wbits) - 262`` (MAX_DIST, since it keeps MIN_LOOKAHEAD bytes
    of look-ahead), which for 9 bits is 250 < 256, so every back-reference fits
    the client's 256-byte window.  Chromium's WebSocket deflater does the same.
    This relies on zlib's deflate (the only one ``zlib`` can be), not on any
    property of the client's inflater, and is checked by the tests.
    """
    if not 8 <= wbits <= 15:
        raise ValueError(f"window bits must be between 8 and 15, not {wbits}")
    return 9 if wbits == 8 else wbits


def compress_message(payload: bytes, wbits: int = 15, level: int = 6, mem_level: int = 8) -> bytes:
    """§7.2.1: the compressed payload of one message, with no context takeover.

    Raw DEFLATE (no zlib header) with a fresh compressor, flushed with
    Z_SYNC_FLUSH so the data ends with an empty stored block, whose four
    octets ``00 00 ff ff`` are then removed.  ``wbits`` is the negotiated
    server window (8..15; 8 compresses with 9, see :func:`_compress_wbits`).
    The result depends only on the arguments, so it can be shared by every
    connection with the same window (§7.1.1.1 ``server_no_context_takeover``).
    An empty payload compresses to ``b"\\x00"`` (§7.2.3.6).
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -_compress_wbits(wbits), mem_level)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # Z_SYNC_FLUSH always ends with the empty stored block (zlib manual, deflate()).
    assert data[-4:] == _TAIL
    return data[:-4]


def encode_compressed_frame(opcode: int, payload: bytes, wbits: int = 15, level: int = 6,
                            mem_level: int = 8) -> bytes:
    """§6, §7.2.1: a whole unmasked server frame, RSV1 ("Per-Message Compressed") set.

    ``opcode`` is that of a data message (text or binary); control frames are
    never compressed (§6.1).
    """
    body = compress_message(payload, wbits, level, mem_level)
    return frame_header(opcode, len(body), True, True) + body


class PerMessageDeflate:
    """One connection's negotiated permessage-deflate state (RFC 7692 §7).

    ``out_key``: the window bits the server compresses with (the effective
    ones: a negotiated 8 is 9, see :func:`compress_message`).  Together with
    the server-wide level and memory level it fixes the compressed bytes of a
    message, so connections with the same ``out_key`` can share them.
    ``server_max_window_bits``: the negotiated server window (8..15).
    ``in_wbits``: the client's window (§7.1.2.2), 15 unless limited;
    ``client_no_context_takeover``: the client resets its compressor after
    every message (§7.1.1.2), so the inflater is reset too.
    ``threshold``: :meth:`encode_message` sends payloads shorter than this
    uncompressed (§6: RSV1 is per message, the sender chooses).
    """

    __slots__ = ("out_key", "server_max_window_bits", "in_wbits", "client_no_context_takeover",
                 "threshold", "level", "mem_level", "_inflater")

    def __init__(self, *, server_max_window_bits: int = 15, client_max_window_bits: int = 15,
                 client_no_context_takeover: bool = False, threshold: int = 128,
                 level: int = 6, mem_level: int = 8) -> None:
        if not 8 <= client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be between 8 and 15")
        self.server_max_window_bits = server_max_window_bits
        self.out_key: int = _compress_wbits(server_max_window_bits)
        self.in_wbits = client_max_window_bits
        self.client_no_context_takeover = client_no_context_takeover
        self.threshold = threshold
        self.level = level
        self.mem_level = mem_level
        # Created when the first compressed message starts: a connection that
        # only receives never pays for an inflater.
        self._inflater: Optional["zlib._Decompress"] = None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"PerMessageDeflate(out_key={self.out_key}, in_wbits={self.in_wbits}, "
                f"client_no_context_takeover={self.client_no_context_takeover})")

    # -- receiving (§7.2.2) -------------------------------------------------------

    def start_message(self) -> None:
        """A message with RSV1 set on its first frame begins (§6.2).

        A new inflater is made for the first compressed message, for every
        message when the client does not take over its context (§7.1.1.2),
        and after a message that ended the DEFLATE stream with a BFINAL block
        (§7.2.3.4), after which the client necessarily starts a new one.
        """
        inflater = self._inflater
        if inflater is None or self.client_no_context_takeover or inflater.eof:
            self._inflater = zlib.decompressobj(-self.in_wbits)

    def decompress(self, data: bytes, max_size: int, final: bool) -> bytes:
        """§7.2.2: inflate one piece of a compressed message's payload.

        ``max_size`` is how many more bytes the message may grow by; beyond it
        ProtocolError 1009 is raised, and zlib is never asked for more than
        ``max_size + 1`` bytes, so a compression bomb costs no more memory than
        an honest message of the maximum size.  ``final`` marks the message's
        last piece: the ``00 00 ff ff`` tail removed by the sender is appended.
        Data that is not valid DEFLATE raises ProtocolError 1007, and so does a
        back-reference further than the negotiated client window (§7.1.2.2)
        into data inflated by an earlier call, which the inflater no longer
        has (within one call's output zlib can reach further; that is harmless).
        """
        inflater = self._inflater
        if inflater is None:  # decompress() without start_message(): be forgiving
            self.start_message()
            inflater = self._inflater
            assert inflater is not None
        if max_size < 0:
            max_size = 0
        elif max_size >= _MAX_LENGTH:
            max_size = _MAX_LENGTH - 1  # "no limit" must still fit zlib's max_length
        if final and len(data) < 4096:
            # One call; appending four bytes to a short piece is cheaper than a second call.
            data += _TAIL
            tail = False
        else:
            tail = final
        try:
            out = inflater.decompress(data, max_size + 1)
            if len(out) > max_size or inflater.unconsumed_tail:
                raise ProtocolError(CLOSE_MESSAGE_TOO_BIG,
                                    "message exceeds the size limit once inflated")
            if tail:
                more = inflater.decompress(_TAIL, max_size - len(out) + 1)
                if more:
                    out += more
                    if len(out) > max_size or inflater.unconsumed_tail:
                        raise ProtocolError(CLOSE_MESSAGE_TOO_BIG,
                                            "message exceeds the size limit once inflated")
            if inflater.eof and len(inflater.unused_data) > _MAX_TRAILING:
                raise ProtocolError(CLOSE_INVALID_PAYLOAD,
                                    "data after the end of the DEFLATE stream")
        except zlib.error as exc:
            self._inflater = None
            raise ProtocolError(CLOSE_INVALID_PAYLOAD, f"invalid compressed data: {exc}") from None
        except ProtocolError:
            # The connection fails; do not keep the unconsumed input and window alive with it.
            self._inflater = None
            raise
        if final and self.client_no_context_takeover:
            self._inflater = None  # free the window between messages
        return out

    # -- sending (§7.2.1) ---------------------------------------------------------

    def encode_message(self, opcode: int, payload: bytes) -> bytes:
        """A whole unmasked frame carrying one message for this connection.

        Payloads of at least ``threshold`` bytes are compressed (RSV1 set, §6)
        with a fresh compressor (no context takeover, §7.1.1.1), so the bytes
        are those of :func:`encode_compressed_frame` with ``out_key``; shorter
        ones go out plain.
        """
        if len(payload) >= self.threshold:
            return encode_compressed_frame(opcode, payload, self.out_key, self.level,
                                           self.mem_level)
        return frame_header(opcode, len(payload)) + payload


class DeflateConfig:
    """The server's permessage-deflate settings, and negotiation (RFC 7692 §5, §7.1).

    ``threshold``: messages shorter than this are sent uncompressed.
    ``level`` (0-9, or -1 for zlib's default) and ``mem_level`` (1-9): zlib
    compression settings.  ``max_window_bits`` (9-15): the largest LZ77 window
    the server uses to compress, and the largest it lets a client use when the
    client offers ``client_max_window_bits`` (the only case in which the
    server may limit the client, §7.1.2.2).  It is never 8 so that a client
    is never told to compress with a window that zlib-based clients cannot
    produce (the ``websockets`` client refuses ``client_max_window_bits=8``
    unless it offered 8 itself).

    Use :meth:`negotiate` as the server's ``negotiate_extensions`` hook.
    """

    __slots__ = ("threshold", "mem_level", "level", "max_window_bits")

    def __init__(self, *, threshold: int = 128, mem_level: int = 8, level: int = 6,
                 max_window_bits: int = 15) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        if not 1 <= mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if not -1 <= level <= 9:
            raise ValueError("level must be between -1 and 9")
        if not 9 <= max_window_bits <= 15:
            raise ValueError("max_window_bits must be between 9 and 15")
        self.threshold = threshold
        self.mem_level = mem_level
        self.level = level
        self.max_window_bits = max_window_bits

    def __repr__(self) -> str:  # pragma: no cover
        return (f"DeflateConfig(threshold={self.threshold}, mem_level={self.mem_level}, "
                f"level={self.level}, max_window_bits={self.max_window_bits})")

    def negotiate(self, offers: Offers) -> Optional[Tuple[str, PerMessageDeflate]]:
        """§5, §7.1: accept the first acceptable permessage-deflate offer.

        ``offers`` is :func:`zmqws.protocol.handshake.parse_extensions` of the
        ``Sec-WebSocket-Extensions`` header.  Offers are tried in the client's
        order of preference (RFC 6455 §9.1); other extensions are ignored.
        Returns (response header value, state) or None when every offer is
        declined.  Never raises for a bad offer: see the module docstring.
        """
        for name, params in offers:
            if name.lower() != EXTENSION_NAME:
                continue
            accepted = self._accept(params)
            if accepted is not None:
                return accepted
        return None

    def _accept(self, params: Sequence[Tuple[str, Optional[str]]]
                ) -> Optional[Tuple[str, PerMessageDeflate]]:
        """One offer: the response and state, or None to decline it (§5)."""
        seen = set()
        client_no_context_takeover = False
        server_bits: Optional[int] = None     # offered server_max_window_bits
        client_bits_offered = False
        client_bits: Optional[int] = None     # offered client_max_window_bits value
        for pname, value in params:
            pname = pname.lower()
            # §5: decline "an extension parameter not defined for use in an offer"
            # and "multiple extension parameters with the same name".
            if pname not in _PARAMS or pname in seen:
                return None
            seen.add(pname)
            if pname.endswith("_no_context_takeover"):
                # §7.1.1.1, §7.1.1.2: "MUST NOT have a value"; else an invalid value (§5).
                if value is not None:
                    return None
                if pname == "client_no_context_takeover":
                    client_no_context_takeover = True
                # server_no_context_takeover: answered in every case below.
            elif pname == "server_max_window_bits":
                # §7.1.2.1: the parameter has a value 8..15 in an offer.
                if value is None or value not in _WINDOW_BITS_VALUES:
                    return None
                server_bits = _WINDOW_BITS_VALUES[value]
            else:  # client_max_window_bits: §7.1.2.2, a value 8..15 or none
                client_bits_offered = True
                if value is not None:
                    if value not in _WINDOW_BITS_VALUES:
                        return None
                    client_bits = _WINDOW_BITS_VALUES[value]

        cap = self.max_window_bits
        response: List[str] = [EXTENSION_NAME, "server_no_context_takeover"]
        if client_no_context_takeover:
            response.append("client_no_context_takeover")

        # §7.1.2.1: answer an offered value with "the same or smaller value"; with
        # no offer the server "MAY include" one (done only to announce a cap).
        if server_bits is not None:
            server_window = min(server_bits, cap)
            response.append(f"server_max_window_bits={server_window}")
        else:
            server_window = cap
            if cap < 15:
                response.append(f"server_max_window_bits={cap}")

        # §7.1.2.2: without the parameter in the offer the response "MUST NOT
        # include" it and the client may use 15 bits; with it, the server may
        # answer a value (no larger than an offered value) or leave it out, in
        # which case the client's own offered value, or 15, holds.
        if not client_bits_offered:
            client_window = 15
        else:
            client_window = min(client_bits if client_bits is not None else 15, cap)
            if client_window < 15:
                response.append(f"client_max_window_bits={client_window}")

        state = PerMessageDeflate(server_max_window_bits=server_window,
                                  client_max_window_bits=client_window,
                                  client_no_context_takeover=client_no_context_takeover,
                                  threshold=self.threshold, level=self.level,
                                  mem_level=self.mem_level)
        return "; ".join(response), state
