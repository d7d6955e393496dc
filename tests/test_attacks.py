"""Every attack tried on the gateway, one test per attack (issue: hostile input).

Each test plays the attacker against a real gateway on 127.0.0.1 and asserts
the specified answer (an HTTP status, a close code, a Socket.IO
CONNECT_ERROR) and that nothing else was harmed: the bound held, the loop
kept answering, other clients kept their messages.  Each one fails on the
code before the fix.  The numbers follow the findings in
``docs/reliability.md`` ("Hostile input").
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import zmq
from websockets.sync.client import connect as sync_connect

from conftest import RawWebSocket, http_exchange, request_status, response_head, upgrade_request, wait_until
from zmqws.auth import token_authenticator
from zmqws.gateway import Gateway
from zmqws.protocol.frames import OP_BINARY, OP_CLOSE, OP_TEXT
from zmqws.proxy import Sequencer
from zmqws.rights import Rights, TopicRefused, parse_token_file, resolve_topics


KiB = 1024


@pytest.fixture
def ws_client_sync():
    """``ws_client_sync(port, path)``: a connected ``websockets`` sync client (closed at the end)
    whose ``recv()`` waits 5 s at most."""
    with contextlib.ExitStack() as stack:
        def make(port: int, path: str = "/"):
            ws = stack.enter_context(sync_connect(f"ws://127.0.0.1:{port}{path}", compression=None,
                                             open_timeout=5, close_timeout=2, proxy=None))
            recv = ws.recv
            ws.recv = lambda timeout=5: recv(timeout)
            return ws

        yield make


def sio_ws(raw_ws, port: int, query: str = ""):
    """A Socket.IO client over a raw WebSocket, past the Engine.IO open packet."""
    ws = raw_ws(port, path=f"/socket.io/?EIO=4&transport=websocket{query}")
    assert ws.recv_frame()[2].startswith(b"0{")
    return ws


def sio_packet(ws) -> str:
    """The next Socket.IO packet (an Engine.IO message, ``4...``), pings answered."""
    while True:
        _, _, data = ws.recv_frame()
        if data == b"2":
            ws.send_frame(OP_TEXT, b"3")
            continue
        assert data[:1] == b"4", data
        return data[1:].decode()

# -- 1. Socket.IO topic rights bypass --------------------------------------------------------


@pytest.mark.parametrize("auth, hook", [
    ({"topics": ["secret."]}, lambda request: ["prices."]),   # asks outside its rights
    ({}, lambda request: []),                                  # a hook that allows no topic at all
    ({"topics": ["prices.", "secret."]}, lambda request: ["prices."]),  # one allowed, one not
])
def test_1_socketio_client_cannot_widen_its_topics(auth, hook, make_gateway, raw_ws):
    gw = make_gateway(None, authenticate=hook)
    ws = sio_ws(raw_ws, gw.port)
    ws.send_frame(OP_TEXT, b"40" + json.dumps(auth).encode())
    answer = sio_packet(ws)
    assert answer.startswith("4"), answer  # CONNECT_ERROR, never a CONNECT
    assert "allowed" in json.loads(answer[1:])["message"]
    for topic in ("secret.x", "prices.y", ""):
        gw.publish("leak", topic=topic or None)
    ws.sock.settimeout(0.5)
    with pytest.raises(OSError):  # nothing at all reaches the refused socket
        ws.recv_frame(timeout=0.5)
    assert gw.stats.topics_refused == 1 and not gw.subscriptions()


def test_1_socketio_client_within_its_rights_gets_only_them(make_gateway, raw_ws):
    gw = make_gateway(None, authenticate=lambda request: ["prices."])
    ws = sio_ws(raw_ws, gw.port)
    ws.send_frame(OP_TEXT, b"40")  # no topics: everything it may read, nothing more
    assert sio_packet(ws).startswith("0{")
    gw.publish("hidden", topic="secret.x")
    gw.publish("shown", topic="prices.y")
    assert json.loads(sio_packet(ws)[1:])[1] == "shown"


# -- 2. Pipelined HTTP requests queue responses without bound ------------------------------

def _http_client_of(gateway, predicate=lambda client: True):
    """The gateway's client objects (loop-thread data read from the test: a snapshot)."""
    return [c for c in gateway.connection_list() if predicate(c)]


def _read_responses(sock: socket.socket, count: int, timeout: float = 10.0) -> List[bytes]:
    """Read ``count`` complete responses (each has a Content-Length) or until EOF; their heads."""
    data = b""
    heads: List[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while len(heads) < count and time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
            if len(rest) >= length:
                heads.append(head)
                data = rest[length:]
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return heads


def test_2_pipelined_requests_never_read_stay_bounded(make_gateway):
    max_queue = 256 << 10
    gateway = make_gateway(None, max_queue=max_queue)
    one = len(http_exchange(gateway.port, b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n")[2]) + 512
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gateway.port))
        sock.sendall(b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2000)  # ~70 KB, never read
        wait_until(lambda: gateway.stats.pipeline_paused >= 1, message="reading paused")
        time.sleep(0.3)
        queued = max(c.session.out_bytes for c in _http_client_of(gateway))
        assert queued <= max_queue + one, queued
        status, _, _ = http_exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 200


def test_2_pipelining_client_gets_every_answer_then_the_cap_closes(make_gateway):
    gateway = make_gateway(None, max_queue=64 << 10, max_requests_per_connection=60)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n" * 80)
        heads = _read_responses(sock, 80)
        assert len(heads) == 60  # the 60th said "Connection: close", then the server closed
        assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
        assert b"Connection: close" in heads[-1] and b"Connection: keep-alive" in heads[-2]
        sock.settimeout(5)
        assert sock.recv(1) == b""
    assert gateway.stats.pipeline_paused >= 1 and gateway.stats.requests_capped == 1


# -- 3. Resume replay past --max-queue -------------------------------------------------------


class EventStream:
    """A Server-Sent Events client on a raw socket (``rcvbuf``: a small window, for a
    client that does not read); events come out as (type, id, data)."""

    def __init__(self, port: int, target: str, headers: Tuple[Tuple[str, str], ...] = (),
                 rcvbuf: Optional[int] = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.buf = b""
        self.head = b""

    def _more(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no event in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(262144)
        if not chunk:
            raise EOFError("the server closed the stream")
        self.buf += chunk

    def read_head(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._more(deadline)
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return self.head

    def next_event(self, timeout: float = 5.0) -> Tuple[str, Optional[str], str]:
        """The next event with data (fields ``retry:`` and comments are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" not in self.buf:
                self._more(deadline)
            block, _, self.buf = self.buf.partition(b"\n\n")
            fields: Dict[str, List[str]] = {}
            for line in block.decode("utf-8").split("\n"):
                name, _, value = line.partition(": ")
                fields.setdefault(name, []).append(value)
            if "data" in fields:
                return (fields.get("event", ["message"])[0], fields.get("id", [None])[0],
                        "\n".join(fields["data"]))

    def close(self) -> None:
        self.sock.close()


def queue_peak(gw: Gateway) -> Dict[str, int]:
    """The most bytes any streaming client had queued, sampled on the loop after the fan-out
    and the replays of every turn (before the flush)."""
    peak = {"bytes": 0}

    def sample() -> None:
        for client in gw.connection_list():
            if client.transport is not None and client.session.out_bytes > peak["bytes"]:
                peak["bytes"] = client.session.out_bytes

    gw.call_soon_threadsafe(lambda: gw.loop.after_turn.insert(1, sample))
    return peak


def walk_ids(docs: List[Dict[str, Any]], first: int, last: int) -> List[List[int]]:
    """Check that messages and gap notices account for every id from ``first`` to ``last``
    exactly once and in order; returns the gaps."""
    expected, gaps = first, []
    for doc in docs:
        if "gap" in doc:
            low, high = doc["gap"]
            assert low == expected and high >= low, (doc, expected)
            gaps.append([low, high])
            expected = high + 1
        else:
            assert doc["id"] == expected, f"expected id {expected}, got {doc['id']}"
            expected += 1
    assert expected == last + 1, f"the stream ends at {expected - 1}, not {last}"
    return gaps


def read_docs_until(next_doc, last: int, timeout: float = 20.0) -> List[Dict[str, Any]]:
    """JSON documents from ``next_doc(timeout)`` until the one with id ``last``."""
    deadline = time.monotonic() + timeout
    docs: List[Dict[str, Any]] = []
    while not docs or docs[-1].get("id") != last:
        docs.append(next_doc(max(0.01, deadline - time.monotonic())))
    return docs


def resuming_reader(stack: contextlib.ExitStack, raw_ws, port: int, transport: str):
    """A client that resumes with ``since=0`` (``Last-Event-ID: 0`` for SSE) in the json format
    and does not read until ``next_doc(timeout)`` reads its next JSON document."""
    if transport == "websocket":
        ws = raw_ws(port, rcvbuf=4096, path="/?format=json&since=0")
        return lambda timeout: next_json_frame(ws, timeout)
    if transport == "websocket-deflate":  # stops reading once 4 messages wait (flow control)
        client = stack.enter_context(sync_connect(
            f"ws://127.0.0.1:{port}/?format=json&since=0", compression="deflate",
            proxy=None, ping_interval=None, max_queue=4))
        assert client.protocol.extensions, "permessage-deflate not negotiated"
        return lambda timeout: json.loads(client.recv(timeout))
    stream = EventStream(port, "/events?format=json", (("Last-Event-ID", "0"),), rcvbuf=4096)
    stack.callback(stream.close)
    assert stream.read_head().startswith(b"HTTP/1.1 200 ")
    return lambda timeout: json.loads(stream.next_event(timeout)[2])


@pytest.mark.parametrize("transport", ["websocket", "websocket-deflate", "sse"])
def test_3_resume_replay_is_paced_by_max_queue(make_gateway, raw_ws, transport):
    max_queue, size, stored = 256 * KiB, 4 * KiB, 1100  # a 4.3 MiB history (2 MiB compressed)
    gw = make_gateway(None, history=5000, max_queue=max_queue, subscribe_all=True)
    for _ in range(stored):
        gw.publish(os.urandom(size // 2).hex())
    wait_until(lambda: gw.last_id == stored + 1)  # id 1: the subscription's marker
    peak = queue_peak(gw)
    with contextlib.ExitStack() as stack:
        next_doc = resuming_reader(stack, raw_ws, gw.port, transport)
        time.sleep(0.5)  # the client does not read; live messages go into the history meanwhile
        for i in range(50):
            gw.publish(b"live %d" % i)
        time.sleep(0.3)
        assert 0 < peak["bytes"] <= max_queue + size + 256, f"{peak['bytes']} bytes queued"
        docs = read_docs_until(next_doc, stored + 51, timeout=10)
        for i in range(50):  # and while it reads the rest of the replay
            gw.publish(b"later %d" % i)
        docs += read_docs_until(next_doc, stored + 101)
    gaps = walk_ids(docs, 1, stored + 101)
    assert all(high < 2 for _low, high in gaps), f"stored messages reported lost: {gaps}"
    assert peak["bytes"] <= max_queue + size + 256
    assert gw.stats.slow_closed == 0 and gw.stats.drops == 0


def socketio_ws_connect(raw_ws, port: int, auth: Dict[str, Any], rcvbuf: Optional[int] = None):
    """A Socket.IO client over a raw WebSocket: the Engine.IO open, then CONNECT with ``auth``;
    (the socket, the CONNECT reply's data)."""
    ws = raw_ws(port, rcvbuf=rcvbuf, path="/socket.io/?EIO=4&transport=websocket")
    assert ws.recv_frame()[2].startswith(b"0{")
    ws.send_frame(OP_TEXT, b"40" + json.dumps(auth).encode())
    reply = ws.recv_frame()[2]
    assert reply.startswith(b"40{"), reply
    return ws, json.loads(reply[2:])


def test_3_socketio_recovery_past_max_queue_is_refused(make_gateway, raw_ws):
    max_queue, size = 256 * KiB, 4 * KiB
    gw = make_gateway(None, history=5000, max_queue=max_queue, linger=60)
    ws, first = socketio_ws_connect(raw_ws, gw.port, {})
    offset = gw.last_id
    ws.close()  # the transport drops: the session may be recovered for a while
    wait_until(lambda: not gw.sio.sessions)
    for i in range(1100):  # 4.3 MiB it missed
        gw.publish(b"%06d " % i + b"x" * (size - 7))
    wait_until(lambda: gw.stats.zmq_messages == 1100)
    peak = queue_peak(gw)
    ws, again = socketio_ws_connect(raw_ws, gw.port, {"pid": first["pid"], "offset": str(offset)},
                                    rcvbuf=4096)
    assert again["pid"] != first["pid"], "recovered: the whole replay was queued at once"
    time.sleep(0.3)
    assert peak["bytes"] <= max_queue
    gw.publish(b"live")  # the new session goes on from now
    assert ws.recv_frame()[2] == b'42["message","live","%d"]' % gw.last_id


# -- 4. Engine.IO sessions without bound -----------------------------------------------------


def sio_handshakes(port: int, count: int) -> List[int]:
    """``count`` polling handshakes on one keep-alive connection, until one is refused (the
    refusal closes the connection); the statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    statuses = []
    try:
        for _ in range(count):
            conn.request("GET", "/socket.io/?EIO=4&transport=polling")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.status != 200:
                break
    finally:
        conn.close()
    return statuses


def metric(port: int, name: str) -> int:
    status, _, body = http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    return int(re.search(rf"^{name} (\d+)$", body.decode(), re.M).group(1))


def test_4_polling_sessions_count_as_connections(make_gateway):
    gw = make_gateway(None, max_connections=20)
    statuses = sio_handshakes(gw.port, 100)
    # the connection itself and 19 sessions make 20 connections: the 20th session is refused
    assert statuses == [200] * 19 + [503]
    assert len(gw.sio.sessions) == 19 and metric(gw.port, "zmqws_refused_total") == 1
    wait_until(lambda: not gw.connection_list())
    assert sio_handshakes(gw.port, 1) == [503]  # the 20th connection would be the 21st
    assert len(gw.sio.sessions) == 19 and gw.stats.refused == 2


def test_4_polling_sessions_count_per_address(make_gateway):
    gw = make_gateway(None, max_connections_per_address=3)
    assert sio_handshakes(gw.port, 10) == [200, 200, 503]
    assert len(gw.sio.sessions) == 2 and gw.stats.refused == 1


def test_4_refused_sessions_cost_no_log_line_each(make_gateway, caplog):
    """At the limit, a flood of handshakes is refused (503) in a bounded number of log lines."""
    caplog.set_level(logging.INFO, logger="zmqws")
    gw = make_gateway(None, max_connections_per_address=3)
    assert sio_handshakes(gw.port, 10) == [200, 200, 503]
    for _ in range(50):
        assert sio_handshakes(gw.port, 1) == [503]
    wait_until(lambda: gw.stats.refused >= 51)
    lines = [r for r in caplog.records if "refusing a socket.io session" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


def test_4_a_session_that_never_polls_is_closed_after_the_handshake_timeout(make_gateway):
    gw = make_gateway(None, handshake_timeout=0.5)
    idle, active = (json.loads(http_exchange(gw.port, b"GET /socket.io/?EIO=4&transport=polling "
                                             b"HTTP/1.1\r\nHost: localhost\r\n\r\n")[2][1:])["sid"]
                    for _ in range(2))
    query = f"/socket.io/?EIO=4&transport=polling&sid={active}"
    post = f"POST {query} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n40"
    assert http_exchange(gw.port, post.encode())[2] == b"ok"
    poll = f"GET {query} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert http_exchange(gw.port, poll.encode())[2].startswith(b"40{")  # connected
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as held:
        held.sendall(poll.encode())  # the active session polls again (and waits)
        wait_until(lambda: gw.sio.sessions[active].poll_client is not None)
        wait_until(lambda: idle not in gw.sio.sessions, timeout=3, message="the idle session's end")
        status, _, body = http_exchange(gw.port, poll.replace(active, idle).encode())
        assert status == 400 and json.loads(body)["code"] == 1  # Session ID unknown
        assert active in gw.sio.sessions and gw.stats.handshake_timeouts >= 1
        gw.publish("still served")
        assert b"still served" in held.recv(4096)


# -- 5. Topics per client without bound, quadratic bookkeeping -------------------------------


def test_5_too_many_or_too_long_topics_are_refused_on_every_transport(make_gateway, raw_ws):
    gw = make_gateway(None, max_topics=8, max_topic_length=16)
    many = "&".join(f"topic=t{i}." for i in range(9))
    for path in (f"/?{many}", f"/?topic={'x' * 17}"):
        assert request_status(gw.port, upgrade_request(path)) == 400
        assert request_status(gw.port, f"GET /events{path[1:]} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()) == 400
        assert request_status(gw.port, f"GET /poll{path[1:]} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()) == 400
    ws = sio_ws(raw_ws, gw.port)
    ws.send_frame(OP_TEXT, b"40" + json.dumps({"topics": [f"t{i}." for i in range(9)]}).encode())
    assert sio_packet(ws).startswith("4")
    assert not gw.subscriptions()


def test_5_a_huge_subscribe_costs_little_and_subscribes_nothing(make_gateway, raw_ws):
    gw = make_gateway(None)
    ws = sio_ws(raw_ws, gw.port)
    ws.send_frame(OP_TEXT, b'40{"topics":["a."]}')
    assert sio_packet(ws).startswith("0{")
    huge = json.dumps(["subscribe", [f"t{i}." for i in range(20_000)]])
    ws.send_frame(OP_TEXT, b"421" + huge.encode())
    started = time.monotonic()
    status, _, body = http_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200 and time.monotonic() - started < 0.5
    ack = sio_packet(ws)
    assert ack.startswith("31"), ack
    assert "more than 256 topics" in json.loads(ack[2:])[0]["error"]
    assert gw.subscriptions() == [b"a."]


def test_5_distinct_upstream_prefixes_are_capped(make_gateway):
    gw = make_gateway(None, max_upstream_prefixes=3)
    socks = []
    for i in range(3):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        sock.sendall(upgrade_request(f"/?topic=p{i}."))
        assert response_head(sock)[0] == 101  # held open: its prefix stays subscribed
        socks.append(sock)
    wait_until(lambda: len(gw.subscriptions()) == 3)
    assert request_status(gw.port, upgrade_request("/?topic=p3.")) == 503
    assert request_status(gw.port, upgrade_request("/?topic=p0.")) == 101  # an existing prefix still joins
    for sock in socks:
        sock.close()


# -- 6. One exception in the send path wedges routes -----------------------------------------


def test_6_a_payload_that_is_not_utf8_in_text_mode_wedges_no_route(make_gateway, raw_ws):
    gw = make_gateway(None, payload_mode="text")
    # The json route first: encoding it is what raised, and the routes after it never sent again.
    clients = {fmt: raw_ws(gw.port, path=f"/?format={fmt}") for fmt in ("json", "payload", "topic")}
    stream = EventStream(gw.port, "/events")
    try:
        assert stream.read_head().startswith(b"HTTP/1.1 200 ")
        wait_until(lambda: len(gw.hub.subscribers) == 4)
        bad = b"\xff\xfe not UTF-8"
        gw.publish(bad, topic="t")
        gw.publish("good 1", topic="t")
        wait_until(lambda: gw.stats.zmq_messages == 2)
        late = raw_ws(gw.port, path="/?format=json")  # joins afterwards
        wait_until(lambda: len(gw.hub.subscribers) == 5)
        gw.publish("good 2", topic="t")
        # What cannot be text goes out as binary, in every envelope; everything after it too.
        json_frames = [clients["json"].recv_frame()[1:] for _ in range(3)]
        assert [op for op, _ in json_frames] == [OP_TEXT] * 3
        docs = [json.loads(body) for _, body in json_frames]
        first = docs[0]["id"]
        assert docs[0] == {"id": first, "topic": "t", "data": base64.b64encode(bad).decode(), "binary": True}
        assert [d["data"] for d in docs[1:]] == ["good 1", "good 2"]
        assert [clients["payload"].recv_frame()[1:] for _ in range(3)] == [
            (OP_BINARY, bad), (OP_TEXT, b"good 1"), (OP_TEXT, b"good 2")]
        assert [clients["topic"].recv_frame()[1:] for _ in range(3)] == [
            (OP_BINARY, b"t " + bad), (OP_TEXT, b"t good 1"), (OP_TEXT, b"t good 2")]
        assert [stream.next_event() for _ in range(3)] == [
            ("binary", str(first), base64.b64encode(bad).decode()),
            ("message", str(first + 1), "good 1"), ("message", str(first + 2), "good 2")]
        assert json.loads(late.recv_frame()[2])["data"] == "good 2"
    finally:
        stream.close()
    assert gw.stats.send_errors == 0


# -- 7. accept() at the file-descriptor limit -------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthz(port: int) -> int:
    """The status of ``GET /healthz``; 0 when the connection is refused or reset (at the limit,
    the gateway takes one peer with its reserve descriptor and refuses it)."""
    try:
        return http_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")[0]
    except OSError:
        return 0


def test_7_descriptor_limit_neither_spins_nor_floods_the_log(spawn):
    low_limit = ("import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
                 "runpy.run_module('zmqws', run_name='__main__', alter_sys=True)")
    process = spawn(sys.executable, "-c", low_limit, "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")).group(1))
    sockets = []
    try:
        for _ in range(100):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        before = _cpu_seconds(process.popen.pid)
        time.sleep(2)
        assert _cpu_seconds(process.popen.pid) - before < 0.5
        assert process.lines["stderr"].qsize() < 20
        for sock in sockets[:50]:
            sock.close()
        # served again once the gateway has seen those 50 go (their descriptors freed)
        wait_until(lambda: _healthz(port) == 200, timeout=5, message="/healthz 200 again")
    finally:
        for sock in sockets:
            sock.close()


class _FullListener:
    """A listening socket whose accept() fails with EMFILE while the gateway holds its reserve
    descriptor: what a process at its descriptor limit sees."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.real = gateway.listener.sock
        self.full = True

    def accept(self):
        if self.full and self.gateway.listener.reserve_fd is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_7_accept_at_the_limit_refuses_and_rests(make_gateway):
    gateway = make_gateway(None)
    listener = gateway.listener.sock = _FullListener(gateway)
    turns = gateway.loop.turns
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            assert sock.recv(12) == b"HTTP/1.1 503"  # refused at once, before any request
    assert gateway.loop.turns - turns < 200  # no busy loop on the ready listener
    assert gateway.stats.refused == 3 and gateway.stats.accept_errors == 3
    listener.full = False
    wait_until(lambda: gateway.listener.reserve_fd is not None, message="the reserve descriptor back")
    assert _healthz(gateway.port) == 200


# -- 8. A bad Socket.IO recovery offset ------------------------------------------------------


def assert_no_traceback(caplog, worst: int = logging.INFO) -> None:
    """Bad input is logged in one line each, at ``worst`` at most: no traceback."""
    assert not [r for r in caplog.records if r.levelno > worst or r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


def test_8_a_bad_recovery_offset_leaks_nothing(make_gateway, raw_ws, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    gw = make_gateway(None, linger=0)
    first = sio_ws(raw_ws, gw.port)
    first.send_frame(OP_TEXT, b'40{"topics":["a."]}')
    pid = json.loads(sio_packet(first)[1:])["pid"]
    first.send_frame(OP_TEXT, b"41")  # leaves: its state is kept for recovery
    wait_until(lambda: not gw.subscriptions())
    for offset in ("\u00b2", "1" * 5000, "-1", " 1", "1" * 21):
        ws = sio_ws(raw_ws, gw.port)
        ws.send_frame(OP_TEXT, b"40" + json.dumps({"pid": pid, "offset": offset, "topics": ["b."]}).encode())
        connect = json.loads(sio_packet(ws)[1:])
        assert connect["pid"] != pid  # a fresh session, not a recovery
        assert gw.subscriptions() == [b"b."]
        ws.send_frame(OP_TEXT, b"41")
        wait_until(lambda: not gw.subscriptions(), message="the upstream subscription's end")
    assert_no_traceback(caplog)


def test_8_an_error_in_a_packet_closes_only_its_session(make_gateway, raw_ws, caplog, monkeypatch):
    """Whatever fails in a packet's work (here: the resume, made to fail) ends that session in
    one log line and leaves nothing behind; the others are served."""
    caplog.set_level(logging.INFO, logger="zmqws")
    gw = make_gateway(None, linger=0)
    other = sio_ws(raw_ws, gw.port)
    other.send_frame(OP_TEXT, b'40{"topics":["ok."]}')
    assert sio_packet(other).startswith("0{")
    first = sio_ws(raw_ws, gw.port)
    first.send_frame(OP_TEXT, b'40{"topics":["a."]}')
    pid = json.loads(sio_packet(first)[1:])["pid"]
    first.send_frame(OP_TEXT, b"41")
    wait_until(lambda: gw.subscriptions() == [b"ok."])

    def failing(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.hub, "missed", failing)
    ws = sio_ws(raw_ws, gw.port)
    ws.send_frame(OP_TEXT, b"40" + json.dumps({"pid": pid, "offset": "1"}).encode())
    assert ws.recv_frame()[2] == b"1"  # Engine.IO close, then the WebSocket closes
    assert ws.recv_frame()[1] == OP_CLOSE
    assert gw.subscriptions() == [b"ok."] and len(gw.sio.sessions) == 2
    gw.publish("served", topic="ok.")
    assert json.loads(sio_packet(other)[1:])[1] == "served"
    assert_no_traceback(caplog, logging.WARNING)  # not bad input: a warning, in one line
    assert "RuntimeError('boom')" in caplog.text


# -- 9. Malformed input and tracebacks -------------------------------------------------------

# not ASCII digits ("²" passes str.isdigit() and fails int()), past int()'s 4300 digits, past 20
BAD_IDS = ["%C2%B2", "1" * 4301, "1" * 21, "-1", "0x10", ""]


class Bystander:
    """A gateway with a well-behaved WebSocket client on topic ``ok.``."""

    def __init__(self, gw, ws) -> None:
        self.gw = gw
        self.ws = ws

    def check(self) -> None:
        """The client still gets its messages."""
        self.gw.publish("still here", topic="ok.")
        assert self.ws.recv() == "still here"


@pytest.fixture
def bystander_ws(make_gateway, ws_client_sync):
    gw = make_gateway(None)
    ws = ws_client_sync(gw.port, "/?topic=ok.")
    wait_until(lambda: gw.subscriptions() == [b"ok."])
    return Bystander(gw, ws)


def test_9_malformed_since_is_a_400_on_every_transport(bystander_ws, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    port = bystander_ws.gw.port
    for since in BAD_IDS:
        assert request_status(port, upgrade_request(f"/?since={since}")) == 400, since
        for path in ("/events", "/poll"):
            request = f"GET {path}?since={since} HTTP/1.1\r\nHost: localhost\r\n\r\n"
            assert request_status(port, request.encode()) == 400, (path, since)
            header = since.replace("%C2%B2", "\u00b2").encode("latin-1")  # the byte 0xB2: "²" in Latin-1
            request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ".encode() + header + b"\r\n\r\n"
            assert request_status(port, request) == 400, (path, "Last-Event-ID", since)
    bystander_ws.check()
    assert_no_traceback(caplog)


@pytest.mark.parametrize("path, message", [
    ("/?topic=ok.", b'{"subscribe":' * 10_000),             # a control message
    ("/?topic=ok.&format=json", b"[" * 10_000),             # a JSON-envelope send
    ("/?topic=ok.&format=json", b'{"topic":"\\ud800","data":1}'),  # a topic with a lone surrogate
], ids=["deep-control", "deep-envelope", "surrogate-topic"])
def test_9_deep_json_and_lone_surrogates_close_1008(path, message, bystander_ws, raw_ws, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    ws = raw_ws(bystander_ws.gw.port, path=path)
    ws.send_frame(OP_TEXT, message)
    _fin, opcode, data = ws.recv_frame()
    assert opcode == OP_CLOSE and int.from_bytes(data[:2], "big") == 1008, data
    bystander_ws.check()
    assert_no_traceback(caplog)


def test_9_socketio_junk_gets_error_answers(bystander_ws, raw_ws, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    ws = sio_ws(raw_ws, bystander_ws.gw.port)
    ws.send_frame(OP_TEXT, b'40{"topics":["\\ud800"]}')
    assert sio_packet(ws).startswith("4{")  # CONNECT_ERROR
    ws.send_frame(OP_TEXT, b'40{"topics":["s."],"pid":"x","offset":"\\u00b2"}')
    assert sio_packet(ws).startswith("0{")
    for event in (b'["x.\\ud800",1]', b'["x.","\\ud800"]'):  # lone surrogates: not forwarded
        ws.send_frame(OP_TEXT, b"421" + event)
        assert json.loads(sio_packet(ws)[2:]) == [{"ok": False, "error": "event name and data must be UTF-8"}]
    for event in (b'["subscribe","\\ud800"]', b'["subscribe",{"a":1}]', b'["subscribe",[null,2]]',
                  b'["subscribe"]', b'["unsubscribe",["\\udfff"]]', b'["subscribe",[["a."]]]'):
        ws.send_frame(OP_TEXT, b"422" + event)
        ack = sio_packet(ws)
        assert ack.startswith("32[") and "error" in json.loads(ack[2:])[0], (event, ack)
    assert bystander_ws.gw.subscriptions() == [b"ok.", b"s."]
    ws.send_frame(OP_TEXT, b'423["subscribe","s2."]')  # the session still works
    assert json.loads(sio_packet(ws)[2:]) == [{"topics": ["s.", "s2."]}]
    for packet in (b"42" + b"1" * 5000 + b'["x"]', b"45" + b"1" * 5000 + b'-["x"]'):  # past int()
        junk = sio_ws(raw_ws, bystander_ws.gw.port)
        junk.send_frame(OP_TEXT, b'40{"topics":["j."]}')
        assert sio_packet(junk).startswith("0{")
        junk.send_frame(OP_TEXT, packet)
        assert junk.recv_frame()[2] == b"1"  # the session is closed
    assert len(bystander_ws.gw.sio.sessions) == 1
    bystander_ws.check()
    assert_no_traceback(caplog)


# -- 10. Writing upstream outside one's rights ----------------------------------------------


def test_10_write_rights_hold_for_websocket_and_socketio(make_gateway, pull, raw_ws, ws_client_sync):
    sock, endpoint = pull
    rights = Rights.of(read=["prices."], write=["orders."])
    gw = make_gateway(None, push_endpoint=endpoint, authenticate=lambda request: rights)
    ws = ws_client_sync(gw.port, "/?format=json")
    ws.send(json.dumps({"topic": "secret.x", "data": 1}))
    assert json.loads(ws.recv()) == {"error": "topic not allowed for writing", "topic": "secret.x"}
    ws.send("no topic: goes on upstream_topic 'ws', which it may not write either")
    assert json.loads(ws.recv())["error"] == "topic not allowed for writing"
    sio = sio_ws(raw_ws, gw.port)
    sio.send_frame(OP_TEXT, b"40")
    assert sio_packet(sio).startswith("0{")
    sio.send_frame(OP_TEXT, b'427["secret.y",1]')
    assert json.loads(sio_packet(sio)[2:]) == [{"ok": False, "error": "topic not allowed for writing"}]
    ws.send(json.dumps({"topic": "orders.new", "data": 2}))
    sio.send_frame(OP_TEXT, b'428["orders.sio",3]')
    assert json.loads(sio_packet(sio)[2:]) == [{"ok": True}]
    got = sorted(tuple(sock.recv_multipart()[::2]) for _ in range(2))
    assert got == [(b"orders.new", b"2"), (b"orders.sio", b"3")]
    assert sock.poll(200) == 0  # nothing else went upstream
    assert gw.stats.writes_refused == 3


def test_10_a_plain_prefix_hook_restricts_writing_too(make_gateway, pull, ws_client_sync):
    sock, endpoint = pull
    gw = make_gateway(None, push_endpoint=endpoint, authenticate=lambda request: ["prices."])
    ws = ws_client_sync(gw.port, "/?format=json")
    ws.send(json.dumps({"topic": "orders.x", "data": 1}))
    assert json.loads(ws.recv())["error"] == "topic not allowed for writing"
    ws.send(json.dumps({"topic": "prices.mine", "data": 1}))
    assert sock.recv_multipart()[0] == b"prices.mine"


# -- 11. /metrics with --token ----------------------------------------------------------------

def test_11_metrics_needs_the_token(make_gateway):
    from zmqws.cli import build_parser, config_from_args

    def metrics(port: int, auth: str = "", query: str = "") -> tuple:
        request = f"GET /metrics{query} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n".encode()
        return http_exchange(port, request)[:2]

    clients_token = make_gateway(None, authenticate=token_authenticator("client-secret"))
    status, headers = metrics(clients_token.port)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert metrics(clients_token.port, "Authorization: Bearer client-secret\r\n")[0] == 200
    own_token = make_gateway(None, authenticate=token_authenticator("client-secret"),
                             metrics_token="scrape-secret")
    assert metrics(own_token.port, "Authorization: Bearer client-secret\r\n")[0] == 401
    assert metrics(own_token.port, query="?token=scrape-secret")[0] == 200
    assert own_token.stats.forbidden == 1
    # The command line: --token protects /metrics too.
    args = build_parser().parse_args(["--demo", "--port", "0", "--token", "t0ken"])
    cli = Gateway.from_config(config_from_args(args).replace(first_id=1, close_timeout=1.0)).start()
    try:
        assert metrics(cli.port)[0] == 401
        assert metrics(cli.port, "Authorization: Bearer t0ken\r\n")[0] == 200
    finally:
        cli.stop(timeout=1.0)


# -- 12. DNS rebinding and cross-site WebSocket ----------------------------------------------

def _status(port: int, path: str, host: str, method: str = "GET", extra: str = "", body: bytes = b"") -> int:
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body:
        request += f"Content-Length: {len(body)}\r\n"
    return http_exchange(port, request.encode() + b"\r\n" + body)[0]


def test_12_loopback_gateway_answers_its_own_names_only(make_gateway):
    gateway = make_gateway(None)
    port = gateway.port
    for path in ("/", "/healthz", "/poll?since=0", "/events", "/socket.io/?EIO=4&transport=polling"):
        assert _status(port, path, "evil.example") == 403, path
        assert _status(port, path, f"evil.example:{port}") == 403, path
    assert http_exchange(port, upgrade_request(host=f"evil.example:{port}"))[0] == 403
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST",
                 "127.0.0.1:8443"):  # a local proxy's port
        assert _status(port, "/healthz", host) == 200, host
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(upgrade_request(host=f"localhost:{port}"))
        assert sock.recv(12) == b"HTTP/1.1 101"
    assert gateway.stats.host_refused == 11
    named = make_gateway(None, allow_hosts=["app.example", "other.example:8443"])
    assert _status(named.port, "/healthz", "app.example:443") == 200
    assert _status(named.port, "/healthz", "other.example:8443") == 200
    assert _status(named.port, "/healthz", "other.example") == 403
    assert _status(named.port, "/healthz", f"localhost:{named.port}") == 200
    assert _status(named.port, "/healthz", "evil.example") == 403


def test_12_engineio_requests_with_a_sid_keep_the_origin_check(make_gateway):
    gateway = make_gateway(None, allow_origins=["http://good.example"])
    port = gateway.port
    good = "Origin: http://good.example\r\n"
    status, _, body = http_exchange(port, f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                                          f"Host: localhost\r\n{good}\r\n".encode())
    assert status == 200
    sid = json.loads(body[1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    evil = "Origin: http://evil.example\r\n"
    assert _status(port, path, "localhost", "POST", evil, b"40") == 403
    assert _status(port, path, "localhost", "GET", evil) == 403
    assert _status(port, path, "localhost", "POST", good, b"40") == 200


# -- 13. Loss nobody is told about ------------------------------------------------------------


def polling_request(port: int, method: str, query: str, body: Optional[bytes] = None) -> bytes:
    """One Engine.IO long-polling request (``/socket.io/?EIO=4&transport=polling&...``); the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, f"/socket.io/?EIO=4&transport=polling{query}", body=body,
                     headers={"Content-Type": "text/plain;charset=UTF-8"} if body else {})
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        conn.close()


def socketio_ack(port: int, event: str, data: str) -> Any:
    """Connect a Socket.IO client by long-polling, emit ``event`` with an ack id; the ack."""
    sid = json.loads(polling_request(port, "GET", "")[1:])["sid"]
    polling_request(port, "POST", f"&sid={sid}", b"40")
    assert polling_request(port, "GET", f"&sid={sid}").startswith(b"40")
    polling_request(port, "POST", f"&sid={sid}", b"421" + json.dumps([event, data]).encode())
    reply = polling_request(port, "GET", f"&sid={sid}").decode()
    assert reply.startswith("431"), reply
    return json.loads(reply[3:])[0]


def test_13a_a_full_pub_upstream_is_counted_and_acked_not_ok(make_gateway, zmq_context, raw_ws):
    # A subscriber that never reads: its queue (RCVHWM 1), the TCP buffers, then the
    # gateway's send queue (upstream_hwm) fill up. A PUB then drops silently.
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    endpoint = f"tcp://127.0.0.1:{sub.bind_to_random_port('tcp://127.0.0.1')}"
    gw = make_gateway(None, pub_endpoint=endpoint, upstream_hwm=10, client_rate=0)
    sender = raw_ws(gw.port)
    stats = gw.stats
    sent = 0

    def send(payload: bytes) -> None:
        nonlocal sent
        sender.send_frame(OP_BINARY, payload)
        sent += 1
        wait_until(lambda: stats.upstream_messages + stats.upstream_drops == sent)

    deadline = time.monotonic() + 10
    while not sub.poll(20):  # the subscription reaches the gateway: messages flow
        assert time.monotonic() < deadline, "the SUB peer never got a message"
        send(b"first")
    in_a_row = 0
    while in_a_row < 10:  # until the upstream stays full
        assert time.monotonic() < deadline, "a full upstream was never counted"
        drops = stats.upstream_drops
        send(b"x" * (64 * KiB))
        in_a_row = in_a_row + 1 if stats.upstream_drops > drops else 0
    assert socketio_ack(gw.port, "chat", "hello") == {"ok": False, "error": "upstream full"}
    sub.close(linger=0)


def next_json_frame(ws, timeout: float) -> Dict[str, Any]:
    """The next text frame's JSON (keepalive pings skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        _fin, opcode, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
        if opcode == OP_TEXT:
            return json.loads(payload)


def test_13b_drop_policy_tells_the_client_which_ids_it_lost(make_gateway, pub, wait_subscribed, raw_ws):
    gw = make_gateway(pub.endpoint, slow_client="drop", max_queue=64 * KiB)
    wait_subscribed(pub, gw)
    base = gw.stats.zmq_messages
    slow = raw_ws(gw.port, rcvbuf=4096, path="/?format=json")  # does not read for now
    wait_until(lambda: gw.clients == 1)
    deadline = time.monotonic() + 10
    sent = 0
    while gw.stats.dropped_slow < 100:
        assert time.monotonic() < deadline, "nothing was dropped"
        for _ in range(20):
            pub.send(b"%06d " % sent + b"x" * KiB)
            sent += 1
        time.sleep(0.002)
    wait_until(lambda: gw.stats.zmq_messages == base + sent)
    docs = []
    while True:  # the backlog
        try:
            docs.append(next_json_frame(slow, 0.5))
        except socket.timeout:
            break
    pub.send(b"after")  # its queue has room again: told of what it lost, then this
    wait_until(lambda: gw.stats.zmq_messages == base + sent + 1)
    last = gw.last_id
    docs += read_docs_until(lambda timeout: next_json_frame(slow, timeout), last)
    first = next(doc["id"] for doc in docs if "id" in doc)
    gaps = walk_ids(docs, first, last)
    assert gaps and docs[-1]["data"] == "after"
    assert sum(high - low + 1 for low, high in gaps) == gw.stats.dropped_slow


def test_13c_the_sequencer_counts_what_a_full_gateway_queue_missed(zmq_context, tmp_path):
    xsub_endpoint = f"ipc://{tmp_path}/xsub"
    proxy = Sequencer([xsub_endpoint], ["tcp://127.0.0.1:*"], hwm=10, context=zmq_context).start()
    stuck = zmq_context.socket(zmq.SUB)  # a gateway that does not read
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.connect(proxy.xpub_endpoints[0])
    publisher = zmq_context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.setsockopt(zmq.SNDHWM, 0)
    publisher.connect(xsub_endpoint)
    try:
        deadline = time.monotonic() + 10
        while not stuck.poll(20):  # subscribed through the proxy
            assert time.monotonic() < deadline, "nothing came through the proxy"
            publisher.send(b"first")
        stuck.recv()
        received = proxy.forwarded + proxy.dropped
        for _ in range(2000):
            publisher.send(b"x" * KiB)
        wait_until(lambda: proxy.forwarded + proxy.dropped == received + 2000, timeout=10)
        assert proxy.dropped > 0
    finally:
        proxy.stop()
        for sock in (stuck, publisher):
            sock.close(linger=0)


# -- 14. Bodies, dotfiles, static reads, hung workers, far-future since ---------------------

def test_14a_bodies_only_where_one_is_taken(make_gateway):
    gateway = make_gateway(None)
    for head in (b"POST /poll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 900000\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
                 b"GET /events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(head)  # the body never comes: the answer must not wait for it
            assert sock.recv(12) == b"HTTP/1.1 413", head
    assert gateway.stats.bodies_refused == 3
    status, _, body = http_exchange(gateway.port, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                                                  b"Host: localhost\r\n\r\n")
    sid = json.loads(body[1:])["sid"]
    assert _status(gateway.port, f"/socket.io/?EIO=4&transport=polling&sid={sid}", "localhost",
                   "POST", "", b"40") == 200


def _get(port: int, path: str) -> tuple:
    status, _, body = http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return status, body


def test_14b_static_dir_hides_dotfiles_and_reads_off_the_loop(make_gateway, tmp_path, monkeypatch):
    import zmqws.files

    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".htpasswd").write_text("admin:x")
    os.symlink(tmp_path / ".env", tmp_path / "env.txt")  # a visible name for a dotfile
    page = tmp_path / "page.txt"
    page.write_text("one")
    opened: List[str] = []

    def counting_open(*args, **kwargs):
        opened.append(threading.current_thread().name)
        return open(*args, **kwargs)

    monkeypatch.setattr(zmqws.files, "open", counting_open, raising=False)
    gateway = make_gateway(None, static_dir=str(tmp_path))
    for path in ("/.env", "/.git/config", "/sub/.htpasswd", "/env.txt", "/%2eenv"):
        assert _get(gateway.port, path)[0] == 404, path
    for _ in range(20):
        assert _get(gateway.port, "/page.txt") == (200, b"one")
    assert len(opened) == 1 and opened[0].startswith("zmqws-files")  # one read, off the loop
    page.write_text("two!")
    os.utime(page, (time.time() + 5, time.time() + 5))
    wait_until(lambda: _get(gateway.port, "/page.txt") == (200, b"two!"), message="the new content")
    assert len(opened) == 2 and opened[1].startswith("zmqws-files")


def test_14c_a_hung_worker_is_killed_and_replaced(spawn):
    parent = spawn(sys.executable, "-m", "zmqws", "--demo", "--workers", "2", "--port", "0",
                   "--worker-timeout", "2", "--close-timeout", "1")
    match = parent.wait_for_line("stderr", r"listening on port (\d+) with 2 workers \(pids (\d+), (\d+)\)",
                                 timeout=30)
    port, hung = int(match.group(1)), int(match.group(2))
    os.kill(hung, signal.SIGSTOP)  # its loop answers nothing any more (nor does it die)
    try:
        parent.wait_for_line("stderr", rf"pid {hung}\) is hung", timeout=15)
        parent.wait_for_line("stderr", rf"pid {hung}\) exited with status -9; restarting", timeout=5)
        assert _healthz(port) == 200
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
        parent.popen.send_signal(signal.SIGTERM)
        parent.popen.wait(15)


def test_14d_since_beyond_the_last_id_is_a_gap_not_a_wait(make_gateway):
    gateway = make_gateway(None)
    gateway.publish("old", "t")
    wait_until(lambda: gateway.last_id >= 1, message="a message taken")
    far = 10 ** 15
    status, headers, body = http_exchange(gateway.port, f"GET /poll?since={far} HTTP/1.1\r\n"
                                                        f"Host: localhost\r\n\r\n".encode())
    last = int(headers["x-zmqws-last-id"])
    assert status == 200 and json.loads(body) == [{"gap": [last + 1, far]}]
    ws = RawWebSocket(gateway.port)
    try:
        ws.handshake(f"/?since={far}&format=json")
        _, _, notice = ws.recv_frame()
        assert json.loads(notice)["gap"][1] == far
        gateway.publish("new", "t")
        _, _, message = ws.recv_frame()
        assert json.loads(message)["data"] == "new"
    finally:
        ws.close()


# -- 16. A poll with an old since reads the whole history ------------------------------------

def test_16_poll_with_an_old_since_reads_no_more_history_than_it_answers(make_gateway, monkeypatch):
    # Every request with since=1 (or any old id) on a 20 000-message history made the hub
    # filter all of it (20 000 topic matches) per request, then answer at most
    # poll_max_messages: 17 ms of loop per request, turns of seconds with many such pollers.
    gw = make_gateway(None, history=20_000, poll_max_messages=100, subscribe_all=True)  # id 1: marker
    for i in range(20_000):  # ids 2..20001
        gw.publish(b"m%d" % i, topic="far")
    wait_until(lambda: gw.last_id == 20_001 and len(gw.hub.history) == 20_000, timeout=30)
    matched = []
    monkeypatch.setattr("zmqws.hub.topic_matches", lambda topic, prefixes: matched.append(topic) or True)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.request("GET", "/poll?since=1")
        response = conn.getresponse()
        docs = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200 and [d["id"] for d in docs] == list(range(2, 102))
    assert len(matched) == 100


# -- The token file ----------------------------------------------------------------------------

TOKENS = """\
# token          read prefixes        write prefixes (optional)
s3cret           prices.,pub.         orders.
ops-dashboard    *                    -
reader           news.
"""


def test_token_file_format():
    tokens = parse_token_file(TOKENS)
    assert tokens["s3cret"] == Rights.of(read=["prices.", "pub."], write=["orders."])
    assert tokens["ops-dashboard"] == Rights(None, frozenset())
    assert tokens["reader"] == Rights.of(read=["news."], write=[])  # no write column: none
    with pytest.raises(ValueError, match="tokens.txt:2"):
        parse_token_file("a b\nonly-a-token\n", "tokens.txt")
    with pytest.raises(ValueError, match="twice"):
        parse_token_file("a * *\na - -\n")


def test_token_file_rights_on_every_transport_and_reload_on_sighup(tmp_path, spawn):
    path = tmp_path / "tokens.txt"
    path.write_text(TOKENS)
    child = spawn(sys.executable, "-m", "zmqws", "--port", "0", "--sub", "tcp://127.0.0.1:1",
                  "--token-file", str(path), "-v")
    port = int(child.wait_for_line("stderr", r"listening on \S+:(\d+)/").group(1))

    def get(path_query: str) -> int:
        return request_status(port, f"GET {path_query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    assert request_status(port, upgrade_request("/?token=s3cret&topic=prices.eu")) == 101
    assert request_status(port, upgrade_request("/?token=s3cret&topic=secret.")) == 403
    assert request_status(port, upgrade_request("/?token=wrong")) == 401
    assert get("/events?token=s3cret&topic=secret.") == 403
    assert get("/poll?token=reader&topic=prices.") == 403
    assert request_status(port, upgrade_request("/?token=ops-dashboard&topic=anything")) == 101
    path.write_text("reader news.\n")
    child.popen.send_signal(signal.SIGHUP)
    child.wait_for_line("stderr", "token file reloaded")
    assert request_status(port, upgrade_request("/?token=s3cret&topic=prices.eu")) == 401
    path.write_text("not a valid line with four fields\n")
    child.popen.send_signal(signal.SIGHUP)
    child.wait_for_line("stderr", "token file not reloaded")
    assert request_status(port, upgrade_request("/?token=reader&topic=news.")) == 101


def test_resolve_topics_refuses_and_never_widens():
    restricted = Rights.of(read=["prices."])
    assert resolve_topics([], restricted) == [b"prices."]
    assert resolve_topics(["prices.eu", "prices.eu"], restricted) == [b"prices.eu"]
    with pytest.raises(TopicRefused) as refused:
        resolve_topics(["prices.", "secret."], restricted)
    assert refused.value.status == 403 and refused.value.topic == "secret."
    with pytest.raises(TopicRefused):
        resolve_topics([], Rights.of(read=[]))
