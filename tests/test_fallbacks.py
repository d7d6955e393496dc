"""The HTTP fallbacks against a real Gateway on 127.0.0.1: Server-Sent Events (``/events``),
long-polling (``/poll``) and the plain HTTP around them (static files, CORS, limits).

Clients are the standard library's ``http.client`` where a request has an end,
and raw sockets where the test needs control over the bytes or the reading
(an endless event stream, a reader that never reads, hundreds of parked
requests).  Event streams are decoded by :class:`SSEParser`, a small parser
written from the WHATWG HTML "Server-sent events" section (9.2.6, interpreting
an event stream), so that the test checks what a browser would see.
"""

from __future__ import annotations

import base64
import codecs
import http.client
import json
import os
import re
import socket
import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import pytest

from zmqws.protocol.frames import OP_TEXT

from conftest import RawWebSocket, wait_until

pytestmark = pytest.mark.timeout(60)

KiB = 1 << 10


# -- a spec-conforming event stream parser --------------------------------------------------------


class SSEEvent:
    """A dispatched event: ``type`` ("message" unless ``event:`` said otherwise), ``data``, ``last_event_id``."""

    __slots__ = ("type", "data", "last_event_id")

    def __init__(self, type_: str, data: str, last_event_id: str) -> None:
        self.type = type_
        self.data = data
        self.last_event_id = last_event_id

    def __repr__(self) -> str:
        return f"SSEEvent({self.type!r}, {self.data!r}, id={self.last_event_id!r})"


_EOL = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """WHATWG HTML §9.2.6 "Interpreting an event stream", fed with bytes.

    UTF-8 decoding (a leading BOM dropped), lines ended by CRLF, LF or CR,
    comment lines, ``field: value`` with one leading space removed, the
    ``event``/``data``/``id``/``retry`` fields, and dispatch on an empty line:
    an event whose data buffer is empty is not dispatched, and the data's last
    LF is removed.  An event not ended by an empty line is never dispatched.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""
        self._started = False
        self._data = ""
        self._event = ""
        self._id = ""  # the last event ID buffer: it persists across events
        self.retry: Optional[int] = None
        self.comments: List[str] = []
        self.lines = 0

    def feed(self, chunk: bytes) -> List[SSEEvent]:
        text = self._text + self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        events: List[SSEEvent] = []
        pos = 0
        while True:
            m = _EOL.search(text, pos)
            if m is None:
                break
            if m.group() == "\r" and m.end() == len(text):
                break  # maybe the first half of a CRLF: wait for the next chunk
            self._line(text[pos:m.start()], events)
            pos = m.end()
        self._text = text[pos:]
        return events

    def _line(self, line: str, events: List[SSEEvent]) -> None:
        self.lines += 1
        if line == "":
            self._dispatch(events)
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data += value + "\n"
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)
        # any other field is ignored

    def _dispatch(self, events: List[SSEEvent]) -> None:
        if self._data == "":
            self._event = ""
            return
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        events.append(SSEEvent(self._event or "message", data, self._id))
        self._data = ""
        self._event = ""


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


# -- raw-socket HTTP helpers -------------------------------------------------------------------------


def _parse_head(head: bytes) -> Tuple[int, Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = (lines[0] + " ").split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


def read_response(sock: socket.socket, timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP response with a Content-Length from a raw socket."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            status, headers = _parse_head(head)
            length = int(headers.get("content-length", "0"))
            if len(rest) >= length:
                return status, headers, rest[:length]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete response within {timeout} s: {data[:200]!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the end of the response: {data[:200]!r}")
        data += chunk


class SSEClient:
    """An event stream on a raw socket: the request by hand, the head parsed, the body fed to SSEParser."""

    def __init__(self, port: int, target: str, headers: Sequence[Tuple[str, str]] = (),
                 rcvbuf: Optional[int] = None, method: str = "GET") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so that the advertised window is small too
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.parser = SSEParser()
        self.events: Deque[SSEEvent] = deque()
        self.raw = bytearray()  # the body as received
        self.eof = False
        self.status: Optional[int] = None
        self.headers: Dict[str, str] = {}
        self._buf = b""

    def read_head(self, timeout: float = 5.0) -> Tuple[int, Dict[str, str]]:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before the response head: {self._buf!r}")
            self._buf += chunk
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        self.status, self.headers = _parse_head(head)
        self._feed(rest)
        return self.status, self.headers

    def _feed(self, data: bytes) -> None:
        self.raw += data
        self.events.extend(self.parser.feed(data))

    def pump(self, timeout: float) -> bool:
        """One recv (up to ``timeout`` s); False once the server has closed the stream."""
        if self.eof:
            return False
        self.sock.settimeout(max(0.001, timeout))
        try:
            chunk = self.sock.recv(262144)
        except socket.timeout:
            return True
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self._feed(chunk)
        return True

    def next_event(self, timeout: float = 5.0) -> SSEEvent:
        deadline = time.monotonic() + timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no event within {timeout} s")
            if not self.pump(remaining):
                raise AssertionError("the server closed the event stream")
        return self.events.popleft()

    def take(self, n: int, timeout: float = 5.0) -> List[SSEEvent]:
        deadline = time.monotonic() + timeout
        return [self.next_event(max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def nothing_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.events:
            if not self.pump(deadline - time.monotonic()):
                break
        return not self.events

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


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


@pytest.fixture
def http_conn():
    """``http_conn(port)`` → an http.client.HTTPConnection (5 s timeout); closed at teardown."""
    made: List[http.client.HTTPConnection] = []

    def make(port: int, timeout: float = 5.0) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def get(conn: http.client.HTTPConnection, target: str, headers: Optional[Dict[str, str]] = None,
        method: str = "GET") -> Tuple[http.client.HTTPResponse, bytes, float]:
    """One request on ``conn``: (response, body, seconds until the whole response was read)."""
    start = time.monotonic()
    conn.request(method, target, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response, body, time.monotonic() - start


def ids_of(docs) -> List[int]:
    return [d["id"] for d in docs]


# -- Server-Sent Events ---------------------------------------------------------------------------------


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
    (b"data: looks like a field\n: looks like a comment\n\nid: 99", "data: looks like a field\n: looks like a comment\n\nid: 99"),
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


# -- long-polling ----------------------------------------------------------------------------------------


def test_poll_returns_what_was_missed_at_once_in_bounded_batches(make_gateway, http_conn):
    # subscribe_all: the gateway vouches for every id from the start (no gap notice)
    gw = make_gateway(None, poll_max_messages=10, poll_timeout=0.5, subscribe_all=True)
    base = gw.last_id
    for i in range(25):
        gw.publish(f"m{i}", topic="p.x")
    wait_until(lambda: gw.last_id == base + 25)
    conn = http_conn(gw.port)
    since, got = base, []
    for expected in (10, 10, 5):
        response, body, elapsed = get(conn, f"/poll?since={since}")
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("application/json")
        assert response.getheader("Cache-Control") == "no-cache"
        docs = json.loads(body)
        assert len(docs) == expected and elapsed < 0.4
        got += docs
        since = docs[-1]["id"]
    assert [d["data"] for d in got] == [f"m{i}" for i in range(25)]
    assert ids_of(got) == list(range(base + 1, base + 26))
    assert all(d["topic"] == "p.x" for d in got)
    # nothing after the last one: held, then [] at the timeout
    response, body, elapsed = get(conn, f"/poll?since={since}")
    assert json.loads(body) == [] and elapsed >= 0.45


def test_poll_bounded_by_bytes(make_gateway, http_conn):
    gw = make_gateway(None, poll_max_bytes=2500, subscribe_all=True)
    base = gw.last_id
    for i in range(10):
        gw.publish("x" * 1000, topic="big")
    wait_until(lambda: gw.last_id == base + 10)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={base}")
    assert len(body) <= 2500 and ids_of(json.loads(body)) == [base + 1, base + 2]
    # one message larger than the bound still goes (alone)
    gw.publish("y" * 5000, topic="big")
    response, body, _ = get(conn, f"/poll?since={base + 10}")
    assert [d["data"] for d in json.loads(body)] == ["y" * 5000]


def test_poll_is_held_until_a_message_comes(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=10, subscribe_all=True)
    gw.publish("before", topic="h.x")
    wait_until(lambda: gw.last_id == 2)
    conn = http_conn(gw.port, timeout=15)
    timer = threading.Timer(0.3, lambda: gw.publish("now", topic="h.x"))
    timer.start()
    try:
        response, body, elapsed = get(conn, "/poll?topic=h.&since=2")
    finally:
        timer.cancel()
    docs = json.loads(body)
    assert response.status == 200 and [d["data"] for d in docs] == ["now"]
    assert 0.25 <= elapsed < 2.0, f"answered after {elapsed:.2f} s (timeout 10 s)"
    # a first poll (no since) is held too, and gets only what comes after it
    timer = threading.Timer(0.2, lambda: gw.publish("later", topic="h.y"))
    timer.start()
    try:
        response, body, elapsed = get(conn, "/poll?topic=h.")
    finally:
        timer.cancel()
    assert [d["data"] for d in json.loads(body)] == ["later"] and elapsed < 2.0


def test_poll_times_out_with_an_empty_array(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=0.5)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, "/poll?topic=nothing.")
    assert response.status == 200 and json.loads(body) == []
    assert 0.45 <= elapsed < 3.0, elapsed
    assert gw.stats.polls_held == 1
    wait_until(lambda: len(gw.hub.router) == 0, message="the timed-out poll to leave its route")


def test_poll_keep_alive_many_polls_on_one_connection(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=0.3, subscribe_all=True)
    conn = http_conn(gw.port)
    conn.connect()
    sock = conn.sock
    since = gw.last_id
    for round_ in range(6):
        if round_ % 3 == 2:  # a held poll that times out, on the same connection
            response, body, _ = get(conn, f"/poll?since={since}")
            assert json.loads(body) == []
        else:
            gw.publish(f"r{round_}", topic="k")
            response, body, _ = get(conn, f"/poll?since={since}")
            docs = json.loads(body)
            assert [d["data"] for d in docs] == [f"r{round_}"]
            since = docs[-1]["id"]
        assert response.status == 200
        assert response.getheader("Connection") == "keep-alive"
        assert conn.sock is sock, "http.client had to reconnect"
    response, body, _ = get(conn, "/zmqws.js")  # other requests share it too
    assert response.status == 200 and conn.sock is sock
    assert gw.stats.connections == 1
    assert gw.stats.http_requests == 7
    # Connection: close is honoured
    response, body, _ = get(conn, "/poll?since=0", headers={"Connection": "close"})
    assert response.getheader("Connection") == "close"
    assert response.will_close


def test_many_parked_polls_cost_no_thread_and_one_publish_answers_all(make_gateway):
    n = 200
    gw = make_gateway(None, poll_timeout=30)
    threads_before = threading.active_count()
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            socks.append(sock)
            sock.sendall(b"GET /poll?topic=many.&format=json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: gw.stats.polls_held == n, message=f"{n} parked polls")
        assert threading.active_count() == threads_before
        time.sleep(0.2)
        for sock in socks[:5]:  # nothing is answered before a message
            sock.settimeout(0.01)
            with pytest.raises(socket.timeout):
                sock.recv(1)
        gw.publish(b"for everyone", topic="many.x")
        start = time.monotonic()
        for sock in socks:
            status, headers, body = read_response(sock)
            assert status == 200
            assert [d["data"] for d in json.loads(body)] == ["for everyone"]
        assert time.monotonic() - start < 5
        assert threading.active_count() == threads_before
        wait_until(lambda: len(gw.hub.router) == 0, message="the answered polls to leave their route")
    finally:
        for sock in socks:
            sock.close()


def test_parked_poll_closed_by_the_client_is_forgotten(make_gateway):
    gw = make_gateway(None, poll_timeout=30, linger=0)
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"GET /poll?topic=gone. HTTP/1.1\r\nHost: localhost\r\n\r\n")
    wait_until(lambda: gw.stats.polls_held == 3)
    assert gw.subscriptions() == [b"gone."]
    for sock in socks:
        sock.close()
    wait_until(lambda: len(gw.hub.router) == 0 and gw.subscriptions() == [], message="the polls to be forgotten")


def test_poll_gap_notice_when_since_is_older_than_the_history(make_gateway, http_conn):
    gw = make_gateway(None, history=5, subscribe_all=True)  # id 1: the subscription's marker
    for i in range(20):  # ids 2..21
        gw.publish(f"m{i}", topic="g")
    wait_until(lambda: gw.last_id == 21)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, "/poll?since=3")
    docs = json.loads(body)
    assert docs[0] == {"gap": [4, 16]}  # the history keeps ids 17..21
    assert ids_of(docs[1:]) == [17, 18, 19, 20, 21]
    assert [d["data"] for d in docs[1:]] == [f"m{i}" for i in range(15, 20)]
    assert elapsed < 1
    assert gw.stats.gaps == 1
    # within the history: no notice
    response, body, _ = get(conn, "/poll?since=18")
    assert ids_of(json.loads(body)) == [19, 20, 21]
    assert gw.stats.gaps == 1


def test_poll_resume_after_upstream_blind_spell_gets_a_gap_notice(make_gateway, http_conn):
    """A poll that resumes after the gateway dropped the topic's upstream subscription (the
    linger expired) is told, as a WebSocket client would be, that messages may be lost."""
    gw = make_gateway(None, linger=0, poll_timeout=0.5)
    conn = http_conn(gw.port)
    timer = threading.Timer(0.2, lambda: gw.publish("seen", topic="b.x"))
    timer.start()
    try:
        response, body, _ = get(conn, "/poll?topic=b.")
    finally:
        timer.cancel()
    seen = json.loads(body)[-1]["id"]
    # No poll now: nobody wants b. and it was dropped upstream at once (linger 0); what the
    # publishers sent meanwhile never reached the gateway.  The client comes back:
    response, body, _ = get(conn, f"/poll?topic=b.&since={seen}")
    docs = json.loads(body)
    assert docs and "gap" in docs[0], f"no gap notice: {docs}"
    first, last = docs[0]["gap"]
    assert first == seen + 1 and last > seen


def test_poll_client_on_a_busy_stream_keeps_its_upstream_subscription(make_gateway, make_pub, http_conn):
    """A real PUB publishes steadily; a poll client's polls are answered at once from the history
    (there is always something new).  Its topic must stay subscribed upstream for as long as it
    polls (each poll renews the linger): every message arrives, and nothing goes missing silently."""
    pub = make_pub()
    gw = make_gateway(pub.endpoint, linger=0.6, poll_max_messages=5, poll_timeout=2)
    conn = http_conn(gw.port)
    stop = threading.Event()
    sent = [0]

    def publisher():
        while not stop.is_set():
            pub.send_multipart([b"busy.x", b"%d" % sent[0]])
            sent[0] += 1
            time.sleep(0.004)

    # The first poll parks and subscribes; probes go out until the subscription reaches the PUB
    # (ZeroMQ's slow joiner) and one of them answers it.
    def probe():
        for _ in range(300):
            if gw.stats.zmq_messages:
                return
            pub.send_multipart([b"busy.probe", b"-1"])
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        response, body, _ = get(conn, "/poll?topic=busy.")
    finally:
        prober.join()
    since = json.loads(body)[-1]["id"]
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    got: List[int] = []
    gaps = []
    try:
        end = time.monotonic() + 2.0  # more than three lingers
        while time.monotonic() < end:
            time.sleep(0.05)  # between polls, new messages pile up in the history
            response, body, _ = get(conn, f"/poll?topic=busy.&since={since}")
            for doc in json.loads(body):
                if "gap" in doc:
                    gaps.append(doc["gap"])
                elif doc["data"] != "-1":
                    got.append(int(doc["data"]))
                    since = doc["id"]
    finally:
        stop.set()
        thread.join(5)
    assert got, "nothing arrived"
    assert got == list(range(got[0], got[0] + len(got))) or gaps, \
        f"messages lost without a gap notice: {sorted(set(range(got[0], got[-1])) - set(got))[:20]}"
    assert gaps == [] and got == list(range(got[0], got[0] + len(got)))
    assert gw.subscriptions() == [b"busy."]


def test_poll_topic_filter(make_gateway, http_conn):
    gw = make_gateway(None, subscribe_all=True)
    base = gw.last_id
    for topic in ("a.1", "b.1", "a.2", "ab", "c"):
        gw.publish(topic.upper(), topic=topic)
    wait_until(lambda: gw.last_id == base + 5)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={base}&topic=a.&topic=c")
    assert [d["data"] for d in json.loads(body)] == ["A.1", "A.2", "C"]


@pytest.mark.parametrize("query", ["since=abc", "since=-1", "since=1.5", "format=xml"])
def test_poll_bad_query_is_400(make_gateway, http_conn, query):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, f"/poll?{query}")
    assert response.status == 400 and elapsed < 1
    assert gw.stats.polls_held == 0


# -- HTTP details ------------------------------------------------------------------------------------------


def test_client_script_and_page(make_gateway, http_conn):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, "/zmqws.js")
    assert response.status == 200
    assert response.getheader("Content-Type").split(";")[0] in ("text/javascript", "application/javascript")
    assert b"ZmqWs" in body
    response, body, _ = get(conn, "/")
    assert response.status == 200
    assert response.getheader("Content-Type").split(";")[0] == "text/html"
    assert body.lstrip().lower().startswith(b"<!doctype html")
    response, body, _ = get(conn, "/index.html")
    assert response.status == 200


@pytest.mark.parametrize("path", ["/nope", "/zmqws.jsx", "/events/", "/poll/x", "/static/", "/index.htm"])
def test_unknown_path_is_404(make_gateway, http_exchange, path):
    gw = make_gateway(None)
    status, _, _ = http_exchange(gw.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(make_gateway, http_conn, method):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, _, _ = get(conn, "/poll", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    assert gw.stats.polls_held == 0


def _cors_gateway(make_gateway, origins=("http://a.example",)):
    gw = make_gateway(None, cors_origins=list(origins), poll_timeout=0.3, subscribe_all=True)
    gw.publish("hello", topic="c")
    wait_until(lambda: gw.last_id == 2)
    return gw


def _acao(port: int, path: str, origin: str) -> Optional[str]:
    """The Access-Control-Allow-Origin of a response to GET ``path`` with that Origin."""
    if path.startswith("/events"):
        stream = SSEClient(port, path, [("Origin", origin)])
        try:
            status, headers = stream.read_head()
        finally:
            stream.close()
        assert status == 200
        return headers.get("access-control-allow-origin")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        response, _, _ = get(conn, path, headers={"Origin": origin})
    finally:
        conn.close()
    assert response.status == 200
    return response.getheader("Access-Control-Allow-Origin")


@pytest.mark.parametrize("path", ["/poll?since=0", "/events?since=0", "/zmqws.js"])
def test_cors_for_the_configured_origin_only(make_gateway, path):
    gw = _cors_gateway(make_gateway)
    assert _acao(gw.port, path, "http://a.example") == "http://a.example"
    assert _acao(gw.port, path, "http://b.example") is None
    assert _acao(gw.port, path, "http://a.example.evil") is None
    plain = make_gateway(None, poll_timeout=0.3)
    plain.publish("x", topic="c")
    wait_until(lambda: plain.last_id == 1)
    assert _acao(plain.port, path, "http://a.example") is None


def test_cors_on_a_parked_poll(make_gateway, http_conn):
    gw = _cors_gateway(make_gateway)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={gw.last_id}", headers={"Origin": "http://a.example"})
    assert json.loads(body) == []  # answered at the timeout, still with the header
    assert response.getheader("Access-Control-Allow-Origin") == "http://a.example"


def test_cors_preflight(make_gateway, http_conn):
    gw = _cors_gateway(make_gateway)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, "/poll", method="OPTIONS",
                            headers={"Origin": "http://a.example", "Access-Control-Request-Method": "GET",
                                     "Access-Control-Request-Headers": "last-event-id"})
    assert response.status == 204 and body == b""
    assert response.getheader("Access-Control-Allow-Origin") == "http://a.example"
    assert "GET" in response.getheader("Access-Control-Allow-Methods")
    assert "last-event-id" in response.getheader("Access-Control-Allow-Headers").lower()
    # another origin, or no CORS configured: no preflight approval
    conn = http_conn(gw.port)
    response, _, _ = get(conn, "/poll", method="OPTIONS", headers={"Origin": "http://b.example"})
    assert response.status == 405 and response.getheader("Access-Control-Allow-Origin") is None
    plain = make_gateway(None)
    conn = http_conn(plain.port)
    response, _, _ = get(conn, "/poll", method="OPTIONS", headers={"Origin": "http://a.example"})
    assert response.status == 405 and response.getheader("Access-Control-Allow-Origin") is None


TRAVERSALS = [
    "/../zmqws/gateway.py",
    "/%2e%2e/etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../etc/passwd",
    "/./../gateway.py",
    "/..",
    "//etc/passwd",
    "/%2F%2Fetc%2Fpasswd",
    "/..%5c..%5cetc%5cpasswd",
    "/zmqws.js%00.png",
    "http://x/../../etc/passwd",
    "/../__init__.py",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_404(make_gateway, http_exchange, tmp_path, target):
    (tmp_path / "ok.txt").write_text("fine")
    gw = make_gateway(None, static_dir=str(tmp_path))
    status, _, body = http_exchange(gw.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status in (400, 404), status
    assert b"root:" not in body and b"import" not in body and b"fine" not in body


def test_symlinks_out_of_the_static_dir_are_404(make_gateway, http_exchange, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (static / "inside.txt").write_text("public")
    os.symlink(secret, static / "link.txt")
    os.symlink(tmp_path, static / "up")
    os.symlink("/etc/passwd", static / "passwd.txt")
    os.symlink(static / "inside.txt", static / "alias.txt")  # a link that stays inside is fine
    gw = make_gateway(None, static_dir=str(static))
    for path in ("/link.txt", "/up/secret.txt", "/passwd.txt"):
        status, _, body = http_exchange(gw.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert status == 404, path
        assert b"secret" not in body and b"root:" not in body
    assert http_exchange(gw.port, b"GET /alias.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")[2] == b"public"


def test_static_dir_files_with_their_types(make_gateway, http_conn, tmp_path):
    files = {
        "style.css": (b"body{}", "text/css"),
        "data.json": (b'{"a":1}', "application/json"),
        "page.html": (b"<!doctype html><p>hi", "text/html"),
        "sub/app.js": (b"var x = 1;", "text/javascript"),
        "image.png": (b"\x89PNG\r\n\x1a\n", "image/png"),
        "blob.unknownext": (b"\x00\x01", "application/octet-stream"),
    }
    for name, (content, _) in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    gw = make_gateway(None, static_dir=str(tmp_path))
    conn = http_conn(gw.port)
    for name, (content, content_type) in files.items():
        response, body, _ = get(conn, "/" + name)
        assert response.status == 200, name
        got = response.getheader("Content-Type").split(";")[0]
        assert got == content_type or (name.endswith(".js") and got == "application/javascript"), (name, got)
        assert body == content
    response, body, _ = get(conn, "/sub/app.js", method="HEAD")
    assert response.status == 200 and body == b"" and response.getheader("Content-Length") == "10"
    # the package's files are still there behind the user's folder
    response, body, _ = get(conn, "/zmqws.js")
    assert response.status == 200 and b"ZmqWs" in body


def test_static_file_over_the_size_limit_is_404(make_gateway, http_exchange, tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * 2000)
    gw = make_gateway(None, static_dir=str(tmp_path), max_static_size=1000)
    assert http_exchange(gw.port, b"GET /big.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 404


@pytest.mark.parametrize("limit", [None, 1024])
def test_request_head_over_the_limit_is_431(make_gateway, http_exchange, limit):
    options = {} if limit is None else {"max_header_size": limit}
    gw = make_gateway(None, **options)
    size = (limit or 8192) + 100
    request = b"GET /poll HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    status, _, _ = http_exchange(gw.port, request)
    assert status == 431
    many = b"GET /poll HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"
    assert http_exchange(gw.port, many)[0] == 431
    assert gw.stats.polls_held == 0

