"""Socket.IO clients on the gateway (zmqws/socketio.py, zmqws/engineio.py), end to end.

* The real ``socket.io-client`` (v4) from Node (tests/node/sio_client.mjs): WebSocket only,
  long-polling only and the default polling → WebSocket upgrade, with a real ZeroMQ PUB
  publishing while the client receives; binary payloads; client events forwarded to a PULL
  socket with their ack; subscribe/unsubscribe; ``auth.topics``; ``sio_event="topic"``;
  connection state recovery after a forced transport close, over WebSocket and polling.
* The same library's browser bundle in headless Chromium (a page served by the test itself).
* python-socketio's ``socketio.Client`` over WebSocket and polling.
* The Engine.IO HTTP protocol by hand (http.client): error codes and messages as engine.io
  sends them, sessions closed on bad input, the open packet, heartbeats — none of which
  disturbs a client that behaves.
* The server side of the upgrade by hand (a poll during the probe is released with a noop; no
  message lost or doubled across the switch), keep-alive polling connections, tokens.
* Hypothesis over the sans-I/O codecs, the /metrics gauges, the command line's options.

Everything runs on 127.0.0.1 with ephemeral ports; processes, threads, sockets and gateways
are stopped in finalizers; every wait is bounded.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import contextlib
import json
import os
import re
import select
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NODE_DIR, NodeProcess, wait_subscribed, wait_until
from test_rpc import Application
from zmqws.protocol import engineio as eio
from zmqws.protocol.frames import OP_BINARY, OP_CLOSE, OP_TEXT

pytestmark = pytest.mark.timeout(60)

SIO_CLIENT = NODE_DIR / "sio_client.mjs"
SIO_BUNDLE = NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

RATE = 100  # messages per second published in the streaming tests
COUNT = 200


# =================================================================================================
# helpers
# =================================================================================================


def payload(i: int) -> bytes:
    """Message ``i`` of a stream: text, except every 10th (from 3) which is binary (not UTF-8)."""
    if i % 10 == 3:
        return b"\xff\xfe" + i.to_bytes(4, "big")
    return f"seq {i:04d} ".encode().ljust(64, b".")


def decoded(data: Any) -> bytes:
    """An event's data as sio_client.mjs printed it, back to bytes ({"bin": base64} = binary)."""
    if isinstance(data, dict) and set(data) == {"bin"}:
        return base64.b64decode(data["bin"])
    assert isinstance(data, str), data
    return data.encode()


def publish_paced(pub, items: List[Tuple[bytes, bytes]], rate: float = RATE,
                  stop: Optional[threading.Event] = None) -> None:
    """``[topic, payload]`` multipart messages on a real PUB socket at about ``rate`` per second."""
    start = time.monotonic()
    for n, (topic, data) in enumerate(items):
        if stop is not None and stop.is_set():
            return
        pub.send_multipart([topic, data])
        delay = start + (n + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Publisher(threading.Thread):
    """``publish_paced`` on a thread with its own PUB socket (a ZeroMQ socket stays on one
    thread): it starts when ``go`` is set; until then ``send``/``send_multipart`` (used by
    ``wait_subscribed``) are queued and sent by the thread."""

    def __init__(self, context: zmq.Context, items: List[Tuple[bytes, bytes]], rate: float = RATE) -> None:
        super().__init__(daemon=True)
        self.sock = context.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.items = items
        self.rate = rate
        self.go = threading.Event()
        self.stop_flag = threading.Event()
        self.error: Optional[BaseException] = None
        self._outbox: List[List[bytes]] = []
        self._lock = threading.Lock()

    def send_multipart(self, parts) -> None:
        with self._lock:
            self._outbox.append(list(parts))

    def send(self, data: bytes) -> None:
        self.send_multipart([data])

    def _flush(self) -> None:
        with self._lock:
            out, self._outbox = self._outbox, []
        for parts in out:
            self.sock.send_multipart(parts)

    def run(self) -> None:
        try:
            while not self.go.is_set() and not self.stop_flag.is_set():
                self._flush()
                time.sleep(0.002)
            self._flush()
            publish_paced(self.sock, self.items, self.rate, self.stop_flag)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc
        finally:
            self.sock.close(linger=0)

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(10)


class NodeSio(NodeProcess):
    """``node tests/node/sio_client.mjs URL OPTIONS`` as a subprocess, read line by line."""

    def __init__(self, node: str, url: str, options: Dict[str, Any], stderr_path: Path) -> None:
        self.stdin = bool(options.get("stdin"))
        super().__init__([node, str(SIO_CLIENT), url, json.dumps(options)], stderr_path, stdin=self.stdin)
        self.seen: List[str] = []

    def next_line(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"sio_client: no line in {timeout} s; seen {self.seen[-10:]}; "
                                     f"stderr: {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.proc.wait(5)
                    raise AssertionError(f"sio_client exited ({self.proc.returncode}); seen "
                                         f"{self.seen[-10:]}; stderr: {self.stderr()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The next line starting with ``prefix`` (lines before it are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def event(self, timeout: float = 10.0) -> Tuple[str, Any, Optional[str]]:
        """The next ``event`` line (with ``echo``): (name, data, offset, namespace)."""
        return tuple(json.loads(self.expect("event ", timeout)[6:]))

    def send(self, command: Dict[str, Any]) -> None:
        assert self.stdin, "start the client with stdin=True"
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 30.0) -> Dict[str, Any]:
        line = self.expect("{", timeout)
        assert self.proc.wait(5) == 0, self.stderr()
        return json.loads(line)



@pytest.fixture
def node_sio(node_ready, tmp_path):
    """``node_sio(url, **options)`` → a started NodeSio, killed at teardown."""
    made: List[NodeSio] = []

    def make(url: str, **options) -> NodeSio:
        options.setdefault("timeout", 40)
        client = NodeSio(node_ready, url, options, tmp_path / f"sio-{len(made)}.err")
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def py_sio():
    """``py_sio(url, transport, events=("message",))`` → a connected socketio.Client that records
    ``(event, data, offset)`` in ``client.got``; disconnected at teardown."""
    import socketio
    from engineio.payload import Payload

    # python-engineio's client refuses a long-polling response of more than 16 packets
    # ("Unexpected packet from server, aborting"); its documented workaround:
    saved = Payload.max_decode_packets
    Payload.max_decode_packets = 10_000
    made = []

    def make(url: str, transport: str, events=("message",), **connect_options):
        client = socketio.Client(reconnection=False)
        client.got = []
        client.connects = 0
        client.disconnects = []

        def on_connect():
            client.connects += 1

        client.on("connect", on_connect)
        client.on("disconnect", lambda *reason: client.disconnects.append(reason))
        for name in events:
            client.on(name, partial(lambda name, data, offset=None: client.got.append((name, data, offset)),
                                    name))
        made.append(client)
        client.connect(url, transports=[transport], wait_timeout=5, **connect_options)
        return client

    yield make
    for client in made:
        try:
            client.disconnect()
        except Exception:  # pragma: no cover - already gone
            pass
    Payload.max_decode_packets = saved


def check_stream(events: List[Dict[str, Any]], expected: List[bytes]) -> None:
    """Events (as sio_client.mjs reports them) are exactly ``expected``, in order, with strictly
    increasing offsets; binary payloads came as binary, text as strings."""
    got = [decoded(e["data"]) for e in events]
    missing = [p for p in expected if p not in set(got)]
    assert got == expected, f"{len(got)} events for {len(expected)} expected; missing {missing[:5]}"
    for e, want in zip(events, expected):
        assert e["event"] == "message"
        is_binary = isinstance(e["data"], dict)
        assert is_binary == (want[:1] == b"\xff"), e
    offsets = [int(e["offset"]) for e in events]
    assert all(b > a for a, b in zip(offsets, offsets[1:])), "offsets must strictly increase"


# =================================================================================================
# 1. socket.io-client from Node
# =================================================================================================


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_node_client_receives_the_stream_in_order(mode, pub, make_gateway, node_sio):
    gw = make_gateway(pub.endpoint, linger=10)
    wait_subscribed(pub, gw)
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=[mode], count=COUNT)
    assert client.expect("connect ") == f"connect {mode} false"
    expected = [payload(i) for i in range(COUNT)]
    publish_paced(pub, [(b"t", p) for p in expected])
    result = client.result()
    check_stream(result["events"], expected)
    assert result["transport"] == mode
    assert result["upgrades"] == []
    assert len(result["connects"]) == 1


def test_node_client_upgrades_from_polling_to_websocket_mid_stream(zmq_context, make_gateway, node_sio):
    """The default transports: the stream runs before the client connects and while it
    upgrades; from its first message on, nothing is lost and nothing comes twice."""
    total = 300
    items = [(b"t", payload(i)) for i in range(total)]
    publisher = Publisher(zmq_context, items)
    publisher.start()
    try:
        gw = make_gateway(publisher.endpoint, linger=10)
        wait_subscribed(publisher, gw)
        publisher.go.set()
        client = node_sio(f"http://127.0.0.1:{gw.port}", until=payload(total - 1).decode())
        result = client.result()
    finally:
        publisher.finish()
    assert publisher.error is None
    assert result["upgrades"] == ["websocket"], result["upgrades"]  # it opened on polling
    assert result["transport"] == "websocket"
    got = [decoded(e["data"]) for e in result["events"]]
    first = [p for _, p in items].index(got[0])
    assert first < total - 100, "the client joined too late to watch the upgrade under load"
    check_stream(result["events"], [p for _, p in items[first:]])
    assert len(result["connects"]) == 1


def test_node_client_event_forwarded_upstream_and_acked(pub, make_gateway, node_sio, pull):
    sock, endpoint = pull
    gw = make_gateway(pub.endpoint, push_endpoint=endpoint)
    emits = [
        {"event": "order", "args": [{"qty": 3, "side": "buy"}], "ack": True},
        {"event": "chat", "args": ["hello, zmq"], "ack": True},
        {"event": "blob", "args": [{"bin": base64.b64encode(b"\x00\x01\xff").decode()}], "ack": True},
    ]
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["websocket"], emits=emits)
    client.expect("connect websocket")
    acks = [client.expect(f"ack {i} ") for i in range(3)]
    assert [json.loads(a.split(" ", 2)[2]) for a in acks] == [[{"ok": True}]] * 3
    received = []
    for _ in range(3):
        assert sock.poll(5000), "nothing arrived on the PULL socket"
        received.append(sock.recv_multipart())
    assert [r[0] for r in received] == [b"order", b"chat", b"blob"]
    assert json.loads(received[0][2]) == {"qty": 3, "side": "buy"}
    assert received[1][2] == b"hello, zmq"
    assert received[2][2] == b"\x00\x01\xff"
    ids = {r[1] for r in received}
    assert len(ids) == 1 and re.fullmatch(rb"\d+\.sio\d+", ids.pop())
    assert gw.stats.upstream_messages == 3


def test_node_client_subscribe_and_unsubscribe_with_acks(pub, make_gateway, node_sio):
    # subscribe_all: the SUB gets every topic at once, so a new client topic is not subject
    # to ZeroMQ's slow-joiner delay (the filtering under test is the gateway's)
    gw = make_gateway(pub.endpoint, subscribe_all=True)
    wait_subscribed(pub, gw)
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["websocket"],
                      auth={"topics": ["a."]}, stdin=True, echo=True)
    client.expect("connect websocket")
    pub.send_multipart([b"b.x", b"b1"])
    pub.send_multipart([b"a.x", b"a1"])
    assert client.event()[1] == "a1"
    client.send({"emit": "subscribe", "args": ["b."], "ack": True})
    assert json.loads(client.expect("ack 0 ").split(" ", 2)[2]) == [{"topics": ["a.", "b."]}]
    pub.send_multipart([b"b.x", b"b2"])
    assert client.event()[1] == "b2"
    client.send({"emit": "unsubscribe", "args": ["a."], "ack": True})
    assert json.loads(client.expect("ack 1 ").split(" ", 2)[2]) == [{"topics": ["b."]}]
    pub.send_multipart([b"a.x", b"a3"])
    pub.send_multipart([b"b.x", b"b3"])
    assert client.event()[1] == "b3"
    client.send({"emit": "subscribe", "args": [["c.", "d."]], "ack": True})
    assert json.loads(client.expect("ack 2 ").split(" ", 2)[2]) == [{"topics": ["b.", "c.", "d."]}]
    client.send({"emit": "subscribe", "args": [42], "ack": True})
    assert "error" in json.loads(client.expect("ack 3 ").split(" ", 2)[2])[0]
    client.send({"finish": True})
    events = [e["data"] for e in client.result()["events"]]
    assert events == ["a1", "b2", "b3"]


def test_node_client_auth_topics_filter(pub, make_gateway, node_sio):
    gw = make_gateway(pub.endpoint, subscribe_all=True)
    wait_subscribed(pub, gw)
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["polling"],
                      auth={"topics": ["prices.", "alerts"]}, count=30)
    client.expect("connect polling")
    wanted = []
    for i in range(60):
        topic = [b"prices.eur", b"news.x", b"alerts", b"pricesX"][i % 4]
        data = f"{topic.decode()} {i}".encode()
        pub.send_multipart([topic, data])
        if topic in (b"prices.eur", b"alerts"):
            wanted.append(data.decode())
    events = client.result()["events"]
    assert len(wanted) == 30
    assert [e["data"] for e in events] == wanted


def test_sio_event_topic_uses_the_topic_as_event_name(pub, make_gateway, node_sio):
    gw = make_gateway(pub.endpoint, sio_event="topic", subscribe_all=True)
    wait_subscribed(pub, gw)
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["websocket"], count=3)
    client.expect("connect websocket")
    pub.send_multipart([b"prices.eur", b"1.08"])
    pub.send_multipart([b"alerts", b"\xff\x00"])
    pub.send(b"single-part")
    events = client.result()["events"]
    assert [(e["event"], e["data"]) for e in events] == [
        ("prices.eur", "1.08"), ("alerts", {"bin": base64.b64encode(b"\xff\x00").decode()}),
        ("message", "single-part")]


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_node_client_recovers_its_connection_state(mode, pub, make_gateway, node_sio):
    """The transport is closed by force mid-stream (``socket.io.engine.close()``): the client
    reconnects with its pid and last offset, ``socket.recovered`` is true and the stream goes
    on with nothing missed and nothing twice."""
    gw = make_gateway(pub.endpoint, linger=10)
    wait_subscribed(pub, gw)
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=[mode], count=COUNT, closeAfter=60)
    assert client.expect("connect ") == f"connect {mode} false"
    expected = [payload(i) for i in range(COUNT)]
    publish_paced(pub, [(b"t", p) for p in expected])
    result = client.result()
    assert [c["recovered"] for c in result["connects"]] == [False, True], result["connects"]
    assert result["connects"][0]["id"] == result["connects"][1]["id"]
    assert result["disconnects"][0] == "forced close"
    check_stream(result["events"], expected)
    offsets = [e["offset"] for e in result["events"]]
    assert len(set(offsets)) == len(offsets)
    # the reconnection happened while messages were still coming
    assert "connect %s true" % mode in client.seen


def test_recovery_refused_for_an_unknown_pid_gives_a_fresh_session(make_gateway, raw_ws):
    gw = make_gateway(None)
    ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
    assert ws.recv_frame()[2].startswith(b"0{")
    ws.send_frame(OP_TEXT, b'40{"pid":"nope","offset":"3"}')
    packet = json.loads(ws.recv_frame()[2][2:])
    assert set(packet) == {"sid", "pid"} and packet["pid"] != "nope"


# =================================================================================================
# 2. the browser bundle in headless Chromium
# =================================================================================================

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io test</title>
<script src="/socket.io.min.js"></script></head>
<body><div id="state">connecting</div><div id="log"></div>
<script>
  const params = new URLSearchParams(location.search);
  window.received = [];
  window.sioState = {connected: false, transport: null};
  const socket = io(params.get("gateway"), {auth: {topics: ["page."]}});
  socket.on("connect", () => {
    window.sioState.connected = true;
    window.sioState.transport = socket.io.engine.transport.name;
    document.getElementById("state").textContent = "connected";
  });
  socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => { window.sioState.transport = t.name; }));
  socket.on("message", (data, offset) => {
    window.received.push([data, offset]);
    const row = document.createElement("div");
    row.className = "msg";
    row.textContent = data;
    document.getElementById("log").appendChild(row);
  });
</script></body></html>
"""


@pytest.fixture
def static_server(tmp_path):
    """A tiny http.server on its own port serving the page and the socket.io-client bundle."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    shutil.copy(SIO_BUNDLE, root / "socket.io.min.js")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def chromium_page():
    """A page in headless Chromium (Playwright on the system's /usr/bin/chromium)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install playwright")
    playwright = sync_playwright().start()
    browser = None
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        page = browser.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        yield page
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()


def test_browser_bundle_receives_every_message_in_order(node_ready, pub, make_gateway, static_server,
                                                        chromium_page):
    page = chromium_page
    gw = make_gateway(pub.endpoint, cors_origins=[static_server], subscribe_all=True)
    wait_subscribed(pub, gw)
    page.goto(f"{static_server}/index.html?gateway=http://127.0.0.1:{gw.port}")
    page.wait_for_function("window.sioState && window.sioState.connected", timeout=10_000)
    # wait for the upgrade too, so the 50 messages go over the WebSocket
    page.wait_for_function("window.sioState.transport === 'websocket'", timeout=10_000)
    expected = [f"page message {i}" for i in range(50)]
    pub.send_multipart([b"other", b"not for the page"])
    for text in expected:
        pub.send_multipart([b"page.x", text.encode()])
    page.wait_for_function("window.received.length >= 50", timeout=10_000)
    received = page.evaluate("window.received")
    assert [r[0] for r in received] == expected
    offsets = [int(r[1]) for r in received]
    assert offsets == sorted(set(offsets))
    assert page.locator("#log .msg").count() == 50
    assert page.errors == []


# =================================================================================================
# 3. python-socketio's client
# =================================================================================================


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_python_socketio_client(transport, make_gateway, py_sio, pull):
    sock, endpoint = pull
    gw = make_gateway(None, push_endpoint=endpoint)
    client = py_sio(f"http://127.0.0.1:{gw.port}", transport)
    assert client.transport() == transport
    expected = [f"py {i}" for i in range(100)] + [b"\x00\xffbinary"]
    for item in expected:
        gw.publish(item)
    wait_until(lambda: len(client.got) >= len(expected), message="101 events")
    assert [g[1] for g in client.got] == expected
    offsets = [int(g[2]) for g in client.got]
    assert offsets == sorted(set(offsets))
    assert client.call("note", {"x": [1, 2]}, timeout=5) == {"ok": True}
    parts = sock.recv_multipart() if sock.poll(5000) else None
    assert parts is not None and parts[0] == b"note" and json.loads(parts[2]) == {"x": [1, 2]}
    acked = []
    client.emit("note", "with a callback", callback=lambda *args: acked.append(args))
    wait_until(lambda: acked, message="the ack callback")
    assert acked == [({"ok": True},)]
    assert client.call("subscribe", "only.", timeout=5) == {"topics": ["only."]}


# =================================================================================================
# 4. the Engine.IO protocol by hand: errors, the open packet, heartbeats
# =================================================================================================


def http_request(port: int, method: str, query: str, body: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None, timeout: float = 5.0,
                 path: str = "/socket.io/") -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, f"{path}?{query}", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def packets(body: bytes) -> List[str]:
    return body.decode().split("\x1e")


class RawPolling:
    """An Engine.IO long-polling client by hand."""

    def __init__(self, port: int) -> None:
        self.port = port
        status, headers, body = http_request(port, "GET", "EIO=4&transport=polling")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain")
        assert body[:1] == b"0"
        self.open = json.loads(body[1:])
        self.sid = self.open["sid"]

    def get(self, timeout: float = 5.0) -> Tuple[int, bytes]:
        status, _, body = http_request(self.port, "GET", f"EIO=4&transport=polling&sid={self.sid}",
                                       timeout=timeout)
        return status, body

    def post(self, body: bytes, headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
        status, _, reply = http_request(self.port, "POST", f"EIO=4&transport=polling&sid={self.sid}",
                                        body=body, headers=headers or {"Content-Type": "text/plain;charset=UTF-8"})
        return status, reply


@contextlib.contextmanager
def held_poll(gw, client: "RawPolling"):
    """A GET of ``client`` held by the gateway on a thread; yields the list its answer goes to
    (filled once the block has ended)."""
    session = gw.sio.sessions[client.sid]
    answer: List[Any] = []
    holder = threading.Thread(target=lambda: answer.append(client.get()), daemon=True)
    holder.start()
    try:
        wait_until(lambda: session.poll_client is not None, message="the poll to be held")
        yield answer
    finally:
        holder.join(5)


def assert_engineio_error(response, code: int, message: Optional[str] = None) -> None:
    status, headers, body = response
    assert status == 400, (status, body)
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["code"] == code
    assert doc["message"] == (message or eio.ERROR_MESSAGES[code]) or (
        code == eio.BAD_REQUEST and doc["message"].startswith("Bad request")), doc


@pytest.fixture
def bystander(make_gateway, py_sio):
    """A gateway with a well-behaved Socket.IO client on it; ``check()`` publishes and asserts
    that the client got every message so far, in order."""

    class Bystander:
        def __init__(self) -> None:
            self.gw = make_gateway(None)
            self.client = py_sio(f"http://127.0.0.1:{self.gw.port}", "websocket")
            self.sent: List[str] = []

        def check(self) -> None:
            for _ in range(5):
                text = f"bystander {len(self.sent)}"
                self.sent.append(text)
                self.gw.publish(text)
            wait_until(lambda: len(self.client.got) >= len(self.sent), message="the bystander's events")
            assert [g[1] for g in self.client.got] == self.sent
            assert self.client.connected and self.client.connects == 1

    by = Bystander()
    by.check()
    return by


def test_unsupported_protocol_versions(bystander):
    port = bystander.gw.port
    for query in ("transport=polling", "EIO=3&transport=polling", "EIO=5&transport=polling",
                  "EIO=&transport=polling"):
        assert_engineio_error(http_request(port, "GET", query), 5, "Unsupported protocol version")
    bystander.check()


def test_unknown_transport_sid_and_bad_handshake_method(bystander):
    port = bystander.gw.port
    assert_engineio_error(http_request(port, "GET", "EIO=4&transport=foo"), 0, "Transport unknown")
    assert_engineio_error(http_request(port, "GET", "EIO=4"), 0, "Transport unknown")
    assert_engineio_error(http_request(port, "GET", "EIO=4&transport=polling&sid=nope"), 1,
                          "Session ID unknown")
    assert_engineio_error(http_request(port, "POST", "EIO=4&transport=polling", body=b"40"), 2,
                          "Bad handshake method")
    bystander.check()


def test_websocket_transport_as_a_plain_get_is_a_bad_request(bystander):
    assert_engineio_error(http_request(bystander.gw.port, "GET", "EIO=4&transport=websocket"), 3)
    bystander.check()


def test_polling_request_for_a_websocket_session_is_a_bad_request(bystander, raw_ws):
    port = bystander.gw.port
    ws = raw_ws(port, path="/socket.io/?EIO=4&transport=websocket")
    sid = json.loads(ws.recv_frame()[2][1:])["sid"]
    assert_engineio_error(http_request(port, "GET", f"EIO=4&transport=polling&sid={sid}"), 3)
    # the WebSocket session is unharmed
    ws.send_frame(OP_TEXT, b"40")
    assert ws.recv_frame()[2].startswith(b"40{")
    bystander.check()


def test_events_waiting_for_a_client_that_closes_are_dropped_not_answered(make_gateway):
    """A client that closes its session (``1``) gets its held poll back with a noop only: the
    events paced for it (``--poll-coalesce``) are dropped as engine.io drops its write buffer
    (socket.io-client would buffer them and emit them after a recovery that replays them)."""
    gw = make_gateway(None, poll_coalesce_ms=1000)
    client = RawPolling(gw.port)
    assert client.post(b"40") == (200, b"ok")
    assert poll_until(client, 1)[0].startswith("40{")
    gw.publish("first")
    assert sio_event(poll_until(client, 1)[0])[1] == "first"  # at once: nothing sent before
    gw.publish("second")  # right after an answer: paced, waits for the interval
    with held_poll(gw, client) as held:
        assert client.post(b"1") == (200, b"ok")
    assert held == [(200, b"6")]


def test_overlapping_polls_close_the_session(bystander):
    port = bystander.gw.port
    client = RawPolling(port)
    with held_poll(bystander.gw, client) as first:
        assert_engineio_error(http_request(port, "GET", f"EIO=4&transport=polling&sid={client.sid}"), 3)
    assert first and first[0][0] == 200 and packets(first[0][1])[-1] == "1"  # the held poll: close
    assert_engineio_error(http_request(port, "GET", f"EIO=4&transport=polling&sid={client.sid}"), 1)
    assert client.sid not in bystander.gw.sio.sessions
    bystander.check()


def test_a_client_close_releases_the_pending_poll_with_a_noop(bystander):
    port = bystander.gw.port
    client = RawPolling(port)
    with held_poll(bystander.gw, client) as held:
        assert client.post(b"1") == (200, b"ok")
    assert held == [(200, b"6")]
    assert_engineio_error(http_request(port, "GET", f"EIO=4&transport=polling&sid={client.sid}"), 1)
    assert client.sid not in bystander.gw.sio.sessions
    bystander.check()


@pytest.mark.parametrize("body", [b"4" + bytes(range(0x80, 0x90)), b"9hello", b"b!!!", b"",
                                  b"2\x1e\x1e3", b"40\x1e42[", b"4{", b"45-[\"x\"]"])
def test_malformed_post_bodies_close_the_session(body, bystander):
    client = RawPolling(bystander.gw.port)
    status, reply = client.post(body)
    assert status == 400, reply
    assert json.loads(reply)["code"] == 3
    status, reply = client.get()
    assert status == 400 and json.loads(reply)["code"] == 1, reply
    bystander.check()


def test_binary_post_is_refused(bystander):
    client = RawPolling(bystander.gw.port)
    status, reply = client.post(b"4hello", {"Content-Type": "application/octet-stream"})
    assert status == 400 and json.loads(reply)["code"] == 3
    assert client.sid not in bystander.gw.sio.sessions
    bystander.check()


def test_other_namespaces_get_connect_error_and_the_main_one_still_works(bystander):
    client = RawPolling(bystander.gw.port)
    assert client.post(b"40/admin,") == (200, b"ok")
    status, body = client.get()
    assert status == 200 and packets(body) == ['44/admin,{"message":"Invalid namespace"}']
    # an event on the refused namespace is ignored
    assert client.post(b'42/admin,["hello"]') == (200, b"ok")
    assert client.post(b"40") == (200, b"ok")
    status, body = client.get()
    (connect,) = packets(body)
    assert connect.startswith("40{") and set(json.loads(connect[2:])) == {"sid", "pid"}
    bystander.gw.publish("for everyone")
    wait_until(lambda: len(bystander.client.got) == len(bystander.sent) + 1)
    status, body = client.get()
    (event,) = packets(body)
    assert json.loads(event[2:])[:2] == ["message", "for everyone"]
    bystander.sent.append("for everyone")
    bystander.check()


def test_deeply_nested_json_is_a_protocol_error(bystander, raw_ws):
    """JSON nested deeper than Python's recursion limit: the session is closed as for any bad
    packet (an Engine.IO close, a 400 on polling), counted as a protocol error, nothing else."""
    port = bystander.gw.port
    deep = "[" * 5000 + "]" * 5000
    ws = raw_ws(port, path="/socket.io/?EIO=4&transport=websocket")
    ws.recv_frame()
    ws.send_frame(OP_TEXT, b"40")
    ws.recv_frame()
    ws.send_frame(OP_TEXT, f'42["x",{deep}]'.encode())
    assert ws.recv_frame()[2] == b"1"
    ws2 = raw_ws(port, path="/socket.io/?EIO=4&transport=websocket")
    ws2.recv_frame()
    ws2.send_frame(OP_TEXT, b"40")
    ws2.recv_frame()
    ws2.send_frame(OP_TEXT, b'451-["x",' + b"[" * 950 + b'{"_placeholder":true,"num":0}' + b"]" * 950 + b"]")
    ws2.send_frame(2, b"attachment")
    assert ws2.recv_frame()[2] == b"1"
    client = RawPolling(port)
    status, reply = client.post(f"40\x1e42[\"x\",{deep}]".encode())
    assert status == 400 and json.loads(reply)["code"] == 3
    assert bystander.gw.stats.protocol_errors == 3
    bystander.check()


def test_raw_upgrade_mid_stream_loses_nothing(make_gateway, raw_ws):
    """Polling → WebSocket by hand (2probe/3probe, a poll, then 5) while messages flow: the
    messages before the upgrade come by polling, those after by WebSocket, none lost or doubled."""
    gw = make_gateway(None)
    client = RawPolling(gw.port)
    assert client.post(b"40") == (200, b"ok")
    status, body = client.get()
    assert packets(body)[0].startswith("40{")
    total = 400
    stop = threading.Event()

    def produce():
        for i in range(total):
            if stop.is_set():
                return
            gw.publish(f"u {i}")
            time.sleep(0.002)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    got: List[Tuple[str, int]] = []  # (payload, offset)

    def take(packet: str) -> None:
        if packet.startswith("42"):
            name, data, offset = json.loads(packet[2:])
            assert name == "message"
            got.append((data, int(offset)))
        else:
            assert packet in ("6", "2"), packet

    try:
        wait_until(lambda: gw.stats.zmq_messages >= 20)
        for _ in range(2):
            status, body = client.get()
            assert status == 200
            for packet in packets(body):
                take(packet)
        by_polling = len(got)
        ws = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
        ws.send_frame(OP_TEXT, b"2probe")
        assert ws.recv_frame()[2] == b"3probe"
        status, body = client.get()  # the last poll (the server may answer it with a noop)
        for packet in packets(body):
            take(packet)
        ws.send_frame(OP_TEXT, b"5")
        status, body = client.get()
        assert status == 400 and json.loads(body)["code"] == 3  # the session is on WebSocket now
        deadline = time.monotonic() + 10
        while not got or got[-1][0] != f"u {total - 1}":
            assert time.monotonic() < deadline, got[-3:]
            take(ws.recv_frame()[2].decode())
    finally:
        stop.set()
        producer.join(5)
    assert by_polling > 0 and len(got) > by_polling
    first = int(got[0][0].split()[1])
    assert [g[0] for g in got] == [f"u {i}" for i in range(first, total)]
    offsets = [g[1] for g in got]
    assert offsets == sorted(set(offsets))


def test_a_poll_that_comes_during_the_upgrade_is_released_with_a_noop(make_gateway, raw_ws):
    """The client waits for its last poll to end before it sends "5": a poll that reaches the
    server after "2probe" is answered at once with a noop, not held until the poll timeout."""
    gw = make_gateway(None)
    client, ws = probed(gw, raw_ws)
    started = time.monotonic()
    assert client.get(timeout=3) == (200, b"6")
    assert time.monotonic() - started < 1
    ws.send_frame(OP_TEXT, b"5")
    wait_until(lambda: gw.sio.sessions[client.sid].transport == "websocket")
    gw.publish("over the websocket")
    assert json.loads(ws.recv_frame()[2][2:])[:2] == ["message", "over the websocket"]


def test_polling_requests_share_one_keep_alive_connection(make_gateway):
    """Clients (python-socketio's requests session, browsers) send the next request on the same
    connection at once: the responses say keep-alive, and the connection really stays open."""
    gw = make_gateway(None)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.request("GET", "/socket.io/?EIO=4&transport=polling")
        response = conn.getresponse()
        assert response.getheader("Connection") == "keep-alive"
        sid = json.loads(response.read()[1:])["sid"]
        query = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        for method, body, expected in [("POST", b"40", b"ok"), ("GET", None, b"40{"),
                                       ("POST", b"42[\"x\"]\x1e3", b"ok"), ("GET", "nope", None)]:
            if body == "nope":
                conn.request("GET", "/socket.io/?EIO=4&transport=polling&sid=nope")
                response = conn.getresponse()
                assert response.status == 400 and response.getheader("Connection") == "keep-alive"
                response.read()
                continue
            conn.request(method, query, body=body)
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") == "keep-alive"
            assert response.read().startswith(expected)
    finally:
        conn.close()
    assert gw.stats.connections == 1


def test_open_packet_fields(make_gateway, raw_ws):
    gw = make_gateway(None, sio_ping_interval=12.5, sio_ping_timeout=7, max_message_size=500_000)
    polling = RawPolling(gw.port).open
    assert set(polling) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert polling["upgrades"] == ["websocket"]
    assert (polling["pingInterval"], polling["pingTimeout"], polling["maxPayload"]) == (12500, 7000, 500_000)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,}", polling["sid"])
    ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
    _fin, opcode, data = ws.recv_frame()
    assert opcode == OP_TEXT and data[:1] == b"0"
    opened = json.loads(data[1:])
    assert opened["upgrades"] == [] and opened["sid"] != polling["sid"]
    assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == (12500, 7000, 500_000)


def test_heartbeat_closes_a_silent_client_and_keeps_a_real_one(make_gateway, py_sio):
    gw = make_gateway(None, sio_ping_interval=0.3, sio_ping_timeout=0.3)
    url = f"http://127.0.0.1:{gw.port}"
    real_ws = py_sio(url, "websocket")
    real_polling = py_sio(url, "polling")
    silent = RawPolling(gw.port)
    assert silent.post(b"40") == (200, b"ok")
    seen: List[str] = []
    deadline = time.monotonic() + 5
    while "1" not in seen:  # polls (so pings reach it) but never answers them
        assert time.monotonic() < deadline, f"the silent client was not closed: {seen}"
        status, body = silent.get()
        if status == 400:
            assert json.loads(body)["code"] == 1
            break
        seen.extend(packets(body))
    assert "2" in seen, seen
    assert silent.sid not in gw.sio.sessions
    assert gw.stats.ping_timeouts >= 1
    time.sleep(1.0)  # several more ping rounds for the real clients
    gw.publish("still here")
    wait_until(lambda: real_ws.got and real_polling.got, message="both real clients' events")
    for client in (real_ws, real_polling):
        assert client.connected and client.connects == 1 and client.disconnects == []
        assert [g[1] for g in client.got] == ["still here"]


def test_the_main_page_and_plain_websocket_still_work_beside_socketio(make_gateway, raw_ws, py_sio):
    gw = make_gateway(None)
    sio_client = py_sio(f"http://127.0.0.1:{gw.port}", "websocket")
    plain = raw_ws(gw.port, path="/")
    wait_until(lambda: gw.clients >= 2)
    gw.publish("both")
    assert plain.recv_frame()[2] == b"both"
    wait_until(lambda: sio_client.got)
    assert sio_client.got[0][1] == "both"


def test_token_protects_socketio_handshakes(make_gateway, raw_ws, upgrade_request, http_exchange):
    from zmqws.auth import token_authenticator

    gw = make_gateway(None, authenticate=token_authenticator("s3cret"))
    status, headers, body = http_request(gw.port, "GET", "EIO=4&transport=polling")
    assert status == 403 and json.loads(body)["code"] == 4
    assert http_request(gw.port, "GET", "EIO=4&transport=polling&token=s3cret")[0] == 200
    assert http_request(gw.port, "GET", "EIO=4&transport=polling",
                        headers={"Authorization": "Bearer s3cret"})[0] == 200
    status, _, _ = http_exchange(gw.port, upgrade_request("/socket.io/?EIO=4&transport=websocket"))
    assert status == 401
    ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket&token=s3cret")
    assert ws.recv_frame()[2][:1] == b"0"


def test_socketio_disabled(make_gateway):
    gw = make_gateway(None, socketio=False)
    status, _, _ = http_request(gw.port, "GET", "EIO=4&transport=polling")
    assert status == 404


# =================================================================================================
# 5. metrics
# =================================================================================================


def test_metrics_count_socketio_clients(make_gateway, py_sio):
    gw = make_gateway(None)
    url = f"http://127.0.0.1:{gw.port}"
    py_sio(url, "websocket")
    py_sio(url, "polling")
    polling_raw = RawPolling(gw.port)
    assert polling_raw.post(b"40") == (200, b"ok")
    assert polling_raw.get()[1].startswith(b"40{")
    holder = threading.Thread(target=polling_raw.get, daemon=True)
    holder.start()  # a held poll of a session counts once, as that session
    try:
        wait_until(lambda: gw.sio.sessions[polling_raw.sid].poll_client is not None)
        status, headers, body = http_request(gw.port, "GET", "", path="/metrics")
    finally:
        gw.publish("release the poll")
        holder.join(5)
    assert status == 200
    text = body.decode()
    assert re.search(r'^zmqws_clients\{transport="socketio"\} 1$', text, re.M), text
    assert re.search(r'^zmqws_clients\{transport="socketio-polling"\} 2$', text, re.M), text
    assert re.search(r"^zmqws_socketio_sessions_total 3$", text, re.M), text


# =================================================================================================
# 6. Hypothesis over the codecs
# =================================================================================================


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_decode_payload_fails_only_with_socketio_error(body):
    try:
        result = eio.decode_payload(body)
    except eio.SocketIOError:
        return
    assert all(kind in "0123456" and isinstance(data, (str, bytes)) for kind, data in result)


SIO_TEXT = st.one_of(
    st.text(max_size=120),
    st.builds(lambda head, rest: head + rest,
              st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "51-", "61-", "52-", "510-", "2/a,",
                               "5-", "50-", "3/x,12", "21", "2", "0/", "²"]),
              st.text(alphabet=st.characters(codec="utf-8"), max_size=80)),
    st.builds(lambda head, rest: head + rest,
              st.sampled_from(["2", "3", "21", "5", "51-", "0", "4"]),
              st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=10).map(json.dumps)),
)


@settings(max_examples=600, deadline=None)
@given(SIO_TEXT)
def test_decode_sio_fails_only_with_socketio_error(text):
    try:
        packet = eio.decode_sio(text)
    except eio.SocketIOError:
        return
    assert 0 <= packet.type <= 6


@settings(max_examples=300, deadline=None)
@given(SIO_TEXT, st.lists(st.binary(max_size=20), max_size=12))
def test_reassembler_fails_only_with_socketio_error(text, buffers):
    try:
        packet = eio.decode_sio(text)
        if packet.type not in (eio.BINARY_EVENT, eio.BINARY_ACK):
            return
        reassembler = eio.Reassembler(packet)
        for data in buffers:
            done = reassembler.add(data)
            if done is not None:
                assert done.type in (eio.EVENT, eio.ACK)
                break
    except eio.SocketIOError:
        return


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 60, 2 ** 60)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
NSP = st.just("/") | st.from_regex(r"/[a-zA-Z0-9_\-/]{0,12}", fullmatch=True)
ACK_ID = st.none() | st.integers(0, 2 ** 53)
EVENT_NAME = st.text(max_size=10) | st.integers(-1000, 1000)


@st.composite
def sio_packets(draw):
    kind = draw(st.sampled_from([eio.CONNECT, eio.DISCONNECT, eio.EVENT, eio.ACK, eio.CONNECT_ERROR]))
    if kind == eio.CONNECT:
        data = draw(st.none() | st.dictionaries(st.text(max_size=6), JSON, max_size=4))
    elif kind == eio.DISCONNECT:
        data = None
    elif kind == eio.CONNECT_ERROR:
        data = draw(st.text(max_size=20) | st.dictionaries(st.text(max_size=6), JSON, max_size=3))
    elif kind == eio.EVENT:
        data = [draw(EVENT_NAME)] + draw(st.lists(JSON, max_size=4))
    else:
        data = draw(st.lists(JSON, max_size=4))
    ack_id = draw(ACK_ID) if kind in (eio.EVENT, eio.ACK) else None
    return kind, draw(NSP), ack_id, data


@settings(max_examples=500, deadline=None)
@given(sio_packets())
def test_encode_decode_sio_round_trip(packet):
    kind, nsp, ack_id, data = packet
    text = eio.encode_sio(kind, data, nsp=nsp, ack_id=ack_id)
    decoded_packet = eio.decode_sio(text)
    assert (decoded_packet.type, decoded_packet.nsp, decoded_packet.id, decoded_packet.data) == \
           (kind, nsp, ack_id, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([eio.EVENT, eio.ACK]), NSP, ACK_ID,
       st.lists(JSON | st.binary(max_size=16), min_size=1, max_size=4), st.binary(min_size=0, max_size=16),
       EVENT_NAME)
def test_binary_packets_round_trip(kind, nsp, ack_id, args, blob, name):
    data = ([name] if kind == eio.EVENT else []) + args + [{"nested": [blob]}]
    plain, buffers = eio.deconstruct(data)
    binary_kind = eio.BINARY_EVENT if kind == eio.EVENT else eio.BINARY_ACK
    text = eio.encode_sio(binary_kind, plain, nsp=nsp, ack_id=ack_id, attachments=len(buffers))
    packet = eio.decode_sio(text)
    assert (packet.type, packet.nsp, packet.id, packet.attachments) == (binary_kind, nsp, ack_id, len(buffers))
    reassembler = eio.Reassembler(packet)
    done = None
    for n, buffer in enumerate(buffers):
        done = reassembler.add(buffer)
        assert (done is None) == (n < len(buffers) - 1)
    assert done.type == kind and done.data == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("0123456"), st.text(alphabet=st.characters(
    blacklist_characters="\x1e", codec="utf-8"), max_size=20)) | st.tuples(st.just("4"), st.binary(max_size=20)),
    min_size=1, max_size=8))
def test_payload_round_trip(items):
    items = [(kind, data) if isinstance(data, str) else (eio.MESSAGE, data) for kind, data in items]
    assert eio.decode_payload(eio.encode_payload(items)) == items


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("0123456"), st.text(alphabet=st.characters(
    blacklist_characters="\x1e", codec="utf-8"), max_size=20)) | st.tuples(st.just("4"), st.binary(max_size=20)),
    min_size=1, max_size=4), max_size=4))
def test_payloads_joined_decode_to_their_packets(groups):
    """Payloads encoded apart (one per event, shared by the sessions) joined with the separator
    are one payload: what a polling session moving to WebSocket gets back as packets."""
    groups = [[(kind, data) if isinstance(data, str) else (eio.MESSAGE, data) for kind, data in g] for g in groups]
    assert eio.decode_payloads([eio.encode_payload(g) for g in groups]) == [p for g in groups for p in g]


# =================================================================================================
# 6. namespaces
# =================================================================================================


def poll_until(client: RawPolling, count: int, timeout: float = 5.0) -> List[str]:
    """Packets from a raw polling session's GETs (pings answered) until ``count`` non-ping ones."""
    got: List[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, got
        status, body = client.get()
        assert status == 200, body
        for packet in packets(body):
            if packet == "2":
                client.post(b"3")
            elif packet != "6":
                got.append(packet)
    return got


def sio_event(packet: str, nsp: str = "/") -> List[Any]:
    """The arguments of an EVENT packet (``42...`` as the Engine.IO message) of namespace ``nsp``."""
    head = "42" if nsp == "/" else f"42{nsp},"
    assert packet.startswith(head), packet
    return json.loads(packet[len(head):])


def events_by_namespace(items: List[str]) -> Dict[str, List[Any]]:
    """EVENT packets (one per namespace) as {namespace: arguments}."""
    out = {}
    for packet in items:
        nsp = packet[2:].partition(",")[0] if packet.startswith("42/") else "/"
        out[nsp] = sio_event(packet, nsp)
    return out


def test_namespaces_are_sockets_of_their_own(make_gateway, pull):
    """Raw Engine.IO: ``/`` and ``/custom`` on one session are two sockets (sids, pids, client
    ids, topics under ``custom/``); an unknown namespace is refused; ``41/custom,`` ends that
    socket only, and the namespace can be joined again on the same session."""
    sock, endpoint = pull
    gw = make_gateway(None, sio_namespaces=["/custom"], push_endpoint=endpoint)
    client = RawPolling(gw.port)
    body = b'40{"topics":["prices."]}\x1e40/custom,{"topics":["prices."]}\x1e40/nope,'
    assert client.post(body) == (200, b"ok")
    main, custom, refused = poll_until(client, 3)
    assert refused == '44/nope,{"message":"Invalid namespace"}'
    assert main.startswith("40{") and custom.startswith("40/custom,{")
    main, custom = json.loads(main[2:]), json.loads(custom[len("40/custom,"):])
    assert main["sid"] != custom["sid"] and main["pid"] != custom["pid"]
    gw.publish("p0", topic="prices.x")
    gw.publish("p1", topic="custom/prices.x")
    gw.publish("no", topic="custom/news")
    got = events_by_namespace(poll_until(client, 2))
    assert {nsp: args[:2] for nsp, args in got.items()} == {"/": ["message", "p0"], "/custom": ["message", "p1"]}
    assert client.post(b'42["order","a"]\x1e42/custom,7["order","b"]') == (200, b"ok")
    assert poll_until(client, 1) == ['43/custom,7[{"ok":true}]']
    received = [sock.recv_multipart() for _ in range(2) if sock.poll(5000)]
    assert [(r[0], r[2]) for r in received] == [(b"order", b"a"), (b"custom/order", b"b")]
    assert received[1][1] == received[0][1] + b"/custom"  # a client id of its own
    assert client.post(b"41/custom,") == (200, b"ok")
    gw.publish("p2", topic="custom/prices.x")
    gw.publish("p3", topic="prices.x")
    (event,) = poll_until(client, 1)
    assert sio_event(event)[:2] == ["message", "p3"]
    assert client.sid in gw.sio.sessions and list(gw.sio.sessions[client.sid].sockets) == ["/"]
    assert client.post(b"40/custom,") == (200, b"ok")  # no topic: everything under custom/
    (again,) = poll_until(client, 1)
    assert json.loads(again[len("40/custom,"):])["sid"] != custom["sid"]
    gw.publish("p4", topic="custom/news")
    (event,) = poll_until(client, 1)
    assert sio_event(event, "/custom")[:2] == ["message", "p4"]
    assert client.post(b'42/custom,1["subscribe","a."]') == (200, b"ok")
    assert poll_until(client, 1) == ['43/custom,1[{"topics":["a."]}]']  # replaces "everything"
    assert gw.hub.subscribers[gw.sio.sessions[client.sid].sockets["/custom"]].prefixes == [b"custom/a."]


def test_namespace_topics_obey_the_rights_of_the_zeromq_topics(make_gateway, pull):
    from zmqws.rights import Rights

    sock, endpoint = pull
    rights = Rights.of(read=["custom/a.", "b."], write=["custom/w."])
    gw = make_gateway(None, sio_namespaces=["custom"], push_endpoint=endpoint,
                      authenticate=lambda request: rights)
    client = RawPolling(gw.port)
    assert client.post(b'40/custom,{"topics":["b."]}') == (200, b"ok")
    assert poll_until(client, 1) == ['44/custom,{"message":"topic not allowed: custom/b."}']
    assert client.post(b"40/custom,") == (200, b"ok")
    assert poll_until(client, 1)[0].startswith("40/custom,{")
    socket = gw.sio.sessions[client.sid].sockets["/custom"]
    assert gw.hub.subscribers[socket].prefixes == [b"custom/a."]  # all it may read there
    assert client.post(b'42/custom,1["w.x","yes"]\x1e42/custom,2["b.x","no"]') == (200, b"ok")
    assert poll_until(client, 2) == ['43/custom,1[{"ok":true}]',
                                     '43/custom,2[{"ok":false,"error":"topic not allowed for writing"}]']
    assert sock.poll(5000) and sock.recv_multipart()[::2] == [b"custom/w.x", b"yes"]
    assert not sock.poll(200)


def test_namespaces_follow_the_upgrade_to_websocket(make_gateway, raw_ws):
    gw = make_gateway(None, sio_namespaces=["/custom"])
    client = RawPolling(gw.port)
    assert client.post(b'40{"topics":["t"]}\x1e40/custom,') == (200, b"ok")
    assert len(poll_until(client, 2)) == 2
    ws = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
    ws.send_frame(OP_TEXT, b"2probe")
    assert ws.recv_frame()[2] == b"3probe"
    assert client.get() == (200, b"6")
    ws.send_frame(OP_TEXT, b"5")
    wait_until(lambda: gw.sio.sessions[client.sid].transport == "websocket")
    gw.publish("c", topic="custom/t")
    gw.publish("m", topic="t")
    got = events_by_namespace([ws.recv_frame()[2].decode() for _ in range(2)])
    assert {nsp: args[:2] for nsp, args in got.items()} == {"/": ["message", "m"], "/custom": ["message", "c"]}
    ws.send_frame(OP_TEXT, b'42/custom,1["subscribe","x."]')
    assert ws.recv_frame()[2] == b'43/custom,1[{"topics":["x."]}]'



def count_encodes(monkeypatch, wire) -> List[int]:
    """The ids ``wire``'s kind encodes from now on (its ``encode`` wrapped)."""
    encoded: List[int] = []
    encode = type(wire).encode

    def counted(self, m, envelope):
        encoded.append(m.id)
        return encode(self, m, envelope)

    monkeypatch.setattr(type(wire), "encode", counted)
    return encoded

def test_a_message_is_encoded_once_per_namespace_over_websocket(make_gateway, raw_ws, monkeypatch):
    """Sockets of one namespace with different topics are on different routes: the event's
    frames are still built once for all of them."""
    gw = make_gateway(None, sio_namespaces=["/custom"])
    sockets = []
    for topics in (["a."], ["a.", "b."], ["a."]):
        ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
        ws.recv_frame()
        ws.send_frame(OP_TEXT, b"40/custom," + json.dumps({"topics": topics}).encode())
        assert ws.recv_frame()[2].startswith(b"40/custom,{")
        sockets.append(ws)
    (wire,) = gw.socketio._ws_wires.values()
    encoded = count_encodes(monkeypatch, wire)
    gw.publish("x", topic="custom/a.1")
    for ws in sockets:
        assert sio_event(ws.recv_frame()[2].decode(), "/custom")[:2] == ["message", "x"]
    assert len(encoded) == 1


def test_a_message_is_encoded_once_for_every_polling_session(make_gateway, monkeypatch):
    """Polling sessions with different topics are on different routes: an event's packets
    (the attachment's base64 too) are still encoded once, the same bytes in every answer."""
    gw = make_gateway(None)
    clients = []
    for topics in (["a."], ["a.", "b."], ["a."]):
        client = RawPolling(gw.port)
        assert client.post(b"40" + json.dumps({"topics": topics}).encode()) == (200, b"ok")
        assert poll_until(client, 1)[0].startswith("40{")
        clients.append(client)
    (wire,) = gw.socketio._poll_wires.values()
    encoded = count_encodes(monkeypatch, wire)
    gw.publish(b"\x00\xffbin", topic="a.1")
    bodies = [client.get()[1] for client in clients]
    assert len(encoded) == 1
    assert len(set(bodies)) == 1
    event, attachment = packets(bodies[0])
    assert event == f'451-["message",{{"_placeholder":true,"num":0}},"{encoded[0]}"]' and attachment == "bAP9iaW4="


def connected_polling(gw) -> RawPolling:
    """A raw polling session whose ``/`` socket joined topic ``t`` (its CONNECT answer read)."""
    client = RawPolling(gw.port)
    assert client.post(b'40{"topics":["t"]}') == (200, b"ok")
    assert poll_until(client, 1)[0].startswith("40{")
    return client


def publish_to_held_poll(gw, client: RawPolling, *later: Tuple[float, str]) -> Tuple[List[str], float]:
    """Each ``(delay, payload)`` published that long after a GET of ``client`` is held: the
    events of its answer, and when it came (``time.monotonic()``)."""
    with held_poll(gw, client) as answer:
        start = time.monotonic()
        for delay, payload in later:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            gw.publish(payload, topic="t")
        wait_until(lambda: answer, message="the answer")
        came = time.monotonic()
    (status, body), = answer
    assert status == 200
    return [sio_event(p)[1] for p in packets(body)], came


def test_poll_coalesce_a_polling_sockets_first_event_after_a_quiet_interval_goes_at_once(make_gateway):
    """Leading edge: a socket that had no event yet, or whose previous ones went the interval
    ago or more, gets the next at once."""
    gw = make_gateway(None, poll_coalesce_ms=400)
    client = connected_polling(gw)
    start = time.monotonic()
    assert publish_to_held_poll(gw, client, (0, "a"))[0] == ["a"]  # its first event
    assert time.monotonic() - start < 0.25
    time.sleep(0.5)  # quiet for longer than the interval
    start = time.monotonic()
    assert publish_to_held_poll(gw, client, (0, "b"))[0] == ["b"]
    assert time.monotonic() - start < 0.25


def test_poll_coalesce_a_polling_sockets_events_right_after_its_last_wait_and_go_together(make_gateway):
    """Events that come less than the interval after the socket's previous ones wait until
    the interval after those (not after their own first) and go in one answer."""
    gw = make_gateway(None, poll_coalesce_ms=800)
    client = connected_polling(gw)
    events, went = publish_to_held_poll(gw, client, (0, "a"))
    assert events == ["a"]
    # "b" 0.4 s after "a" went, "c" 0.1 s later: both 0.8 s after "a" (a trailing delay
    # would send them 0.8 s after "b": 1.2 s)
    events, came = publish_to_held_poll(gw, client, (0.4, "b"), (0.5, "c"))
    assert events == ["b", "c"]
    assert 0.6 <= came - went < 1.05


def test_poll_coalesce_an_ack_goes_after_the_events_gathered_before_it(make_gateway):
    gw = make_gateway(None, poll_coalesce_ms=1000)
    client = connected_polling(gw)
    assert publish_to_held_poll(gw, client, (0, "a"))[0] == ["a"]  # at once: "b" waits for the interval
    gw.publish("b", topic="t")
    (wire,) = gw.socketio._poll_wires.values()
    wait_until(lambda: wire._pacer.gathering, message="the event to be gathered")
    start = time.monotonic()
    assert client.post(b'421["subscribe","u"]') == (200, b"ok")
    status, body = client.get()
    assert time.monotonic() - start < 0.8
    event, ack = packets(body)
    assert sio_event(event)[:2] == ["message", "b"] and ack == '431[{"topics":["t","u"]}]'


def test_poll_coalesce_events_gathered_go_first_after_the_upgrade(make_gateway, raw_ws):
    gw = make_gateway(None, poll_coalesce_ms=1000)
    client = connected_polling(gw)
    assert publish_to_held_poll(gw, client, (0, "a"))[0] == ["a"]
    gw.publish("b", topic="t")  # gathered: "a" went less than the interval ago
    (wire,) = gw.socketio._poll_wires.values()
    wait_until(lambda: wire._pacer.gathering, message="the event to be gathered")
    ws = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
    ws.send_frame(OP_TEXT, b"2probe")
    assert ws.recv_frame()[2] == b"3probe"
    start = time.monotonic()
    ws.send_frame(OP_TEXT, b"5")
    assert sio_event(ws.recv_frame()[2].decode())[:2] == ["message", "b"]
    assert time.monotonic() - start < 0.8 and not wire._pacer.gathering
    gw.publish("c", topic="t")
    assert sio_event(ws.recv_frame()[2].decode())[:2] == ["message", "c"]


def test_packets_waiting_for_a_poll_go_as_frames_after_the_upgrade(make_gateway, raw_ws):
    gw = make_gateway(None)
    client = RawPolling(gw.port)
    assert client.post(b'40{"topics":["t"]}') == (200, b"ok")
    assert poll_until(client, 1)[0].startswith("40{")
    ws = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
    ws.send_frame(OP_TEXT, b"2probe")
    assert ws.recv_frame()[2] == b"3probe"
    gw.publish("text", topic="t")
    gw.publish(b"\x00\xff", topic="t")
    session = gw.sio.sessions[client.sid]
    wait_until(lambda: len(eio.decode_payloads(session.packets)) == 3, message="the events to wait for a poll")
    ws.send_frame(OP_TEXT, b"5")
    assert sio_event(ws.recv_frame()[2].decode())[:2] == ["message", "text"]
    assert ws.recv_frame()[2].decode().startswith('451-["message",{"_placeholder":true,"num":0}')
    _, opcode, data = ws.recv_frame()
    assert (opcode, data) == (OP_BINARY, b"\x00\xff")


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_node_client_on_two_namespaces(mode, make_gateway, node_sio):
    """socket.io-client multiplexes ``/`` and ``/custom`` on one connection: each gets its own
    events; disconnecting ``/custom`` leaves ``/`` and the connection as they are."""
    gw = make_gateway(None, sio_namespaces=["/custom"])
    client = node_sio(f"http://127.0.0.1:{gw.port}", transports=[mode], auth={"topics": ["a."]},
                      namespaces={"/custom": {"auth": {"topics": ["a."]}}}, stdin=True, echo=True)
    client.expect("connect ")
    client.expect("nsp-connect /custom false")
    gw.publish("main 1", topic="a.x")
    gw.publish("custom 1", topic="custom/a.x")
    gw.publish("other", topic="custom/b.x")
    events = [client.event() for _ in range(2)]
    assert sorted((e[3], e[1]) for e in events) == [("/", "main 1"), ("/custom", "custom 1")]
    client.send({"disconnect": "/custom"})
    client.expect("nsp-disconnect /custom io client disconnect")
    wait_until(lambda: list(next(iter(gw.sio.sessions.values())).sockets) == ["/"])
    gw.publish("custom 2", topic="custom/a.x")
    gw.publish("main 2", topic="a.x")
    name, data, _offset, nsp = client.event()
    assert (name, nsp, data) == ("message", "/", "main 2")
    client.send({"finish": True})
    result = client.result()
    assert [(e["nsp"], e["data"]) for e in result["events"] if e["data"].endswith("2")] == [("/", "main 2")]
    assert len(result["connects"]) == 1 and result["disconnects"] == ["io client disconnect"]
    assert gw.stats.sio_sessions == 1


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_python_socketio_client_on_two_namespaces(transport, make_gateway):
    import socketio

    gw = make_gateway(None, sio_namespaces=["/custom"])
    client = socketio.Client(reconnection=False)
    got: Dict[str, List[Any]] = {"/": [], "/custom": []}
    for nsp in got:
        client.on("message", partial(lambda nsp, data, offset: got[nsp].append(data), nsp), namespace=nsp)
    client.connect(f"http://127.0.0.1:{gw.port}", namespaces=["/", "/custom"], transports=[transport],
                   auth={"topics": ["a."]}, wait_timeout=5)
    try:
        assert client.get_sid("/") != client.get_sid("/custom")
        gw.publish("m", topic="a.1")
        gw.publish("c", topic="custom/a.1")
        gw.publish("x", topic="b.1")
        wait_until(lambda: got["/"] and got["/custom"], message="an event in each namespace")
        assert client.call("subscribe", "b.", namespace="/custom", timeout=5) == {"topics": ["a.", "b."]}
        gw.publish("cb", topic="custom/b.1")
        wait_until(lambda: len(got["/custom"]) == 2)
        assert got == {"/": ["m"], "/custom": ["c", "cb"]}
    finally:
        client.disconnect()


# =================================================================================================
# 6b. Engine.IO / Socket.IO conformance
# =================================================================================================


def test_a_silent_polling_session_is_closed_at_its_ping_timeout(make_gateway):
    """The session closes ``pingTimeout`` after its unanswered ping (a timer of its own, not a
    coarse tick: here a tick would be 0.2 s); its held poll gets the close packet, a later
    poll 400 "Session ID unknown"."""
    gw = make_gateway(None, sio_ping_interval=0.4, sio_ping_timeout=0.5)
    client = RawPolling(gw.port)
    assert client.post(b"40") == (200, b"ok")
    assert client.get()[1].startswith(b"40{")
    assert client.get() == (200, b"2")
    pinged = time.monotonic()
    assert client.get() == (200, b"1")
    waited = time.monotonic() - pinged
    assert 0.45 <= waited <= 0.56, waited
    assert_engineio_error(http_request(gw.port, "GET", f"EIO=4&transport=polling&sid={client.sid}"), 1)
    assert gw.stats.ping_timeouts == 1


def test_a_polling_session_that_answers_pings_stays(make_gateway):
    gw = make_gateway(None, sio_ping_interval=0.1, sio_ping_timeout=0.2)
    client = RawPolling(gw.port)
    assert client.post(b"40") == (200, b"ok")
    assert client.get()[1].startswith(b"40{")
    for _ in range(5):
        assert client.get() == (200, b"2")
        assert client.post(b"3") == (200, b"ok")
    assert client.sid in gw.sio.sessions and gw.stats.ping_timeouts == 0


def probed(gw, raw_ws) -> Tuple[RawPolling, Any]:
    """A raw polling session, connected to ``/``, and a raw WebSocket that has probed it."""
    client = RawPolling(gw.port)
    assert client.post(b"40") == (200, b"ok")
    assert client.get()[1].startswith(b"40{")
    ws = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
    ws.send_frame(OP_TEXT, b"2probe")
    assert ws.recv_frame()[2] == b"3probe"
    return client, ws


def upgraded(gw, raw_ws) -> Tuple[RawPolling, Any]:
    """A raw polling session, connected to ``/`` and upgraded to a raw WebSocket."""
    client, ws = probed(gw, raw_ws)
    assert client.get() == (200, b"6")
    return client, ws


def test_a_second_websocket_for_an_upgrading_or_upgraded_session_is_opened_then_closed(make_gateway, raw_ws):
    """engine.io completes that handshake and closes the new WebSocket at once (not an HTTP
    400); the session goes on over its own WebSocket, and polling with its sid is a 400."""
    gw = make_gateway(None)
    client, ws = upgraded(gw, raw_ws)
    probing = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")  # a 101
    assert probing.recv_frame()[1] == OP_CLOSE
    ws.send_frame(OP_TEXT, b"5")
    wait_until(lambda: gw.sio.sessions[client.sid].transport == "websocket")
    second = raw_ws(gw.port, path=f"/socket.io/?EIO=4&transport=websocket&sid={client.sid}")
    assert second.recv_frame()[1] == OP_CLOSE
    assert_engineio_error(http_request(gw.port, "GET", f"EIO=4&transport=polling&sid={client.sid}"), 3)
    gw.publish("still upgraded")
    assert sio_event(ws.recv_frame()[2].decode())[:2] == ["message", "still upgraded"]


def test_no_sio_recovery_sends_no_pid_and_no_offset(make_gateway, raw_ws):
    import socketio

    gw = make_gateway(None, sio_recovery=False)
    ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
    ws.recv_frame()
    ws.send_frame(OP_TEXT, b'40{"pid":"x","offset":"1"}')
    assert set(json.loads(ws.recv_frame()[2][2:])) == {"sid"}
    got: List[Any] = []
    client = socketio.Client(reconnection=False)
    client.on("message", lambda data: got.append(data))  # exactly the event's arguments
    client.connect(f"http://127.0.0.1:{gw.port}", transports=["websocket"], wait_timeout=5)
    try:
        gw.publish("text")
        gw.publish(b"\xff\x00")
        assert ws.recv_frame()[2] == b'42["message","text"]'
        assert ws.recv_frame()[2] == b'451-["message",{"_placeholder":true,"num":0}]'
        assert ws.recv_frame()[2] == b"\xff\x00"
        wait_until(lambda: len(got) == 2, message="both events in the one-argument handler")
        assert got == ["text", b"\xff\x00"]
    finally:
        client.disconnect()


class WriteRecorder:
    """A server-side client socket's stand-in that records each ``send``/``sendmsg`` (one write each)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.writes: List[bytes] = []

    def send(self, data, *args):
        sent = self.sock.send(data, *args)
        self.writes.append(bytes(data)[:sent])
        return sent

    def sendmsg(self, buffers, *args):
        sent = self.sock.sendmsg(buffers, *args)
        self.writes.append(b"".join(bytes(b) for b in buffers)[:sent])
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_the_connect_answer_is_written_on_its_own(make_gateway, raw_ws):
    """A recovery with messages to replay: the CONNECT answer goes in a write of its own, the
    events after it (clients that read one frame per read lose what shares its read)."""
    gw = make_gateway(None, linger=10)
    first = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
    first.recv_frame()
    first.send_frame(OP_TEXT, b"40")
    pid = json.loads(first.recv_frame()[2][2:])["pid"]
    gw.publish("seen")
    offset = sio_event(first.recv_frame()[2].decode())[2]
    first.sock.close()
    wait_until(lambda: not gw.sio.sessions)
    gw.publish("missed 1")
    gw.publish("missed 2")
    ws = raw_ws(gw.port, path="/socket.io/?EIO=4&transport=websocket")
    ws.recv_frame()
    (server_side,) = [c for c in gw.connection_list() if c.transport == "socketio"]
    recorder = server_side.sock = WriteRecorder(server_side.sock)
    ws.send_frame(OP_TEXT, b"40" + json.dumps({"pid": pid, "offset": offset}).encode())
    connect = ws.recv_frame()[2]
    assert json.loads(connect[2:])["pid"] == pid  # recovered
    assert [sio_event(ws.recv_frame()[2].decode())[1] for _ in range(2)] == ["missed 1", "missed 2"]
    wait_until(lambda: recorder.writes)  # recorded once sendmsg has returned
    assert recorder.writes[0] == bytes([0x81, len(connect)]) + connect


# =================================================================================================
# 7. the command line's Socket.IO options
# =================================================================================================


def test_cli_socketio_options():
    from zmqws.cli import build_parser, config_from_args
    from zmqws.gateway import Gateway

    def build_gateway(args, **overrides):
        return Gateway.from_config(config_from_args(args).replace(**overrides))

    args = build_parser().parse_args(["--sub", "tcp://127.0.0.1:1", "--sio-path", "/rt", "--sio-event", "topic",
                                      "--sio-ping-interval", "5", "--sio-ping-timeout", "2.5"])
    gw = build_gateway(args, port=0, close_timeout=1.0)
    assert (gw.sio.path, gw.socketio.event, gw.sio.ping_interval, gw.sio.ping_timeout) == ("/rt/", "topic", 5.0, 2.5)
    gw.start()
    try:
        status, _, body = http_request(gw.port, "GET", "EIO=4&transport=polling", path="/rt/")
        assert status == 200 and json.loads(body[1:])["pingInterval"] == 5000
        assert http_request(gw.port, "GET", "EIO=4&transport=polling")[0] == 404
    finally:
        gw.stop(timeout=1.0)
    args = build_parser().parse_args(["--sub", "tcp://127.0.0.1:1", "--no-socketio"])
    assert build_gateway(args, port=0).sio is None
    defaults = build_parser().parse_args(["--sub", "tcp://127.0.0.1:1"])
    gw = build_gateway(defaults, port=0)
    assert (gw.sio.path, gw.socketio.event, gw.sio.ping_interval, gw.sio.ping_timeout) == (
        "/socket.io/", "message", 25.0, 20.0)
    assert gw.socketio.namespaces == {"/"} and gw.socketio.recovery is True


def test_cli_namespace_and_recovery_options():
    from zmqws.cli import build_parser, config_from_args
    from zmqws.gateway import Gateway

    args = build_parser().parse_args(["--sub", "tcp://127.0.0.1:1", "--sio-namespace", "/custom",
                                      "--sio-namespace", "chat", "--no-sio-recovery"])
    gw = Gateway.from_config(config_from_args(args).replace(port=0))
    assert gw.socketio.namespaces == {"/", "/custom", "/chat"} and gw.socketio.recovery is False
    for bad in ("/", "a,b", "/x?y"):
        with pytest.raises(ValueError, match="not a namespace name"):
            Gateway(None, 0, sio_namespaces=[bad])


@pytest.mark.parametrize("argv, message", [
    (["--sio-path", "rt"], "--sio-path must start with /"),
    (["--sio-ping-interval", "0"], "must be more than 0"),
])
def test_cli_refuses_bad_socketio_options(argv, message, capsys):
    from zmqws.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--sub", "tcp://127.0.0.1:1"] + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# -- the two-way channel (--rpc) with socket.io-client -----------------------------------------------


def test_rpc_emit_with_ack_from_socket_io_client_gets_the_binary_reply(make_gateway, node_sio, zmq_context):
    """``emit(event, ...args, ack)`` of the real socket.io-client is a ``request`` (binary
    argument as a placeholder and a frame); the reply is its (binary) ack; ``send`` an event."""
    app = Application(zmq_context)
    try:
        gw = make_gateway(None, rpc_endpoint=app.endpoint)
        app.wait_peer()
        client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["websocket"], count=1,
                          emits=[{"event": "quote", "args": ["EURUSD", {"bin": "AAE="}], "ack": True}])
        client_id = app.recv_kind(b"connect")[1]
        _, asker, request_id, topic, payload, *attachments = app.recv_kind(b"request", timeout=20)
        assert (asker, topic) == (client_id, b"quote")
        assert json.loads(payload) == ["EURUSD", {"_placeholder": True, "num": 0}] and attachments == [b"\x00\x01"]
        app.send(b"reply", client_id, request_id, b"ok", b'[1.5,{"_placeholder":true,"num":0}]', b"\xff")
        app.send(b"send", client_id, b"news", b'["done"]')
        result = client.result()
    finally:
        app.close()
    assert result["acks"] == {"0": [1.5, {"bin": "/w=="}]}
    assert [(e["event"], e["data"]) for e in result["events"]] == [("news", "done")]


def test_rpc_namespace_leaving_and_closed_by_the_application(make_gateway, node_sio, zmq_context):
    """``41`` to one namespace is that socket's ``disconnect`` only (the session and ``/`` go on);
    the application's ``close`` of ``/`` is the client's "io server disconnect"."""
    app = Application(zmq_context)
    try:
        gw = make_gateway(None, rpc_endpoint=app.endpoint, sio_namespaces=["chat"])
        app.wait_peer()
        client = node_sio(f"http://127.0.0.1:{gw.port}", transports=["websocket"], stdin=True, echo=True,
                          namespaces={"/chat": {}})
        ids = {}
        for _ in range(2):
            parts = app.recv_kind(b"connect", timeout=20)
            ids[json.loads(parts[2])["namespace"]] = parts[1]
        client.expect("nsp-connect /chat")
        client.send({"disconnect": "/chat"})
        assert app.recv_kind(b"disconnect") == [b"disconnect", ids["/chat"], b"client namespace disconnect"]
        app.send(b"send", ids["/"], b"news", b'["still here"]')
        assert client.event()[:2] == ("news", "still here")
        app.send(b"close", ids["/"], b"1000", b"")
        assert client.expect("disconnect ") == "disconnect io server disconnect"
        assert app.recv_kind(b"disconnect") == [b"disconnect", ids["/"], b"server namespace disconnect"]
    finally:
        app.close()
