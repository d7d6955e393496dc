"""Every attack tried on the gateway, one test per attack (issue: hostile input).

Each test plays the attacker against a real gateway on 127.0.0.1 and asserts
the specified answer (an HTTP status, a close code, a Socket.IO
CONNECT_ERROR) and that nothing else was harmed: the bound held, the loop
kept answering, other clients kept their messages.  Each one fails on the
code before the fix.  The numbers follow the findings in
``docs/reliability.md`` ("Hostile input").
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import signal
import socket
import sys
import time
from typing import List

import pytest
import zmq

from conftest import http_exchange, upgrade_request, wait_until
from zmqws.auth import token_authenticator
from zmqws.frames import OP_CLOSE, OP_TEXT
from zmqws.rights import Rights, TopicRefused, parse_token_file, resolve_topics


@pytest.fixture
def ws_client_sync():
    """``ws_client_sync(port, path)``: a connected ``websockets`` sync client (closed at the end)
    whose ``recv()`` waits 5 s at most."""
    from websockets.sync.client import connect

    with contextlib.ExitStack() as stack:
        def make(port: int, path: str = "/"):
            ws = stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", compression=None,
                                             open_timeout=5, close_timeout=2, proxy=None))
            recv = ws.recv
            ws.recv = lambda timeout=5: recv(timeout)
            return ws

        yield make


def send_request(port: int, request: bytes):
    """Raw request bytes on a new connection; (socket, status of the response head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def status_of(port: int, request: bytes) -> int:
    """The status a request is answered with (the connection is then closed)."""
    sock, status = send_request(port, request)
    sock.close()
    return status


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


# -- 3. Resume replay past --max-queue -------------------------------------------------------


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
    status, _, body = http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return int(re.search(rf"^{name} (\d+)$", body.decode(), re.M).group(1))


def test_4_polling_sessions_count_as_connections(make_gateway):
    gw = make_gateway(None, max_connections=20)
    statuses = sio_handshakes(gw.port, 100)
    # the connection itself and 19 sessions make 20 connections: the 20th session is refused
    assert statuses == [200] * 19 + [503]
    assert len(gw.sio.sessions) == 19 and metric(gw.port, "zmqws_refused_total") == 1
    wait_until(lambda: not gw._clients)
    assert sio_handshakes(gw.port, 1) == [503]  # the 20th connection would be the 21st
    assert len(gw.sio.sessions) == 19 and gw.stats.refused == 2


def test_4_polling_sessions_count_per_address(make_gateway):
    gw = make_gateway(None, max_connections_per_address=3)
    assert sio_handshakes(gw.port, 10) == [200, 200, 503]
    assert len(gw.sio.sessions) == 2 and gw.stats.refused == 1


def test_4_a_session_that_never_polls_is_closed_after_the_handshake_timeout(make_gateway):
    gw = make_gateway(None, handshake_timeout=0.5)
    idle, active = (json.loads(http_exchange(gw.port, b"GET /socket.io/?EIO=4&transport=polling "
                                             b"HTTP/1.1\r\nHost: x\r\n\r\n")[2][1:])["sid"]
                    for _ in range(2))
    query = f"/socket.io/?EIO=4&transport=polling&sid={active}"
    post = f"POST {query} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n40"
    assert http_exchange(gw.port, post.encode())[2] == b"ok"
    poll = f"GET {query} HTTP/1.1\r\nHost: x\r\n\r\n"
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
        assert status_of(gw.port, upgrade_request(path)) == 400
        assert status_of(gw.port, f"GET /events{path[1:]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()) == 400
        assert status_of(gw.port, f"GET /poll{path[1:]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()) == 400
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
    status, _, body = http_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and time.monotonic() - started < 0.5
    ack = sio_packet(ws)
    assert ack.startswith("31"), ack
    assert "more than 256 topics" in json.loads(ack[2:])[0]["error"]
    assert gw.subscriptions() == [b"a."]


def test_5_distinct_upstream_prefixes_are_capped(make_gateway):
    gw = make_gateway(None, max_upstream_prefixes=3)
    socks = []
    for i in range(3):
        sock, status = send_request(gw.port, upgrade_request(f"/?topic=p{i}."))
        assert status == 101
        socks.append(sock)
    wait_until(lambda: len(gw.subscriptions()) == 3)
    assert status_of(gw.port, upgrade_request("/?topic=p3.")) == 503
    assert status_of(gw.port, upgrade_request("/?topic=p0.")) == 101  # an existing prefix still joins
    for sock in socks:
        sock.close()


# -- 6. One exception in the send path wedges routes -----------------------------------------


# -- 7. accept() at the file-descriptor limit -------------------------------------------------


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

    monkeypatch.setattr(gw, "_missed", failing)
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
        assert status_of(port, upgrade_request(f"/?since={since}")) == 400, since
        for path in ("/events", "/poll"):
            request = f"GET {path}?since={since} HTTP/1.1\r\nHost: x\r\n\r\n"
            assert status_of(port, request.encode()) == 400, (path, since)
            header = since.replace("%C2%B2", "\u00b2").encode("latin-1")  # the byte 0xB2: "²" in Latin-1
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ".encode() + header + b"\r\n\r\n"
            assert status_of(port, request) == 400, (path, "Last-Event-ID", since)
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


# -- 12. DNS rebinding and cross-site WebSocket ----------------------------------------------


# -- 13. Loss nobody is told about ------------------------------------------------------------


# -- 14. Bodies, dotfiles, static reads, hung workers, far-future since ---------------------


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
        return status_of(port, f"GET {path_query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    assert status_of(port, upgrade_request("/?token=s3cret&topic=prices.eu")) == 101
    assert status_of(port, upgrade_request("/?token=s3cret&topic=secret.")) == 403
    assert status_of(port, upgrade_request("/?token=wrong")) == 401
    assert get("/events?token=s3cret&topic=secret.") == 403
    assert get("/poll?token=reader&topic=prices.") == 403
    assert status_of(port, upgrade_request("/?token=ops-dashboard&topic=anything")) == 101
    path.write_text("reader news.\n")
    child.popen.send_signal(signal.SIGHUP)
    child.wait_for_line("stderr", "token file reloaded")
    assert status_of(port, upgrade_request("/?token=s3cret&topic=prices.eu")) == 401
    path.write_text("not a valid line with four fields\n")
    child.popen.send_signal(signal.SIGHUP)
    child.wait_for_line("stderr", "token file not reloaded")
    assert status_of(port, upgrade_request("/?token=reader&topic=news.")) == 101


def test_resolve_topics_refuses_and_never_widens():
    restricted = Rights.of(read=["prices."])
    assert resolve_topics([], restricted) == [b"prices."]
    assert resolve_topics(["prices.eu", "prices.eu"], restricted) == [b"prices.eu"]
    with pytest.raises(TopicRefused) as refused:
        resolve_topics(["prices.", "secret."], restricted)
    assert refused.value.status == 403 and refused.value.topic == "secret."
    with pytest.raises(TopicRefused):
        resolve_topics([], Rights.of(read=[]))
