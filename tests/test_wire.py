"""Unit tests of the wire kinds (zmqws/wire.py): envelopes, notices, WebSocket and SSE encodings."""

from __future__ import annotations

import base64
import json

import pytest

from conftest import inflate
from zmqws.protocol.deflate import PerMessageDeflate
from zmqws.protocol.frames import OP_BINARY, OP_TEXT, FrameParser, encode_frame
from zmqws.protocol.sse import encode_event
from zmqws.routing import Stored
from zmqws.wire import Envelopes, SseWire, WebSocketWire, json_doc

ENVELOPES = Envelopes(b" ")


def text(msg_id: int, payload: str, topic: bytes = b"") -> Stored:
    return Stored(msg_id, topic, payload.encode("utf-8"), OP_TEXT, bool(topic))


def binary(msg_id: int, payload: bytes, topic: bytes = b"") -> Stored:
    return Stored(msg_id, topic, payload, OP_BINARY, bool(topic))


# -- envelopes ---------------------------------------------------------------------------------


def test_payload_envelope_is_the_payload_with_its_opcode():
    assert ENVELOPES.body(text(1, "héllo", b"t"), "payload") == (OP_TEXT, "héllo".encode())
    assert ENVELOPES.body(binary(2, b"\xff\x00", b"t"), "payload") == (OP_BINARY, b"\xff\x00")


def test_topic_envelope_puts_the_topic_and_separator_before_the_payload():
    assert ENVELOPES.body(text(1, "1.5", b"prices.eu"), "topic") == (OP_TEXT, b"prices.eu 1.5")
    assert Envelopes(b"|").body(text(1, "x", b"t"), "topic") == (OP_TEXT, b"t|x")
    assert ENVELOPES.body(binary(1, b"\xff", b"t"), "topic") == (OP_BINARY, b"t \xff")


def test_topic_envelope_of_a_single_part_message_is_the_payload():
    assert ENVELOPES.body(text(1, "t rest"), "topic") == (OP_TEXT, b"t rest")


def test_topic_envelope_with_a_topic_not_utf8_is_a_binary_frame():
    assert ENVELOPES.body(text(1, "x", b"\xfft"), "topic") == (OP_BINARY, b"\xfft x")
    assert Envelopes(b"\xfe").body(text(1, "x", b"t"), "topic") == (OP_BINARY, b"t\xfex")


def test_json_envelope_of_text():
    opcode, body = ENVELOPES.body(text(7, "héllo", b"t.1"), "json")
    assert opcode == OP_TEXT
    assert json.loads(body) == {"id": 7, "topic": "t.1", "data": "héllo"}
    assert b" " not in body  # compact separators


def test_json_envelope_of_binary_is_base64_with_binary_true():
    payload = bytes(range(256))
    opcode, body = ENVELOPES.body(binary(8, payload, b"b"), "json")
    doc = json.loads(body)
    assert opcode == OP_TEXT
    assert doc["binary"] is True and base64.b64decode(doc["data"]) == payload
    assert (doc["id"], doc["topic"]) == (8, "b")


def test_json_doc_replaces_a_topic_that_is_not_utf8():
    assert json_doc(text(3, "x", b"\xfft")) == {"id": 3, "topic": "\ufffdt", "data": "x"}
    assert "binary" not in json_doc(text(3, "x"))


@pytest.mark.parametrize("envelope, separator, expected", [
    ("payload", b" ", b'{"gap":[3,9]}'),
    ("json", b" ", b'{"gap":[3,9]}'),
    ("topic", b" ", b'$gap {"gap":[3,9]}'),
    ("topic", b"|", b'$gap|{"gap":[3,9]}'),
])
def test_notice_per_envelope(envelope, separator, expected):
    assert Envelopes(separator).notice({"gap": [3, 9]}, envelope) == expected


# -- WebSocket frames --------------------------------------------------------------------------


@pytest.mark.parametrize("m, envelope", [
    (text(1, "hello", b"t"), "payload"),
    (binary(2, b"\x00\xff" * 100, b"t"), "payload"),
    (text(3, "x" * 70000, b"t"), "topic"),
    (text(4, "y" * 200, b"t"), "json"),
])
def test_websocket_frames_are_encode_frame_of_the_envelope(m, envelope):
    wire = WebSocketWire(ENVELOPES)
    assert wire.encode(m, envelope) == encode_frame(*ENVELOPES.body(m, envelope))


def test_websocket_notice_is_a_text_frame():
    wire = WebSocketWire(ENVELOPES)
    assert wire.encode_notice({"gap": [1, 2]}, "topic") == encode_frame(OP_TEXT, b'$gap {"gap":[1,2]}')


def read_frame(frame: bytes):
    """(opcode, rsv1, payload) of one server frame, inflated when RSV1 says so (RFC 7692 §7.2.2)."""
    parsed, = FrameParser(require_mask=False, allowed_rsv=0x40).feed(frame)
    return parsed.opcode, parsed.rsv1, inflate(parsed.payload) if parsed.rsv1 else parsed.payload


def test_deflate_wire_round_trips_through_zlib():
    wire = WebSocketWire(ENVELOPES, PerMessageDeflate(threshold=16))
    m = text(5, "compress me " * 50, b"t")
    frame = wire.encode(m, "topic")
    assert len(frame) < len(encode_frame(*ENVELOPES.body(m, "topic")))
    assert read_frame(frame) == (OP_TEXT, True, b"t " + m.payload)
    notice = {"gap": [1, 100000]}
    assert read_frame(wire.encode_notice(notice, "payload"))[2] == json.dumps(notice, separators=(",", ":")).encode()


def test_deflate_wire_sends_short_messages_uncompressed():
    wire = WebSocketWire(ENVELOPES, PerMessageDeflate(threshold=128))
    m = binary(6, b"\x01\x02")
    assert wire.encode(m, "payload") == encode_frame(OP_BINARY, b"\x01\x02")


def test_deflate_wire_bytes_are_the_same_for_every_client_of_one_window():
    m = text(7, "same bytes " * 40)
    first = WebSocketWire(ENVELOPES, PerMessageDeflate(server_max_window_bits=10)).encode(m, "payload")
    second = WebSocketWire(ENVELOPES, PerMessageDeflate(server_max_window_bits=10)).encode(m, "payload")
    assert first == second


# -- Server-Sent Events ------------------------------------------------------------------------


def test_sse_event_carries_the_message_id():
    wire = SseWire(ENVELOPES)
    assert wire.encode(text(42, "hello"), "payload") == b"id: 42\ndata: hello\n\n"
    assert wire.encode(text(43, "a\nb", b"t"), "topic") == b"id: 43\ndata: t a\ndata: b\n\n"


def test_sse_binary_event_is_base64():
    wire = SseWire(ENVELOPES)
    event = wire.encode(binary(9, b"\xff\x00"), "payload")
    assert event == b"id: 9\nevent: binary\ndata: " + base64.b64encode(b"\xff\x00") + b"\n\n"
    assert event == encode_event(b"\xff\x00", 9, binary=True)


def test_sse_json_envelope_is_one_data_line():
    event = SseWire(ENVELOPES).encode(text(10, "x", b"t"), "json")
    assert event == b'id: 10\ndata: {"id":10,"topic":"t","data":"x"}\n\n'


def test_sse_notice_is_a_named_event_without_id():
    assert SseWire(ENVELOPES).encode_notice({"gap": [4, 6]}, "topic") == b'event: gap\ndata: {"gap":[4,6]}\n\n'


def test_wire_kinds_are_hashable_by_identity_and_named():
    a, b = WebSocketWire(ENVELOPES), WebSocketWire(ENVELOPES)
    assert a != b and len({a, b, a}) == 2
    assert (a.name, SseWire(ENVELOPES).name) == ("websocket", "sse")
    assert a.shared and a.gap_notices
