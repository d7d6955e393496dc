"""Tests of zmqws.protocol.connection.WebSocketConnection, the sans-I/O state machine (RFC 6455 §5-§8).

Client frames are masked (§5.1), built with ``frames.encode_frame(..., mask=...)``.
What the connection sends is read back from ``conn.out`` with ``server_frames``,
a tiny decoder of unmasked server frames written here.
"""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.protocol.connection import (
    CLOSED, CLOSING, OPEN, ClientConnection, CloseReceived, ConnectionFailed, Message, Ping, Pong,
    WebSocketConnection,
)
from zmqws.protocol.frames import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_frame,
)

MASK = b"\xa1\xb2\xc3\xd4"


def frame(opcode, payload=b"", fin=True, rsv1=False, mask=MASK):
    """A masked client frame."""
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)


def text(data, fin=True):
    return frame(OP_TEXT, data.encode() if isinstance(data, str) else data, fin)


def binary(data, fin=True):
    return frame(OP_BINARY, data, fin)


def cont(data, fin=True):
    return frame(OP_CONT, data.encode() if isinstance(data, str) else data, fin)


def close(code=None, reason=b""):
    return frame(OP_CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


def server_frames(conn):
    """Decode the unmasked frames queued in ``conn.out``: [(opcode, payload)]."""
    data = b"".join(conn.out)
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and not b0 & 0x70, "server frames here are whole and have no RSV bits"
        assert not b1 & 0x80, "server frames are not masked (§5.1)"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
        frames.append((b0 & 0x0F, data[pos:pos + n]))
        pos += n
    assert pos == len(data)
    return frames


def close_frames(conn):
    """The close frames queued, each as (code or None, reason bytes)."""
    result = []
    for opcode, payload in server_frames(conn):
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if payload else None
            result.append((code, payload[2:]))
    return result


def kinds(events):
    return [type(e).__name__ for e in events]


def failed_with(conn, events, code):
    """The connection failed with ``code``: last event, close frame queued, state CLOSED."""
    assert isinstance(events[-1], ConnectionFailed)
    assert events[-1].code == code
    assert conn.state == CLOSED
    assert [c for c, _ in close_frames(conn)] == [code]
    return True


# -- §5.6 data messages ----------------------------------------------------------

def test_rfc5_6_text_message():
    """§5.6: a text frame is a text message (valid UTF-8)."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(text("héllo"))
    assert isinstance(event, Message) and event.data == "héllo".encode() and not event.binary
    assert conn.state == OPEN and conn.out == []


def test_rfc5_6_binary_message():
    """§5.6: a binary frame is a binary message, any bytes."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(binary(b"\x00\xff\xfe"))
    assert isinstance(event, Message) and event.data == b"\x00\xff\xfe" and event.binary


def test_rfc5_6_empty_messages():
    """§5.6: empty text and binary messages are messages."""
    conn = WebSocketConnection()
    events = conn.receive_data(text(b"") + binary(b""))
    assert [(e.data, e.binary) for e in events] == [(b"", False), (b"", True)]


def test_message_fed_byte_by_byte():
    """A message split at every byte arrives once, whole, when its last byte does."""
    conn = WebSocketConnection()
    data = text("fragment me") + binary(bytes(300))
    events = []
    for i in range(len(data)):
        events += conn.receive_data(data[i:i + 1])
    assert [(e.data, e.binary) for e in events] == [(b"fragment me", False), (bytes(300), True)]


# -- §5.4 fragmentation --------------------------------------------------------------

def test_rfc5_4_fragmented_message_is_reassembled():
    """§5.4: a message in a first frame (FIN=0), continuations, and a final frame (FIN=1)."""
    conn = WebSocketConnection()
    events = conn.receive_data(text("Hel", fin=False) + cont("l", fin=False) + cont("o"))
    assert [(e.data, e.binary) for e in events] == [(b"Hello", False)]


def test_rfc5_4_fragmented_binary_message_keeps_the_first_opcode():
    """§5.4: continuation frames take the opcode of the first frame."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(binary(b"\x01", fin=False) + cont(b"\x02"))
    assert event.binary and event.data == b"\x01\x02"


def test_rfc5_4_continuation_without_a_message_is_1002():
    """§5.4: a continuation frame with no message in progress is a protocol error (1002)."""
    conn = WebSocketConnection()
    events = conn.receive_data(cont("orphan"))
    assert failed_with(conn, events, 1002)


def test_rfc5_4_continuation_after_a_complete_message_is_1002():
    """§5.4: after a FIN=1 frame the message is over; a continuation is 1002."""
    conn = WebSocketConnection()
    events = conn.receive_data(text("done") + cont("more"))
    assert kinds(events) == ["Message", "ConnectionFailed"]
    assert failed_with(conn, events, 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_rfc5_4_new_data_frame_inside_a_fragmented_message_is_1002(opcode):
    """§5.4: the fragments of one message must not be interleaved with another message (1002)."""
    conn = WebSocketConnection()
    events = conn.receive_data(text("part", fin=False) + frame(opcode, b"intruder"))
    assert failed_with(conn, events, 1002)


def test_rfc5_4_control_frames_between_fragments_are_allowed():
    """§5.4: control frames MAY be injected in the middle of a fragmented message."""
    conn = WebSocketConnection()
    data = (text("Hel", fin=False) + frame(OP_PING, b"p1") + cont("l", fin=False)
            + frame(OP_PONG, b"q") + cont("o"))
    events = conn.receive_data(data)
    assert kinds(events) == ["Ping", "Pong", "Message"]
    assert events[2].data == b"Hello"
    assert server_frames(conn) == [(OP_PONG, b"p1")]


def test_rfc5_4_close_between_fragments_ends_the_connection():
    """§5.4, §5.5.1: a close between fragments is processed; the partial message is dropped."""
    conn = WebSocketConnection()
    events = conn.receive_data(text("Hel", fin=False) + close(1000) + cont("lo"))
    assert kinds(events) == ["CloseReceived"]
    assert conn.state == CLOSED


def test_rfc5_4_empty_fragments_are_allowed():
    """§5.4: fragments may be empty; the message is their concatenation."""
    conn = WebSocketConnection()
    events = conn.receive_data(text(b"", fin=False) + cont(b"", fin=False) + cont("x"))
    assert [(e.data, e.binary) for e in events] == [(b"x", False)]


def test_max_fragments_allows_exactly_the_limit():
    """A message of ``max_fragments`` frames is accepted."""
    conn = WebSocketConnection(max_fragments=3)
    (event,) = conn.receive_data(text("a", fin=False) + cont("b", fin=False) + cont("c"))
    assert event.data == b"abc"


def test_max_fragments_exceeded_is_1009():
    """§7.4.1 (1009 "too big to process"): one frame more than ``max_fragments`` fails the connection."""
    conn = WebSocketConnection(max_fragments=3)
    events = conn.receive_data(text("a", fin=False) + cont("b", fin=False) + cont("c", fin=False))
    assert events == []
    events = conn.receive_data(cont("d"))
    assert failed_with(conn, events, 1009)


def test_max_fragments_zero_means_no_limit():
    """``max_fragments=0``: any number of fragments."""
    conn = WebSocketConnection()
    data = text("x", fin=False) + b"".join(cont("x", fin=False) for _ in range(500)) + cont("x")
    (event,) = conn.receive_data(data)
    assert event.data == b"x" * 502


# -- §8.1 UTF-8 --------------------------------------------------------------------

def test_rfc8_1_invalid_utf8_text_is_1007():
    """§8.1: a text message that is not valid UTF-8 fails the connection with 1007."""
    conn = WebSocketConnection()
    events = conn.receive_data(text(b"caf\xe9"))
    assert failed_with(conn, events, 1007)


def test_rfc8_1_invalid_utf8_fails_fast_on_the_fragment_that_has_it():
    """§8.1: fail on the fragment where the invalid byte appears, before the final fragment arrives."""
    conn = WebSocketConnection()
    assert conn.receive_data(text("ok ", fin=False)) == []
    events = conn.receive_data(cont(b"\xed\xa0", fin=False))  # start of a surrogate: never valid
    assert failed_with(conn, events, 1007)


def test_rfc8_1_invalid_utf8_fails_fast_inside_one_frame():
    """§8.1: a single big frame fails as soon as its arrived part cannot be UTF-8."""
    conn = WebSocketConnection()
    data = text(b"abc\xff" + b"x" * 1000)
    events = conn.receive_data(data[:2 + 4 + 2 + 10])  # header, mask, first 10 payload bytes
    assert failed_with(conn, events, 1007)


def test_rfc8_1_character_split_across_fragments_is_valid():
    """§8.1: a character may be split between fragments; only the whole message must be valid."""
    euro = "€".encode()
    conn = WebSocketConnection()
    events = conn.receive_data(text(euro[:1], fin=False) + cont(euro[1:2], fin=False) + cont(euro[2:]))
    assert [e.data for e in events] == [euro]


def test_rfc8_1_message_ending_inside_a_character_is_1007():
    """§8.1: a text message whose last fragment ends mid-character is invalid (1007)."""
    conn = WebSocketConnection()
    events = conn.receive_data(text("a", fin=False) + cont("€".encode()[:2]))
    assert failed_with(conn, events, 1007)


def test_rfc8_1_binary_messages_are_not_checked_for_utf8():
    """§5.6: binary data is arbitrary bytes."""
    conn = WebSocketConnection()
    events = conn.receive_data(binary(b"\xed\xa0\x80", fin=False) + cont(b"\xff"))
    assert [e.data for e in events] == [b"\xed\xa0\x80\xff"]


# -- message size (1009) -------------------------------------------------------------

def test_message_of_exactly_max_message_size_is_accepted():
    """A message of exactly ``max_message_size`` bytes is within the limit."""
    conn = WebSocketConnection(max_message_size=100)
    (event,) = conn.receive_data(binary(b"b" * 100))
    assert len(event.data) == 100


def test_single_frame_over_max_message_size_is_1009_from_its_header():
    """§7.4.1: 1009 for a message too big, refused as soon as the frame header arrives."""
    conn = WebSocketConnection(max_message_size=100)
    data = binary(b"b" * 101)
    events = conn.receive_data(data[:2 + 4])  # header and mask only
    assert failed_with(conn, events, 1009)


def test_fragmented_message_crossing_max_message_size_is_1009():
    """§7.4.1: a fragmented message fails with 1009 on the fragment that crosses the limit."""
    conn = WebSocketConnection(max_message_size=100)
    assert conn.receive_data(binary(b"b" * 60, fin=False)) == []
    assert conn.receive_data(cont(b"b" * 40, fin=False)) == []  # exactly 100 so far
    events = conn.receive_data(cont(b"b", fin=False))
    assert failed_with(conn, events, 1009)


def test_fragmented_text_crossing_max_message_size_is_1009_before_the_end():
    """§7.4.1: the limit is checked as pieces arrive, not when the message is complete."""
    conn = WebSocketConnection(max_message_size=50)
    data = text("a" * 30, fin=False) + cont("a" * 30, fin=False)
    events = conn.receive_data(data)
    assert failed_with(conn, events, 1009)


# -- §5.5.2, §5.5.3 ping and pong ---------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"ping!", bytes(range(125))])
def test_rfc5_5_2_ping_is_answered_with_a_pong_of_the_same_payload(payload):
    """§5.5.2-§5.5.3: a pong in response has the same application data as the ping."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(frame(OP_PING, payload))
    assert isinstance(event, Ping) and event.payload == payload
    assert server_frames(conn) == [(OP_PONG, payload)]


def test_rfc5_5_2_each_ping_gets_its_own_pong_in_order():
    """§5.5.2: every ping is answered, in order."""
    conn = WebSocketConnection()
    conn.receive_data(frame(OP_PING, b"1") + frame(OP_PING, b"2"))
    assert server_frames(conn) == [(OP_PONG, b"1"), (OP_PONG, b"2")]


def test_rfc5_5_3_unsolicited_pong_is_accepted_and_not_answered():
    """§5.5.3: an unsolicited pong is allowed (a heartbeat) and expects no response."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(frame(OP_PONG, b"beat"))
    assert isinstance(event, Pong) and event.payload == b"beat"
    assert conn.out == [] and conn.state == OPEN


def test_rfc5_2_rsv1_without_extension_is_1002():
    """§5.2: RSV1 set with no extension negotiated fails the connection (1002)."""
    conn = WebSocketConnection()
    events = conn.receive_data(frame(OP_PING, b"x", rsv1=True))
    assert failed_with(conn, events, 1002)


def test_rfc7692_6_rsv1_on_control_frame_is_1002_even_with_deflate():
    """RFC 7692 §6: with permessage-deflate, RSV1 is only for data messages; on a control frame, 1002."""
    conn = WebSocketConnection(deflate=object())  # never called: no compressed data frame is sent
    events = conn.receive_data(frame(OP_PING, b"x", rsv1=True))
    assert failed_with(conn, events, 1002)


def test_rfc7692_6_rsv1_on_continuation_frame_is_1002_even_with_deflate():
    """RFC 7692 §6.1: RSV1 is set on the first frame of a message only; on a continuation, 1002."""
    conn = WebSocketConnection(deflate=object())
    events = conn.receive_data(text("a", fin=False) + frame(OP_CONT, b"b", rsv1=True))
    assert failed_with(conn, events, 1002)


def test_rfc5_1_unmasked_client_frame_fails_the_connection():
    """§5.1: a server MUST close the connection on an unmasked frame (1002)."""
    conn = WebSocketConnection()
    events = conn.receive_data(encode_frame(OP_TEXT, b"bare"))
    assert failed_with(conn, events, 1002)


def test_ping_method_queues_a_ping():
    """§5.5.2: the server may send pings."""
    conn = WebSocketConnection()
    conn.ping(b"hb")
    assert server_frames(conn) == [(OP_PING, b"hb")]


def test_send_queues_unmasked_text_and_binary_frames():
    """§5.1, §5.6: server messages are unmasked frames, str as text, bytes as binary."""
    conn = WebSocketConnection()
    conn.send("hi")
    conn.send(b"\x00")
    assert server_frames(conn) == [(OP_TEXT, b"hi"), (OP_BINARY, b"\x00")]
    assert conn.out_bytes == sum(len(b) for b in conn.out)


# -- §5.5.1, §7 the closing handshake -------------------------------------------------

@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_rfc5_5_1_peer_close_is_echoed_with_the_same_code(code):
    """§5.5.1: the endpoint answers a close with a close, typically echoing the status code."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(close(code, b"bye"))
    assert isinstance(event, CloseReceived) and (event.code, event.reason) == (code, "bye")
    assert [c for c, _ in close_frames(conn)] == [code]
    assert conn.state == CLOSED


def test_rfc5_5_1_empty_close_is_echoed_empty():
    """§5.5.1, §7.1.5: a close without status is answered with a close without status (no 1005 on the wire)."""
    conn = WebSocketConnection()
    (event,) = conn.receive_data(close())
    assert isinstance(event, CloseReceived) and event.code is None
    assert server_frames(conn) == [(OP_CLOSE, b"")]
    assert conn.state == CLOSED


def test_rfc7_1_2_server_close_then_peer_close():
    """§7.1.2-§7.1.3: our close → CLOSING; the peer's close completes the handshake → CLOSED, no second close."""
    conn = WebSocketConnection()
    conn.close(1001, "going away")
    assert conn.state == CLOSING
    assert close_frames(conn) == [(1001, b"going away")]
    (event,) = conn.receive_data(close(1001))
    assert isinstance(event, CloseReceived) and event.code == 1001
    assert conn.state == CLOSED
    assert len(close_frames(conn)) == 1


def test_rfc5_5_1_data_after_our_close_is_ignored():
    """§5.5.1: after sending a close the endpoint sends no more data; data received meanwhile is discarded."""
    conn = WebSocketConnection()
    conn.close()
    events = conn.receive_data(text("late") + binary(b"late", fin=False) + cont(b"!"))
    assert events == []
    assert conn.state == CLOSING
    conn.send("not sent")
    assert [op for op, _ in server_frames(conn)] == [OP_CLOSE]


def test_rfc5_5_1_close_only_once():
    """§5.5.1: close() twice queues one close frame."""
    conn = WebSocketConnection()
    conn.close(1000)
    conn.close(1001)
    assert close_frames(conn) == [(1000, b"")]


def test_rfc7_1_4_nothing_is_processed_after_the_peer_close():
    """§7.1.4: the peer's close ends the connection: frames after it are not processed."""
    conn = WebSocketConnection()
    events = conn.receive_data(close(1000) + text("after") + frame(OP_PING, b"x"))
    assert kinds(events) == ["CloseReceived"]
    assert conn.receive_data(text("even later")) == []
    assert [op for op, _ in server_frames(conn)] == [OP_CLOSE]


def test_rfc7_1_7_error_after_our_close_sends_no_second_close():
    """§7.1.7: failing a connection whose close frame is already sent adds no second close frame."""
    conn = WebSocketConnection()
    conn.close(1000)
    events = conn.receive_data(encode_frame(OP_TEXT, b"unmasked"))
    assert isinstance(events[-1], ConnectionFailed) and events[-1].code == 1002
    assert conn.state == CLOSED
    assert close_frames(conn) == [(1000, b"")]


@pytest.mark.parametrize("payload,code", [
    (b"\x03", 1002),                      # one-byte body
    (struct.pack("!H", 1005), 1002),      # never on the wire
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 2000), 1002),
    (b"\x03\xe8\xff", 1007),              # reason not UTF-8
])
def test_rfc7_4_invalid_peer_close_fails_the_connection(payload, code):
    """§5.5.1, §7.4: a bad close body is answered with 1002 (bad code/length) or 1007 (bad reason)."""
    conn = WebSocketConnection()
    events = conn.receive_data(frame(OP_CLOSE, payload))
    assert failed_with(conn, events, code)


# -- event order and laziness -------------------------------------------------------------

def test_message_before_a_bad_frame_in_the_same_bytes_is_yielded_first():
    """receive() is lazy: a good message before a bad frame is yielded before the failure happens."""
    conn = WebSocketConnection()
    events = conn.receive(text("good") + encode_frame(OP_TEXT, b"unmasked"))
    first = next(events)
    assert isinstance(first, Message) and first.data == b"good"
    assert conn.state == OPEN and conn.out == []  # the failure has not happened yet
    second = next(events)
    assert isinstance(second, ConnectionFailed) and second.code == 1002
    assert conn.state == CLOSED
    assert list(events) == []


def test_reply_queued_while_handling_a_message_precedes_the_failure_close():
    """A reply sent while handling the good message goes out before the close frame of the failure."""
    conn = WebSocketConnection()
    for event in conn.receive(text("echo me") + frame(0x3, b"")):
        if isinstance(event, Message):
            conn.send(event.data.decode())
    assert [op for op, _ in server_frames(conn)] == [OP_TEXT, OP_CLOSE]
    assert [c for c, _ in close_frames(conn)] == [1002]


def test_events_come_in_wire_order():
    """Events follow the order of the frames on the wire."""
    conn = WebSocketConnection()
    data = frame(OP_PING, b"a") + text("m1") + frame(OP_PONG, b"b") + binary(b"m2") + close(1000)
    assert kinds(conn.receive_data(data)) == ["Ping", "Message", "Pong", "Message", "CloseReceived"]


def test_receive_after_failure_yields_nothing():
    """After the connection failed, further bytes are ignored."""
    conn = WebSocketConnection()
    conn.receive_data(cont("orphan"))
    assert conn.receive_data(text("x")) == []


# -- property ----------------------------------------------------------------------------

@st.composite
def _conversation(draw):
    """Messages (text or binary), each split into fragments, with pings between fragments."""
    messages = draw(st.lists(st.one_of(
        st.text(max_size=40).map(lambda s: (s.encode(), False)),
        st.binary(max_size=40).map(lambda b: (b, True)),
    ), max_size=6))
    wire = []
    pings = []
    for data, is_binary in messages:
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
        bounds = [0] + cuts + [len(data)]
        parts = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        for i, part in enumerate(parts):
            opcode = (OP_BINARY if is_binary else OP_TEXT) if i == 0 else OP_CONT
            mask = draw(st.binary(min_size=4, max_size=4))
            wire.append(encode_frame(opcode, part, fin=i == len(parts) - 1, mask=mask))
            if draw(st.booleans()):
                payload = draw(st.binary(max_size=10))
                pings.append(payload)
                wire.append(encode_frame(OP_PING, payload, mask=mask))
    return messages, pings, b"".join(wire)


@given(_conversation(), st.data())
@settings(max_examples=200, deadline=None)
def test_property_fragmented_messages_with_pings_in_any_split(conversation, data):
    """§5.4, §5.5.2: valid fragmented messages with interleaved pings, bytes split anywhere:
    every message arrives whole and every ping is answered with its payload."""
    messages, pings, wire = conversation
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    bounds = [0] + cuts + [len(wire)]
    conn = WebSocketConnection()
    events = []
    for a, b in zip(bounds, bounds[1:]):
        events += conn.receive_data(wire[a:b])
    assert [(e.data, e.binary) for e in events if isinstance(e, Message)] == messages
    assert [e.payload for e in events if isinstance(e, Ping)] == pings
    assert server_frames(conn) == [(OP_PONG, p) for p in pings]
    assert conn.state == OPEN


# -- the client side (zmqws.client) --------------------------------------------------------------


def test_rfc5_1_client_side_masks_what_it_sends_and_refuses_masked_server_frames():
    """§5.1/§5.3: a client connection masks every frame with the next key it is given, reads
    unmasked server frames, answers a ping with a masked pong and fails on a masked server
    frame; what it sends is read back by a server-side connection (which requires masks)."""
    keys = [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", b"\x09\x0a\x0b\x0c", b"\x0d\x0e\x0f\x10"]
    conn = ClientConnection(iter(keys))
    events = conn.receive_data(encode_frame(OP_TEXT, b"hi") + encode_frame(OP_PING, b"p"))
    assert [type(e) for e in events] == [Message, Ping] and events[0].data == b"hi"
    conn.send("a")
    conn.send("a")
    assert [frame[2:6] for frame in conn.out] == keys[:3]  # a new key for every frame
    server = WebSocketConnection()
    got = server.receive_data(b"".join(conn.out))
    assert [(type(e), getattr(e, "payload", None) or getattr(e, "data", None)) for e in got] == [
        (Pong, b"p"), (Message, b"a"), (Message, b"a")]
    conn.discard_output()
    failed = conn.receive_data(frame(OP_TEXT, b"masked"))
    assert [(type(e), e.code) for e in failed] == [(ConnectionFailed, 1002)]
    assert conn.state == CLOSED
    closes = WebSocketConnection().receive_data(b"".join(conn.out))
    assert [(type(e), e.code) for e in closes] == [(CloseReceived, 1002)]
