"""Server-Sent Events clients (zmqws/transports/sse.py) against a real Gateway on 127.0.0.1:
``GET /events``, event ids, resume with ``Last-Event-ID``/``?since=``, heartbeats, HEAD, slow readers.

Event streams are read on raw sockets (:class:`conftest.SSEClient`) and decoded
by :class:`conftest.SSEParser`, a small parser written from the WHATWG HTML
"Server-sent events" section (9.2.6, interpreting an event stream), so that the
tests check what a browser would see; the parser itself is tested first.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import List, Sequence, Tuple

import pytest

from zmqws.protocol.frames import OP_TEXT

from conftest import RawWebSocket, SSEClient, SSEParser, get, ids_of, wait_until

pytestmark = pytest.mark.timeout(60)

KiB = 1 << 10


# -- the event stream parser -----------------------------------------------------------------------


def test_sse_parser_follows_the_spec():
    """The parser itself, on the examples and corner cases of the spec."""
    p = SSEParser()
    stream = (b"\xef\xbb\xbf: a comment\n"
              b"data: YHOO\ndata: +2\ndata: 10\n\n"
              b"id: 7\r\nevent: add\r\ndata:no space\r\n\r\n"
              b"data:  two spaces\rdata\r\r"
              b"id: 8\ndata\n\n"          # a data field with no colon: an empty line of data
              b"event: lost\n\n"           # no data: nothing dispatched
              b"retry: 1500\nretry: x\nid: a\0b\ndata: z\n\n"
              b"data: incomplete")
    events = []
    for i in range(len(stream)):  # one byte at a time: CRLF split across chunks
        events += p.feed(stream[i:i + 1])
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("message", "YHOO\n+2\n10", ""),
        ("add", "no space", "7"),
        ("message", " two spaces\n", "7"),
        ("message", "", "8"),
        ("message", "z", "8"),   # an id with NUL is ignored
    ]
    assert p.comments == [" a comment"]
    assert p.retry == 1500


# -- Server-Sent Events ----------------------------------------------------------------------------


@pytest.fixture
def sse_client():
    """``sse_client(port, target, headers=(), rcvbuf=None)`` → an SSEClient; closed at teardown."""
    made: List[SSEClient] = []

    def make(port: int, target: str, headers: Sequence[Tuple[str, str]] = (), rcvbuf=None, method="GET"):
        client = SSEClient(port, target, headers, rcvbuf=rcvbuf, method=method)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_sse_response_head_with_http_client(make_gateway, http_conn):
    """What http.client sees: 200, text/event-stream, no-cache, and no length (the body never ends)."""
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    conn.request("GET", "/events?topic=t.&format=json", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").split(";")[0].strip() == "text/event-stream"
    assert response.getheader("Cache-Control") == "no-cache"
    assert response.getheader("Content-Length") is None
    assert response.getheader("Transfer-Encoding") is None
    wait_until(lambda: gw.stats.sse_connections == 1)


def test_sse_events_ids_json_and_topic_filter(make_gateway, pub, sse_client, wait_subscribed):
    """A real PUB socket → /events?topic=t.&format=json: one event per matching message, id = message id."""
    gw = make_gateway(pub.endpoint, linger=30)
    wait_subscribed(pub, gw)  # the SUB gets everything from here (the probe's subscription lingers)
    stream = sse_client(gw.port, "/events?topic=t.&format=json")
    status, headers = stream.read_head()
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    pub.send_multipart([b"t.a", b"one"])
    pub.send_multipart([b"u.b", b"not for this client"])
    pub.send_multipart([b"t.c", "zwei \u00fc".encode()])
    pub.send(b"t.single part")            # single part: the prefix matches its payload
    pub.send(b"tx not matched")
    pub.send_multipart([b"t.", b"last"])
    events = stream.take(4)
    docs = [json.loads(e.data) for e in events]
    assert [(d["topic"], d["data"]) for d in docs] == [
        ("t.a", "one"), ("t.c", "zwei \u00fc"), ("", "t.single part"), ("t.", "last")]
    assert all(e.type == "message" for e in events)
    assert [e.last_event_id for e in events] == [str(d["id"]) for d in docs]
    assert ids_of(docs) == sorted(ids_of(docs)) and len(set(ids_of(docs))) == 4
    assert stream.parser.retry is not None  # the reconnection delay comes first
    assert stream.nothing_within(0.3)


@pytest.mark.parametrize("payload, expected", [
    (b"one\ntwo\nthree", "one\ntwo\nthree"),
    (b"crlf\r\nand cr\ronly", "crlf\nand cr\nonly"),   # every line end becomes LF (the spec's reassembly)
    (b"trailing newline\n", "trailing newline\n"),
    (b"\n\nleading blank lines", "\n\nleading blank lines"),
    (b"", ""),
    (b" leading space", " leading space"),
    (b"data: looks like a field\n: looks like a comment\n\nid: 99",
     "data: looks like a field\n: looks like a comment\n\nid: 99"),
    ("\u00e9t\u00e9 \u2603\n\U0001f600".encode(), "\u00e9t\u00e9 \u2603\n\U0001f600"),
])
def test_sse_multiline_payloads_reassemble(make_gateway, sse_client, payload, expected):
    gw = make_gateway(None)
    stream = sse_client(gw.port, "/events?format=payload")
    assert stream.read_head()[0] == 200
    gw.publish(payload, topic="t")
    gw.publish(b"after", topic="t")
    first, second = stream.take(2)
    assert (first.type, first.data) == ("message", expected)
    assert (second.type, second.data) == ("message", "after")
    assert int(second.last_event_id) == int(first.last_event_id) + 1
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
    assert bytes(stream.raw).count(b"\ndata: ") + bytes(stream.raw).startswith(b"data: ") == lines + 1


def test_sse_binary_payloads(make_gateway, sse_client):
    """Not UTF-8: ``event: binary`` with base64 data (payload format); ``"binary": true`` (json format)."""
    gw = make_gateway(None)
    plain = sse_client(gw.port, "/events?format=payload")
    as_json = sse_client(gw.port, "/events?format=json")
    assert plain.read_head()[0] == 200 and as_json.read_head()[0] == 200
    blob = bytes(range(256)) + b"\n\r\x00\xff"
    gw.publish(blob, topic="bin")
    gw.publish(b"text", topic="bin")
    event, text = plain.take(2)
    assert event.type == "binary"
    assert base64.b64decode(event.data, validate=True) == blob
    assert (text.type, text.data) == ("message", "text")
    doc = json.loads(as_json.next_event().data)
    assert doc["binary"] is True and doc["topic"] == "bin"
    assert base64.b64decode(doc["data"]) == blob
    assert json.loads(as_json.next_event().data)["data"] == "text"


@pytest.mark.parametrize("how", ["last-event-id", "since"])
def test_sse_resume_replays_then_goes_live_without_duplicates(make_gateway, sse_client, how):
    gw = make_gateway(None)
    first = sse_client(gw.port, "/events?topic=r.&format=json")
    assert first.read_head()[0] == 200
    for i in range(10):
        gw.publish(f"m{i}", topic="r.x")
    events = first.take(10)
    seen = int(events[3].last_event_id)  # as if it had dropped after the fourth
    first.close()
    gw.publish("while away", topic="r.x")
    if how == "since":
        again = sse_client(gw.port, f"/events?topic=r.&format=json&since={seen}")
    else:
        again = sse_client(gw.port, "/events?topic=r.&format=json", headers=[("Last-Event-ID", str(seen))])
    assert again.read_head()[0] == 200
    for i in range(3):
        gw.publish(f"live{i}", topic="r.x")
    replayed = again.take(6 + 1 + 3)
    docs = [json.loads(e.data) for e in replayed]
    assert [d["data"] for d in docs] == [f"m{i}" for i in range(4, 10)] + ["while away"] + [
        f"live{i}" for i in range(3)]
    assert ids_of(docs) == sorted(set(ids_of(docs)))
    assert all(d["id"] > seen for d in docs)
    assert [e.last_event_id for e in replayed] == [str(d["id"]) for d in docs]
    assert again.nothing_within(0.3)


def test_sse_resume_while_messages_flow(make_gateway, sse_client):
    """Reconnecting with Last-Event-ID while a publisher runs: no gap, no duplicate, in order."""
    gw = make_gateway(None)
    stop = threading.Event()
    sent = []

    def publisher():
        i = 0
        while not stop.is_set():
            gw.publish(json.dumps({"seq": i}), topic="flow")
            sent.append(i)
            i += 1
            if i % 20 == 0:
                time.sleep(0.002)

    stream = sse_client(gw.port, "/events?format=json")
    assert stream.read_head()[0] == 200
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    got: List[int] = []
    last_id = None
    try:
        for _round in range(5):
            for event in stream.take(100):
                doc = json.loads(event.data)
                got.append(json.loads(doc["data"])["seq"])
                last_id = event.last_event_id
            stream.close()  # drop it while messages keep coming
            time.sleep(0.02)
            stream = sse_client(gw.port, "/events?format=json", headers=[("Last-Event-ID", last_id)])
            assert stream.read_head()[0] == 200
    finally:
        stop.set()
        thread.join(5)
    assert got == list(range(len(got))), "a message was lost or duplicated across reconnects"


def test_sse_heartbeat_on_an_idle_stream(make_gateway, sse_client):
    gw = make_gateway(None, sse_heartbeat=0.3)
    stream = sse_client(gw.port, "/events")
    assert stream.read_head()[0] == 200
    deadline = time.monotonic() + 5
    while len(stream.parser.comments) < 2:
        assert time.monotonic() < deadline, f"heartbeats: {stream.parser.comments}"
        assert stream.pump(0.5), "the server closed the stream"
    assert stream.parser.comments[:2] == [" heartbeat", " heartbeat"]
    assert not stream.events  # comments dispatch nothing
    assert b"\n: heartbeat\n\n" in bytes(stream.raw)


def test_sse_no_heartbeat_when_disabled(make_gateway, sse_client):
    gw = make_gateway(None, sse_heartbeat=0)
    stream = sse_client(gw.port, "/events")
    assert stream.read_head()[0] == 200
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        stream.pump(deadline - time.monotonic())
    assert stream.parser.comments == []


def test_sse_topic_filtering_and_gap_event(make_gateway, sse_client):
    gw = make_gateway(None, history=5)
    watcher = sse_client(gw.port, "/events?topic=a.")  # a. is subscribed from here: id 1 is its marker
    assert watcher.read_head()[0] == 200
    for i in range(20):  # ids 2..21
        gw.publish(f"old{i}", topic="a.x" if i % 2 else "b.x")
    assert [e.data for e in watcher.take(10)] == [f"old{i}" for i in range(1, 20, 2)]
    stream = sse_client(gw.port, "/events?topic=a.&format=json&since=2")
    assert stream.read_head()[0] == 200
    gap = stream.next_event()
    assert gap.type == "gap" and gap.last_event_id == ""
    assert json.loads(gap.data) == {"gap": [3, 16]}  # the history keeps ids 17..21 only
    gw.publish("new b", topic="b.y")
    gw.publish("new a", topic="a.y")
    docs = [json.loads(e.data) for e in stream.take(3)]
    # of ids 17..21, a.x are the odd i (ids 17, 19, 21 = i 15, 17, 19)
    assert [d["data"] for d in docs] == ["old15", "old17", "old19"]
    assert ids_of(docs) == [17, 19, 21]
    assert json.loads(stream.next_event().data)["data"] == "new a"
    assert stream.nothing_within(0.2)


def test_sse_bad_query_is_400(make_gateway, http_exchange):
    gw = make_gateway(None)
    assert http_exchange(gw.port, b"GET /events?since=abc HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 400
    assert http_exchange(gw.port, b"GET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: x1\r\n\r\n")[0] == 400
    assert http_exchange(gw.port, b"GET /events?format=xml HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 400
    assert gw.stats.sse_connections == 0


def test_sse_head_is_headers_only(make_gateway, http_exchange):
    gw = make_gateway(None)
    status, headers, body = http_exchange(gw.port, b"HEAD /events?format=json HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == b""
    assert gw.stats.sse_connections == 0  # no stream was started


def test_sse_head_on_a_kept_alive_connection(make_gateway, http_conn):
    """The HEAD answer says ``Connection: keep-alive``: the connection must then serve the next request."""
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, "/events", method="HEAD")
    assert response.status == 200 and body == b""
    sock = conn.sock
    if response.getheader("Connection") == "keep-alive":
        assert not response.will_close
        response, body, _ = get(conn, "/zmqws.js")
        assert response.status == 200 and b"ZmqWs" in body
        assert conn.sock is sock
    else:
        assert response.will_close


def test_sse_slow_reader_is_disconnected_others_get_everything(make_gateway, sse_client):
    """A reader that never reads overflows max_queue and is dropped; a normal SSE reader and a
    WebSocket client on the same messages get every one, in order."""
    max_queue = 64 * KiB
    gw = make_gateway(None, max_queue=max_queue, close_timeout=5.0)
    slow = sse_client(gw.port, "/events?format=payload", rcvbuf=4096)  # never reads
    good = sse_client(gw.port, "/events?format=payload")
    assert good.read_head()[0] == 200
    ws = RawWebSocket(gw.port)
    try:
        ws.handshake("/?format=payload")
        wait_until(lambda: gw.stats.sse_connections == 2 and gw.clients == 1, message="three clients")

        progress = {"sse": 0, "ws": 0}
        errors: List[str] = []

        def read_ws():
            expected = 0
            try:
                while True:
                    _fin, opcode, payload = ws.recv_frame(timeout=20)
                    if payload == b"END":
                        return
                    assert opcode == OP_TEXT
                    seq = int(payload[:8])
                    if seq != expected:
                        errors.append(f"ws: expected {expected}, got {seq}")
                        return
                    expected += 1
                    progress["ws"] = expected
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(f"ws: {exc!r}")

        def read_sse():
            expected = 0
            try:
                while True:
                    event = good.next_event(timeout=20)
                    if event.data == "END":
                        return
                    seq = int(event.data[:8])
                    if seq != expected:
                        errors.append(f"sse: expected {expected}, got {seq}")
                        return
                    expected += 1
                    progress["sse"] = expected
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(f"sse: {exc!r}")

        readers = [threading.Thread(target=read_ws, daemon=True), threading.Thread(target=read_sse, daemon=True)]
        for reader in readers:
            reader.start()
        message = "%08d " + "x" * (KiB - 9)
        sent, window = 0, 30  # flow control for the good readers only
        deadline = time.monotonic() + 30
        while sent < 300 or not gw.stats.slow_closed:
            assert time.monotonic() < deadline and sent < 50_000, "the slow reader never overflowed"
            assert not errors, errors
            while min(progress.values()) < sent - window:
                assert not errors, errors
                assert time.monotonic() < deadline, f"good readers stalled at {progress} of {sent}"
                time.sleep(0.0005)
            for _ in range(10):
                gw.publish(message % sent, topic="s")
                sent += 1
        gw.publish("END", topic="s")
        for reader in readers:
            reader.join(25)
        assert not errors, errors
        assert progress == {"sse": sent, "ws": sent}
        assert gw.stats.slow_closed == 1
        assert gw.stats.drops > 0
        assert gw.stats.sse_connections == 2
        # The slow reader got a contiguous prefix of the stream, then the server closed it.
        status, _ = slow.read_head(timeout=5)
        assert status == 200
        deadline = time.monotonic() + 10
        while slow.pump(max(0.01, deadline - time.monotonic())):
            assert time.monotonic() < deadline, "the slow reader was not disconnected"
        seqs = [int(e.data[:8]) for e in slow.events]
        assert seqs == list(range(len(seqs))) and len(seqs) < sent
    finally:
        ws.close()
