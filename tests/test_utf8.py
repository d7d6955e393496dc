"""Tests of zmqws.protocol.utf8: incremental, fail-fast UTF-8 validation (RFC 6455 §8.1, RFC 3629 §3-§4)."""

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.protocol.utf8 import Utf8Validator, is_utf8


def validate(pieces):
    """Feed the pieces then the final call; True only if every call accepted."""
    v = Utf8Validator()
    for piece in pieces:
        if not v.feed(piece):
            return False
    return v.feed(b"", final=True)


def decodes(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# The second byte is the only continuation byte with a restricted range (RFC 3629 §4),
# so trying these candidates for it, then 0x80s, completes any viable prefix.
_SECOND_BYTE_CANDIDATES = (0x80, 0x90, 0xA0, 0xBF)


def viable(prefix):
    """An independent oracle: can some continuation make ``prefix`` valid UTF-8?"""
    if decodes(prefix):
        return True
    for extra in range(1, 4):
        for c in _SECOND_BYTE_CANDIDATES:
            if decodes(prefix + bytes([c]) + b"\x80" * (extra - 1)):
                return True
    return False


VALID = [
    pytest.param(b"", id="empty"),
    pytest.param(b"Hello, world", id="ascii"),
    pytest.param(b"\x00\x7f", id="nul-and-del"),
    pytest.param("\u0080".encode(), id="U+0080"),
    pytest.param("\u07ff".encode(), id="U+07FF"),
    pytest.param("\u0800".encode(), id="U+0800"),
    pytest.param("\ud7ff".encode(), id="U+D7FF"),
    pytest.param("\ue000".encode(), id="U+E000"),
    pytest.param("\uffff".encode(), id="U+FFFF"),
    pytest.param("\U00010000".encode(), id="U+10000"),
    pytest.param("\U0010ffff".encode(), id="U+10FFFF"),
    pytest.param("κόσμε €100 😀 日本語".encode(), id="mixed"),
]

INVALID = [
    pytest.param(b"\x80", id="lone-continuation"),
    pytest.param(b"a\xbfb", id="continuation-in-ascii"),
    pytest.param(b"\xc0\xaf", id="overlong-2-byte-C0"),
    pytest.param(b"\xc1\xbf", id="overlong-2-byte-C1"),
    pytest.param(b"\xe0\x80\xaf", id="overlong-3-byte"),
    pytest.param(b"\xf0\x80\x80\xaf", id="overlong-4-byte"),
    pytest.param(b"\xed\xa0\x80", id="surrogate-D800"),
    pytest.param(b"\xed\xbf\xbf", id="surrogate-DFFF"),
    pytest.param(b"\xed\xa0\xbd\xed\xb8\x80", id="surrogate-pair-CESU-8"),
    pytest.param(b"\xf4\x90\x80\x80", id="above-U+10FFFF"),
    pytest.param(b"\xf5\x80\x80\x80", id="lead-F5"),
    pytest.param(b"\xf8\x88\x80\x80\x80", id="5-byte-form"),
    pytest.param(b"\xfe", id="FE"),
    pytest.param(b"\xff", id="FF"),
    pytest.param(b"\xe2\x82", id="truncated-at-end"),
    pytest.param(b"\xe1\x41", id="missing-continuation"),
    pytest.param(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", id="autobahn-6.3.1"),
]


@pytest.mark.parametrize("data", VALID)
def test_rfc3629_valid_sequences_are_accepted(data):
    """RFC 3629 §3: well-formed UTF-8, including the boundary code points, is accepted."""
    assert Utf8Validator().feed(data, final=True)
    assert is_utf8(data)


@pytest.mark.parametrize("data", INVALID)
def test_rfc3629_invalid_sequences_are_rejected(data):
    """RFC 3629 §3-§4: overlongs, surrogates, > U+10FFFF, bad leads, truncations are rejected."""
    assert not validate([data])
    assert not is_utf8(data)


@pytest.mark.parametrize("prefix", [
    pytest.param(b"\xed\xa0", id="surrogate-start-ED-A0"),
    pytest.param(b"\xed\xbf", id="surrogate-start-ED-BF"),
    pytest.param(b"\xf4\x90", id="above-U+10FFFF-F4-90"),
    pytest.param(b"\xc0", id="C0"),
    pytest.param(b"\xc1", id="C1"),
    pytest.param(b"\xf5", id="F5"),
    pytest.param(b"\xff", id="FF"),
    pytest.param(b"\xe0\x80", id="overlong-E0-80"),
    pytest.param(b"\xf0\x8f", id="overlong-F0-8F"),
    pytest.param(b"\x80", id="continuation"),
    pytest.param(b"ok\xe1\x41", id="missing-continuation"),
])
def test_rfc6455_8_1_fail_fast_on_prefix_that_can_never_be_valid(prefix):
    """§8.1: fail as soon as the bytes so far can never become valid, without waiting for the end."""
    assert not Utf8Validator().feed(prefix)


@pytest.mark.parametrize("prefix", [
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\x9f", b"\xf4\x8f\xbf", b"\xe0\xa0", b"\xf0\x90",
])
def test_rfc6455_8_1_incomplete_but_viable_prefix_is_not_failed_early(prefix):
    """§8.1: a character cut at a piece boundary is fine until the message ends."""
    v = Utf8Validator()
    assert v.feed(prefix)
    assert not v.feed(b"", final=True)


@pytest.mark.parametrize("first,second", [
    (b"\xed", b"\xa0"), (b"\xf4", b"\x90"), (b"\xe0", b"\x80"), (b"abc\xed", b"\xa0\x80"),
])
def test_rfc6455_8_1_fail_fast_when_the_bad_byte_is_in_the_next_piece(first, second):
    """§8.1: a lead byte alone is viable; the piece bringing the impossible byte fails."""
    v = Utf8Validator()
    assert v.feed(first)
    assert not v.feed(second)


@pytest.mark.parametrize("data", VALID)
def test_valid_text_split_at_every_position_is_accepted(data):
    """§8.1: validation of a fragmented message does not depend on where it was split."""
    for i in range(len(data) + 1):
        assert validate([data[:i], data[i:]])
    assert validate([data[i:i + 1] for i in range(len(data))])


@pytest.mark.parametrize("data", INVALID)
def test_invalid_text_split_at_every_position_is_rejected(data):
    """§8.1: invalid UTF-8 is rejected wherever the message was split."""
    for i in range(len(data) + 1):
        assert not validate([data[:i], data[i:]])
    assert not validate([data[i:i + 1] for i in range(len(data))])


def test_final_on_empty_message():
    """An empty text message is valid UTF-8."""
    assert Utf8Validator().feed(b"", final=True)


def test_is_utf8_ascii_fast_path_and_non_ascii():
    """is_utf8: ASCII, valid non-ASCII and invalid bytes."""
    assert is_utf8(b"plain ascii")
    assert is_utf8("naïve".encode())
    assert not is_utf8(b"na\xefve")


# -- property tests ------------------------------------------------------------

def _split(draw, data, max_cuts=20):
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.text(max_size=200), st.data())
@settings(max_examples=200, deadline=None)
def test_property_any_text_any_split_is_accepted(text, data):
    """§8.1: the UTF-8 encoding of any text, split anywhere, is accepted."""
    raw = text.encode("utf-8")
    assert validate(_split(data.draw, raw))
    assert is_utf8(raw)


_UTF8_ISH = st.lists(
    st.one_of(
        st.integers(0, 255),
        st.sampled_from([0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xED, 0xEF,
                         0xF0, 0xF4, 0xF5]),
    ),
    max_size=40,
).map(bytes)


@given(st.one_of(st.binary(max_size=60), _UTF8_ISH), st.data())
@settings(max_examples=200, deadline=None)
def test_property_random_bytes_agree_with_python_decoder(raw, data):
    """For any bytes and any split, the validator's verdict equals bytes.decode('utf-8')."""
    assert validate(_split(data.draw, raw)) == decodes(raw)
    assert is_utf8(raw) == decodes(raw)


@given(st.one_of(st.binary(max_size=40), _UTF8_ISH), st.data())
@settings(max_examples=200, deadline=None)
def test_property_fails_exactly_at_the_first_non_viable_piece(raw, data):
    """§8.1 fail fast, exactly: feed() returns False on the first piece after which no
    continuation could make the bytes valid, and True on every piece before it."""
    v = Utf8Validator()
    seen = b""
    for piece in _split(data.draw, raw):
        seen += piece
        expected = viable(seen)
        assert v.feed(piece) == expected, seen
        if not expected:
            return
    assert v.feed(b"", final=True) == decodes(raw)
