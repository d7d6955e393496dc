"""Property-based fuzzing of the sans-I/O core (hypothesis): arbitrary bytes in arbitrary splits.

The handshake parser may only raise HTTPError; the frame parser only
ProtocolError; the connection (frames, UTF-8, permessage-deflate) only
returns events.  The targets live in ``tests/fuzz/targets.py`` and are shared
with the coverage-guided atheris harnesses there (``tests/fuzz/run.sh``).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import targets  # noqa: E402  (tests/fuzz/targets.py)
from zmqws.protocol.frames import encode_frame  # noqa: E402
from zmqws.protocol.handshake import RequestParser  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


# -- the opening handshake ------------------------------------------------------------------------

_TOKENS = st.sampled_from(["GET", "POST", "HEAD", "G\x00T", "", "get", "OPTIONS"])
_HEADER_NAMES = st.sampled_from([
    "Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Origin", "Authorization",
    "Content-Length", "Transfer-Encoding", "Last-Event-ID", "X-Y", "Bad Name", "",
])
_HEADER_VALUES = st.one_of(
    st.sampled_from(["websocket", "Upgrade", "keep-alive, Upgrade", "13", "8, 13",
                     "dGhlIHNhbXBsZSBub25jZQ==", "AAAA", "chat, superchat",
                     "permessage-deflate; client_max_window_bits",
                     "permessage-deflate; server_max_window_bits=8; client_no_context_takeover",
                     'permessage-deflate; client_max_window_bits="10", x-webkit-deflate-frame',
                     "permessage-deflate;;", 'a; b="', "Bearer s3cret", "5", "-1", "²",
                     "99999999999999999999999", "chunked", "https://example.com"]),
    st.text(max_size=40),
)


@st.composite
def requests(draw) -> bytes:
    """Mostly well-formed requests with random fields, sometimes damaged."""
    target = draw(st.sampled_from(["/", "/?topic=a&topic=b&since=3", "/events?token=x", "*",
                                   "http://h/p?q=%ff", "/%zz", "x", "/a b"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTX/1.1"]))
    lines = [f"{draw(_TOKENS)} {target} {version}"]
    for _ in range(draw(st.integers(0, 10))):
        lines.append(f"{draw(_HEADER_NAMES)}: {draw(_HEADER_VALUES)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")
    data += draw(st.binary(max_size=30))
    damage = draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3))
    buf = bytearray(data)
    for position, value in damage:
        buf[position % len(buf)] = value
    return bytes(buf)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), requests()), cuts=cuts)
def test_handshake_parser_raises_only_http_errors(data, cuts):
    targets.handshake_target(data, cuts)


@FUZZ
@given(data=requests())
def test_handshake_parser_is_split_independent(data):
    """Byte by byte or all at once: the same requests, the same error."""
    def run(pieces):
        parser = RequestParser(max_header_size=2048, max_body_size=256, max_headers=16)
        seen = []
        try:
            for piece in pieces:
                request = parser.feed(piece)
                while request is not None:
                    seen.append((request.method, request.target, request.version,
                                 sorted(request.headers.items()), request.body))
                    request = parser.feed(parser.reset())
        except Exception as exc:  # HTTPError only, checked by the test above
            seen.append(("error", getattr(exc, "status", exc)))
        return seen

    assert run([data[i:i + 1] for i in range(len(data))]) == run([data])


# -- frames ---------------------------------------------------------------------------------------

_OPCODES = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF])


@st.composite
def frame_streams(draw) -> bytes:
    """A sequence of frames, mostly masked and well-formed, with damage now and then."""
    out = b""
    for _ in range(draw(st.integers(1, 8))):
        opcode = draw(_OPCODES)
        if opcode == 0x8:
            payload = draw(st.one_of(
                st.just(b""),
                st.builds(lambda code, reason: code.to_bytes(2, "big") + reason,
                          st.sampled_from([1000, 1001, 1005, 1006, 1015, 2999, 3000, 4999, 5000, 0]),
                          st.binary(max_size=20) | st.text(max_size=10).map(str.encode))))
        elif opcode == 0x1:
            payload = draw(st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
                           | st.binary(max_size=50))
        else:
            payload = draw(st.binary(max_size=300) | st.just(b"x" * 5000))
        out += encode_frame(opcode, payload, fin=draw(st.booleans() | st.just(True)),
                            rsv1=draw(st.sampled_from([False] * 5 + [True])),
                            mask=None if draw(st.integers(0, 15)) == 0 else targets.MASK)
    if draw(st.booleans()):
        buf = bytearray(out)
        for position, value in draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                             max_size=3)):
            buf[position % len(buf)] = value
        out = bytes(buf)
    return out


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), frame_streams()), cuts=cuts)
def test_frame_parser_and_connection_never_raise(data, cuts):
    targets.frames_target(data, cuts)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), frame_streams()), cuts=cuts)
def test_connection_with_deflate_never_raises(data, cuts):
    targets.frames_target(data, cuts, deflate=True)


# -- permessage-deflate ------------------------------------------------------------------------


@st.composite
def compressed(draw) -> bytes:
    payload = draw(st.binary(max_size=3000) | st.text(max_size=600).map(str.encode)
                   | st.integers(0, 20000).map(lambda n: b"a" * n))
    data = targets.compress(payload, draw(st.integers(9, 15)))
    if draw(st.booleans()):
        buf = bytearray(data)
        for position, value in draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                             min_size=1, max_size=3)):
            if buf:
                buf[position % len(buf)] = value
        data = bytes(buf)
    return data


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), compressed()), cuts=cuts, ctx=st.booleans())
def test_inflate_raises_only_protocol_errors(data, cuts, ctx):
    out = targets.deflate_target(data, cuts, no_context_takeover=ctx)
    assert out is None or len(out) <= targets.MAX_MESSAGE


@FUZZ
@given(payload=st.binary(max_size=5000) | st.text(max_size=800).map(str.encode), wbits=st.integers(9, 15),
       cuts=cuts)
def test_inflate_round_trip_in_any_split(payload, wbits, cuts):
    out = targets.deflate_target(targets.compress(payload, wbits), cuts)
    if len(payload) <= targets.MAX_MESSAGE:
        assert out == payload
    else:
        assert out is None  # 1009: over the limit once inflated


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), compressed()), cuts=cuts)
def test_compressed_frames_through_a_connection(data, cuts):
    targets.deflate_frames(data, cuts)


def test_bomb_costs_no_more_than_the_limit():
    """A 10 MB message of zeros compressed to ~10 KB is refused after at most the limit."""
    bomb = targets.compress(bytes(10 << 20))
    assert len(bomb) < 20000
    assert targets.deflate_target(bomb, [len(bomb) // 2]) is None
    assert len(zlib.decompressobj(-15).decompress(bomb + b"\x00\x00\xff\xff")) == 10 << 20
