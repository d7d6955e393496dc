"""Unit and property tests of zmqws.protocol.frames (RFC 6455 §5, §7.4).

Client frames are built either with ``frames.encode_frame(..., mask=...)`` or
with the small independent reference encoder below (``ref_encode``), which
shares no code with the library.
"""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.protocol.frames import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1, RSV2, RSV3,
    FrameParser, ProtocolError, apply_mask, encode_close_payload, encode_frame,
    frame_header, is_valid_close_code, parse_close_payload,
)

RFC_MASK = bytes((0x37, 0xFA, 0x21, 0x3D))  # the mask of the §5.7 examples
MASK = b"\x11\x22\x33\x44"


# -- helpers -------------------------------------------------------------------

def ref_mask(data, mask, offset=0):
    """§5.3 done the slow, obvious way: octet i XOR mask[(offset + i) % 4]."""
    return bytes(b ^ mask[(offset + i) % 4] for i, b in enumerate(data))


def ref_encode(opcode, payload, fin=True, rsv=0, mask=None):
    """An independent §5.2 encoder (masked when ``mask`` is given)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask is not None else 0
    n = len(payload)
    if n <= 125:
        head = struct.pack("!BB", b0, mbit | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + ref_mask(payload, mask)


def reassemble(pieces):
    """Join data-frame pieces back into whole frames: [(opcode, fin, rsv1, payload)].

    Checks the piece flags on the way: a frame starts with a ``first`` piece,
    its later pieces carry the same opcode and FIN, control frames are whole.
    """
    frames = []
    current = None
    for piece in pieces:
        if current is None:
            assert piece.first, "a frame must start with a first piece"
            current = [piece.opcode, piece.fin, piece.rsv1, bytearray(piece.payload)]
        else:
            assert not piece.first, "a new frame started before the previous one ended"
            assert piece.opcode < 8, "a control frame arrived inside a data frame"
            assert (piece.opcode, piece.fin, piece.rsv1) == tuple(current[:3])
            current[3] += piece.payload
        if piece.opcode >= 8:
            assert piece.first and piece.last, "control frames are delivered whole"
        if piece.last:
            frames.append((current[0], current[1], current[2], bytes(current[3])))
            current = None
    return frames, current


def parse_whole(data, **kwargs):
    """Feed ``data`` in one go and return the reassembled complete frames."""
    parser = FrameParser(**kwargs)
    frames, partial = reassemble(parser.feed(data))
    assert partial is None
    assert parser.error is None
    return frames


def protocol_error(data, **kwargs):
    """Feed ``data`` and return the ProtocolError it must cause (now or on the next feed)."""
    parser = FrameParser(**kwargs)
    with pytest.raises(ProtocolError) as info:
        parser.feed(data)
        parser.feed(b"")  # a deferred error is raised by the next call
    return info.value


# -- §5.7 examples, byte for byte ---------------------------------------------

HELLO_UNMASKED = bytes((0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
HELLO_MASKED = bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
HEL_FRAGMENT = bytes((0x01, 0x03, 0x48, 0x65, 0x6C))
LO_FRAGMENT = bytes((0x80, 0x02, 0x6C, 0x6F))
PING_UNMASKED = bytes((0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
PONG_MASKED = bytes((0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))


def test_rfc5_7_single_frame_unmasked_text_is_encoded_byte_for_byte():
    """§5.7: a single-frame unmasked text message "Hello"."""
    assert encode_frame(OP_TEXT, b"Hello") == HELLO_UNMASKED


def test_rfc5_7_single_frame_unmasked_text_parses():
    """§5.7: the unmasked "Hello" frame parses (server-side parser told not to require a mask)."""
    assert parse_whole(HELLO_UNMASKED, require_mask=False) == [(OP_TEXT, True, False, b"Hello")]


def test_rfc5_7_single_frame_masked_text_is_encoded_byte_for_byte():
    """§5.7: a single-frame masked text message "Hello" with mask 37 fa 21 3d."""
    assert encode_frame(OP_TEXT, b"Hello", mask=RFC_MASK) == HELLO_MASKED


def test_rfc5_7_single_frame_masked_text_parses_and_unmasks():
    """§5.7, §5.3: the masked "Hello" frame parses to the unmasked payload."""
    assert parse_whole(HELLO_MASKED) == [(OP_TEXT, True, False, b"Hello")]


def test_rfc5_7_fragmented_unmasked_text_is_encoded_byte_for_byte():
    """§5.7: a fragmented text message: "Hel" (FIN=0, text) then "lo" (FIN=1, continuation)."""
    assert encode_frame(OP_TEXT, b"Hel", fin=False) == HEL_FRAGMENT
    assert encode_frame(OP_CONT, b"lo") == LO_FRAGMENT


def test_rfc5_7_fragmented_unmasked_text_parses_with_fin_flags():
    """§5.7, §5.4: the two fragments parse with their opcodes and FIN bits."""
    assert parse_whole(HEL_FRAGMENT + LO_FRAGMENT, require_mask=False) == [
        (OP_TEXT, False, False, b"Hel"),
        (OP_CONT, True, False, b"lo"),
    ]


def test_rfc5_7_unmasked_ping_is_encoded_byte_for_byte():
    """§5.7: an unmasked ping with body "Hello"."""
    assert encode_frame(OP_PING, b"Hello") == PING_UNMASKED


def test_rfc5_7_masked_pong_is_encoded_byte_for_byte():
    """§5.7: the masked pong answering it, body "Hello"."""
    assert encode_frame(OP_PONG, b"Hello", mask=RFC_MASK) == PONG_MASKED


def test_rfc5_7_ping_and_pong_parse():
    """§5.7: the ping (unmasked) and the masked pong parse to "Hello"."""
    assert parse_whole(PING_UNMASKED, require_mask=False) == [(OP_PING, True, False, b"Hello")]
    assert parse_whole(PONG_MASKED) == [(OP_PONG, True, False, b"Hello")]


def test_rfc5_7_256_byte_binary_frame_header():
    """§5.7: 256 bytes binary in one unmasked frame: 0x82 0x7E 0x0100."""
    payload = bytes(range(256))
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:4] == bytes((0x82, 0x7E, 0x01, 0x00))
    assert frame[4:] == payload
    assert frame_header(OP_BINARY, 256) == bytes((0x82, 0x7E, 0x01, 0x00))


def test_rfc5_7_64kib_binary_frame_header():
    """§5.7: 64 KiB binary in one unmasked frame: 0x82 0x7F 0x0000000000010000."""
    payload = b"\xAB" * 65536
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:10] == bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0))
    assert len(frame) == 10 + 65536
    assert frame_header(OP_BINARY, 65536) == frame[:10]


def test_rfc5_7_large_frames_parse():
    """§5.7: the 256-byte and 64 KiB frames parse back to their payloads."""
    small, big = bytes(range(256)), b"\xAB" * 65536
    data = encode_frame(OP_BINARY, small) + encode_frame(OP_BINARY, big)
    assert parse_whole(data, require_mask=False) == [
        (OP_BINARY, True, False, small), (OP_BINARY, True, False, big)]


# -- §5.2 payload length forms -------------------------------------------------

LENGTH_HEADERS = [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
]


@pytest.mark.parametrize("length,header", LENGTH_HEADERS)
def test_rfc5_2_unmasked_length_forms(length, header):
    """§5.2: 7-bit lengths up to 125, 16-bit 126..65535, 64-bit from 65536 (minimal form)."""
    assert frame_header(OP_BINARY, length) == header
    assert encode_frame(OP_BINARY, b"x" * length)[:len(header)] == header


@pytest.mark.parametrize("length,header", LENGTH_HEADERS)
def test_rfc5_2_masked_length_forms_match_reference(length, header):
    """§5.2: masked frames set the MASK bit, keep the length form and append the key."""
    payload = bytes(i & 0xFF for i in range(length))
    frame = encode_frame(OP_BINARY, payload, mask=MASK)
    assert frame == ref_encode(OP_BINARY, payload, mask=MASK)
    assert frame[0] == header[0] and frame[1] == header[1] | 0x80
    assert frame[2:len(header)] == header[2:]


@pytest.mark.parametrize("length", [n for n, _ in LENGTH_HEADERS])
def test_rfc5_2_every_length_form_parses(length):
    """§5.2: a masked client frame of each length form parses to its payload."""
    payload = bytes((i * 7) & 0xFF for i in range(length))
    assert parse_whole(ref_encode(OP_BINARY, payload, mask=MASK)) == [
        (OP_BINARY, True, False, payload)]


def test_rfc5_2_zero_length_data_frame_is_one_piece():
    """§5.2: an empty data frame comes out as one piece, first and last."""
    pieces = FrameParser().feed(ref_encode(OP_TEXT, b"", mask=MASK))
    assert len(pieces) == 1
    assert pieces[0].first and pieces[0].last and pieces[0].payload == b""


# -- §5.3 masking --------------------------------------------------------------

def test_rfc5_3_apply_mask_rfc_example():
    """§5.3, §5.7: "Hello" masked with 37 fa 21 3d is 7f 9f 4d 51 58."""
    assert apply_mask(b"Hello", RFC_MASK) == bytes((0x7F, 0x9F, 0x4D, 0x51, 0x58))


def test_rfc5_3_masking_is_an_involution():
    """§5.3: unmasking is the same operation as masking."""
    data = bytes(range(256)) * 3
    assert apply_mask(apply_mask(data, MASK), MASK) == data


def test_rfc5_3_apply_mask_empty():
    """§5.3: an empty payload stays empty."""
    assert apply_mask(b"", MASK) == b""
    assert apply_mask(b"", MASK, 3) == b""


@pytest.mark.parametrize("offset", range(9))
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 13])
def test_rfc5_3_apply_mask_with_offset(offset, length):
    """§5.3: octet i of the payload uses mask octet i MOD 4, also for a piece starting at ``offset``."""
    data = bytes(range(100, 100 + length))
    assert apply_mask(data, MASK, offset) == ref_mask(data, MASK, offset)


def test_rfc5_3_apply_mask_of_pieces_equals_whole():
    """§5.3: masking pieces with their offsets gives the mask of the whole payload."""
    data = bytes(range(50))
    whole = apply_mask(data, MASK)
    pieces = b"".join(apply_mask(data[a:b], MASK, a) for a, b in [(0, 3), (3, 4), (4, 21), (21, 50)])
    assert pieces == whole


@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4), st.integers(0, 1000))
@settings(max_examples=200, deadline=None)
def test_rfc5_3_apply_mask_matches_reference(data, mask, offset):
    """§5.3: apply_mask agrees with the byte-by-byte definition for any data, key and offset."""
    assert apply_mask(data, mask, offset) == ref_mask(data, mask, offset)


def test_rfc5_3_payload_split_at_odd_offsets_is_unmasked_correctly():
    """§5.3: a masked payload arriving byte by byte unmasks with the right key octet each time."""
    payload = bytes(range(200))
    data = ref_encode(OP_BINARY, payload, mask=MASK)
    parser = FrameParser()
    pieces = []
    for i in range(len(data)):
        pieces += parser.feed(data[i:i + 1])
    frames, partial = reassemble(pieces)
    assert partial is None
    assert frames == [(OP_BINARY, True, False, payload)]


# -- incremental delivery ------------------------------------------------------

def test_data_frame_payload_comes_out_in_pieces_with_first_and_last():
    """Data-frame payload is handed out as it arrives: first piece, then the last one."""
    payload = b"abcdefghij"
    data = ref_encode(OP_TEXT, payload, fin=False, mask=MASK)
    parser = FrameParser()
    head = data[:2 + 4 + 4]  # header, mask, 4 payload bytes
    p1 = parser.feed(head)
    assert [(p.first, p.last, p.payload, p.fin, p.opcode) for p in p1] == [
        (True, False, b"abcd", False, OP_TEXT)]
    p2 = parser.feed(data[len(head):])
    assert [(p.first, p.last, p.payload, p.fin, p.opcode) for p in p2] == [
        (False, True, b"efghij", False, OP_TEXT)]


def test_control_frame_is_held_until_whole():
    """§5.5: control frames are delivered whole, never in pieces."""
    data = ref_encode(OP_PING, b"ping body", mask=MASK)
    parser = FrameParser()
    assert parser.feed(data[:-1]) == []
    assert parser.buffered == len(data) - 1
    (frame,) = parser.feed(data[-1:])
    assert (frame.opcode, frame.payload, frame.first, frame.last) == (OP_PING, b"ping body", True, True)
    assert parser.buffered == 0


def test_several_frames_in_one_feed():
    """§5.2: several frames in one batch all come out, in order."""
    data = (ref_encode(OP_TEXT, b"one", mask=MASK) + ref_encode(OP_PING, b"p", mask=MASK)
            + ref_encode(OP_BINARY, b"two", mask=MASK))
    assert parse_whole(data) == [
        (OP_TEXT, True, False, b"one"), (OP_PING, True, False, b"p"), (OP_BINARY, True, False, b"two")]


# -- §5.1, §5.2 errors ---------------------------------------------------------

def test_rfc5_1_unmasked_client_frame_is_1002():
    """§5.1: a server MUST close the connection on an unmasked client frame (1002)."""
    assert protocol_error(encode_frame(OP_TEXT, b"Hello")).code == 1002


def test_rfc5_1_unmasked_frame_accepted_when_mask_not_required():
    """§5.1: the mask requirement is the server's; a parser may be told not to require it."""
    assert parse_whole(encode_frame(OP_TEXT, b"x"), require_mask=False) == [(OP_TEXT, True, False, b"x")]


@pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3])
def test_rfc5_2_rsv_bits_without_extension_are_1002(rsv):
    """§5.2: RSV1-3 MUST be 0 unless an extension defines them, else fail the connection (1002)."""
    assert protocol_error(ref_encode(OP_TEXT, b"x", rsv=rsv, mask=MASK)).code == 1002


def test_rfc5_2_rsv1_allowed_by_negotiated_extension():
    """§5.2: RSV1 is accepted when an extension (permessage-deflate) negotiated it."""
    frames = parse_whole(ref_encode(OP_TEXT, b"x", rsv=RSV1, mask=MASK), allowed_rsv=RSV1)
    assert frames == [(OP_TEXT, True, True, b"x")]


@pytest.mark.parametrize("rsv", [RSV2, RSV3])
def test_rfc5_2_other_rsv_bits_still_1002_when_only_rsv1_allowed(rsv):
    """§5.2: an extension allowing RSV1 does not allow RSV2/RSV3."""
    assert protocol_error(ref_encode(OP_TEXT, b"x", rsv=rsv, mask=MASK), allowed_rsv=RSV1).code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_rfc5_2_reserved_opcodes_are_1002(opcode):
    """§5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved; receiving one fails the connection (1002)."""
    assert protocol_error(ref_encode(opcode, b"", mask=MASK)).code == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_rfc5_5_control_frame_over_125_bytes_is_1002(opcode):
    """§5.5: control frames MUST have a payload of 125 bytes or less (1002)."""
    assert protocol_error(ref_encode(opcode, b"\x03\xe8" + b"a" * 124, mask=MASK)).code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
def test_rfc5_5_control_frame_of_125_bytes_is_fine(opcode):
    """§5.5: 125 bytes is the largest allowed control payload."""
    assert parse_whole(ref_encode(opcode, b"a" * 125, mask=MASK)) == [(opcode, True, False, b"a" * 125)]


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_rfc5_5_fragmented_control_frame_is_1002(opcode):
    """§5.5: control frames MUST NOT be fragmented (FIN=0 is a protocol error)."""
    assert protocol_error(ref_encode(opcode, b"", fin=False, mask=MASK)).code == 1002


def test_rfc5_2_64bit_length_with_most_significant_bit_is_1002():
    """§5.2: the most significant bit of a 64-bit length MUST be 0."""
    data = b"\x82\xff" + (1 << 63).to_bytes(8, "big") + MASK
    assert protocol_error(data).code == 1002


def test_frame_over_max_payload_is_1009_as_soon_as_the_header_arrives():
    """§7.4.1: 1009 for a frame too big to process, refused before any payload is buffered."""
    header = ref_encode(OP_BINARY, b"z" * 1001, mask=MASK)[:2 + 2 + 4]
    parser = FrameParser(max_payload=1000)
    with pytest.raises(ProtocolError) as info:
        parser.feed(header)
    assert info.value.code == 1009


def test_frame_over_max_payload_64bit_length_is_1009():
    """§7.4.1: a huge 64-bit length is refused with 1009 from the header alone."""
    data = b"\x82\xff" + (1 << 40).to_bytes(8, "big") + MASK
    assert protocol_error(data, max_payload=1 << 20).code == 1009


def test_frame_of_exactly_max_payload_is_accepted():
    """A frame of exactly ``max_payload`` bytes is within the limit."""
    payload = b"q" * 1000
    assert parse_whole(ref_encode(OP_BINARY, payload, mask=MASK), max_payload=1000) == [
        (OP_BINARY, True, False, payload)]


def test_header_errors_are_found_from_the_first_two_bytes():
    """§5.2: errors decided by the first two bytes fail at once (fail fast), not after the payload."""
    parser = FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(bytes((0x83, 0x80)))  # reserved opcode 3, masked, no payload yet
    assert info.value.code == 1002


def test_error_after_good_frames_is_deferred_to_the_next_feed():
    """Good frames before a bad one are returned first; the error is set and raised on the next feed()."""
    good = ref_encode(OP_TEXT, b"good", mask=MASK)
    bad = ref_encode(OP_TEXT, b"bad")  # unmasked
    parser = FrameParser()
    frames, _ = reassemble(parser.feed(good + bad))
    assert frames == [(OP_TEXT, True, False, b"good")]
    assert isinstance(parser.error, ProtocolError) and parser.error.code == 1002
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"")
    assert info.value is parser.error


def test_error_with_no_good_frames_is_raised_at_once():
    """A batch that starts with a bad frame raises at once."""
    with pytest.raises(ProtocolError) as info:
        FrameParser().feed(ref_encode(OP_TEXT, b"bad"))
    assert info.value.code == 1002


# -- §5.5.1, §7.4 close payloads ------------------------------------------------

def test_rfc5_5_1_empty_close_payload_means_no_status():
    """§5.5.1, §7.1.5: an empty close body is allowed; the code is "no status" (None)."""
    assert parse_close_payload(b"") == (None, "")


def test_rfc5_5_1_one_byte_close_payload_is_1002():
    """§5.5.1: a close body, if any, starts with a two-byte code; one byte is a protocol error."""
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                                  5000, 65535])
def test_rfc7_4_invalid_close_codes_are_1002(code):
    """§7.4.1-§7.4.2: 0-999 unused, 1004/1005/1006/1015 never on the wire, 1016-2999 reserved, 5000+ invalid."""
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(struct.pack("!H", code) + b"why")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 3999, 4000, 4999])
def test_rfc7_4_valid_close_codes_parse(code):
    """§7.4.1-§7.4.2, §11.7: defined codes and the 3000-4999 range are accepted."""
    assert is_valid_close_code(code)
    assert parse_close_payload(struct.pack("!H", code) + b"bye") == (code, "bye")


def test_rfc5_5_1_close_reason_is_decoded_utf8():
    """§5.5.1: the reason after the code is UTF-8 text."""
    assert parse_close_payload(b"\x03\xe8" + "fin ✓".encode()) == (1000, "fin ✓")


def test_rfc5_5_1_close_reason_not_utf8_is_1007():
    """§5.5.1, §8.1: a close reason that is not UTF-8 fails the connection with 1007."""
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8\xff\xfe")
    assert info.value.code == 1007


def test_rfc5_5_1_close_reason_with_truncated_utf8_is_1007():
    """§5.5.1: a reason cut in the middle of a character is not UTF-8 (1007)."""
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8" + "€".encode()[:2])
    assert info.value.code == 1007


def test_encode_close_payload_without_code_is_empty():
    """§5.5.1: a close without status has an empty body."""
    assert encode_close_payload(None) == b""


def test_encode_close_payload_code_and_reason():
    """§5.5.1: two-byte network-order code, then the UTF-8 reason."""
    assert encode_close_payload(1000, "bye") == b"\x03\xe8bye"
    assert encode_close_payload(4321) == struct.pack("!H", 4321)


def test_encode_close_payload_truncates_to_125_bytes():
    """§5.5: a close body is a control payload: 125 bytes at most."""
    payload = encode_close_payload(1000, "a" * 500)
    assert len(payload) == 125
    assert payload == b"\x03\xe8" + b"a" * 123


def test_encode_close_payload_does_not_split_a_utf8_character():
    """§5.5.1: truncation keeps the reason valid UTF-8: a character that does not fit is dropped whole."""
    reason = "a" * 122 + "é"  # "é" is 2 bytes; 2 + 122 + 2 = 126 > 125
    payload = encode_close_payload(1000, reason)
    assert payload == b"\x03\xe8" + b"a" * 122
    assert parse_close_payload(payload) == (1000, "a" * 122)


def test_encode_close_payload_multibyte_reason_that_fits_exactly():
    """§5.5: 41 three-byte characters (123 bytes) fit exactly in 125 bytes."""
    payload = encode_close_payload(1001, "€" * 60)
    assert len(payload) == 125
    assert parse_close_payload(payload) == (1001, "€" * 41)


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_encode_close_payload_is_always_a_valid_close_body(reason):
    """§5.5.1: for any reason the body is <= 125 bytes, parses back, and keeps a prefix of the reason."""
    payload = encode_close_payload(1000, reason)
    assert len(payload) <= 125
    code, parsed = parse_close_payload(payload)
    assert code == 1000
    assert reason.startswith(parsed)
    assert len(parsed.encode()) > 123 - 4 or parsed == reason


# -- property tests ------------------------------------------------------------

def _payload_for(opcode):
    if opcode >= 8:
        return st.binary(max_size=125)
    return st.one_of(
        st.binary(max_size=300),
        st.builds(lambda n, b: bytes([b]) * n,
                  st.sampled_from([125, 126, 127, 65535, 65536, 70000]), st.integers(0, 255)),
    )


@st.composite
def _frame(draw):
    opcode = draw(st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG]))
    payload = draw(_payload_for(opcode))
    fin = True if opcode >= 8 else draw(st.booleans())
    rsv1 = draw(st.booleans())
    mask = draw(st.binary(min_size=4, max_size=4))
    return opcode, fin, rsv1, payload, mask


def _split(draw, data, max_cuts=30):
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts))))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.lists(_frame(), max_size=8), st.data())
@settings(max_examples=200, deadline=None)
def test_property_frames_split_anywhere_parse_to_the_original_frames(frames, data):
    """§5.2-§5.3: masked frames (random keys) concatenated and fed in arbitrary pieces
    come out as exactly the original frames once data-frame pieces are joined."""
    stream = b"".join(ref_encode(op, payload, fin, RSV1 if rsv1 else 0, mask)
                      for op, fin, rsv1, payload, mask in frames)
    parser = FrameParser(allowed_rsv=RSV1, max_payload=1 << 17)
    pieces = []
    for chunk in _split(data.draw, stream):
        pieces += parser.feed(chunk)
    assert parser.error is None
    got, partial = reassemble(pieces)
    assert partial is None
    assert got == [(op, fin, rsv1, payload) for op, fin, rsv1, payload, _ in frames]
    assert parser.buffered == 0


def _feed_all(parser, chunks):
    """Feed chunks; return (reassembled complete frames, error code or None). Only ProtocolError may escape."""
    pieces = []
    code = None
    try:
        for chunk in chunks:
            pieces += parser.feed(chunk)
        pieces += parser.feed(b"")  # flush a deferred error
    except ProtocolError as exc:
        code = exc.code
    frames, _ = reassemble(pieces)
    return frames, code


@given(st.binary(max_size=600), st.booleans(), st.integers(0, 300), st.data())
@settings(max_examples=200, deadline=None)
def test_property_arbitrary_bytes_parse_or_fail_with_1002_or_1009(raw, require_mask, max_payload, data):
    """Arbitrary bytes split arbitrarily either parse or raise ProtocolError 1002/1009, nothing else;
    and the outcome (complete frames, error code) does not depend on how the bytes were split."""
    chunks = _split(data.draw, raw)
    kwargs = dict(require_mask=require_mask, max_payload=max_payload)
    split_frames, split_code = _feed_all(FrameParser(**kwargs), chunks)
    assert split_code in (None, 1002, 1009)
    whole_frames, whole_code = _feed_all(FrameParser(**kwargs), [raw])
    assert (split_frames, split_code) == (whole_frames, whole_code)


@given(st.lists(st.integers(0, 255), min_size=2, max_size=2), st.binary(max_size=140), st.data())
@settings(max_examples=200, deadline=None)
def test_property_any_header_bytes_with_masked_payload(head, rest, data):
    """Any first two header bytes followed by anything: only ProtocolError 1002/1009 can come out."""
    raw = bytes(head) + MASK + rest
    frames, code = _feed_all(FrameParser(max_payload=100), _split(data.draw, raw))
    assert code in (None, 1002, 1009)
