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
import json
import signal
import socket
import sys
import time

import pytest
import zmq

from conftest import http_exchange, upgrade_request, wait_until
from zmqws.auth import token_authenticator
from zmqws.protocol.frames import OP_TEXT
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


# -- 9. Malformed input and tracebacks -------------------------------------------------------


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
