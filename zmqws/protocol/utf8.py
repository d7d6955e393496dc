"""Incremental UTF-8 validation that fails fast (RFC 6455 §8.1, RFC 3629 §3-4).

A text message must be valid UTF-8 as a whole, and an endpoint should fail the
connection as soon as it sees a byte sequence that can never become valid,
even in the middle of a fragmented message.  CPython's incremental decoder
already rejects most impossible prefixes at once; the one it buffers is
``ED A0..BF`` (the start of a UTF-16 surrogate), which is checked here.
"""

from __future__ import annotations

import codecs

_Decoder = codecs.getincrementaldecoder("utf-8")


class Utf8Validator:
    """Feed pieces of a text message; ``feed`` returns False once it cannot be valid."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _Decoder("strict")

    def feed(self, data: bytes, final: bool = False) -> bool:
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError:
            return False
        if not final:
            pending = self._decoder.getstate()[0]
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                return False
        return True


def is_utf8(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 (ASCII is checked without decoding)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
