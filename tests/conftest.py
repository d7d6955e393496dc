"""Shared fixtures for the integration tests that talk to a real server on 127.0.0.1.

Everything started here (servers, gateways, ZeroMQ sockets, raw sockets) is
stopped or closed by a fixture finalizer, and every wait is bounded.

* ``make_server(**options)`` / ``echo_server``: a running :class:`WebSocketServer`.
* ``zmq_context``, ``pub``: a ZeroMQ PUB socket bound to ``tcp://127.0.0.1:*``.
* ``make_gateway(endpoints, **options)`` / ``gateway``: a running :class:`Gateway`.
* ``wait_subscribed(pub, gateway)``: the slow-joiner fence (see its docstring).
* ``pull``: a PULL socket bound to ``tcp://127.0.0.1:*``, for client → ZeroMQ messages.
* ``raw_ws(port, ...)``: a blocking raw-socket WebSocket client (masked frames by hand).
* ``run_async(coro, timeout)``: run asyncio client code under a deadline.
* ``wait_until(predicate, timeout)``: poll a condition under a deadline.
* ``http_exchange(port, request_bytes)``, ``upgrade_request(...)``, ``request_status(port, request_bytes)``,
  ``response_head(sock)``: raw HTTP.
* ``http_conn(port)``, ``get(conn, target)``: ``http.client`` requests; ``read_response(sock)``:
  one response from a raw socket; :class:`SSEClient` (with :class:`SSEParser`): an event stream.
* ``recv``, ``recv_json``, ``nothing_within``: bounded receives of a ``websockets`` client.
* ``make_zmq(kind)``, ``recv_parts``: ZeroMQ sockets of any kind bound to ``tcp://127.0.0.1:*``.
* ``inflate(payload, wbits)``: a permessage-deflate payload inflated by zlib.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import struct
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import pytest
from websockets.asyncio.client import connect
import zmq

from zmqws.protocol.frames import OP_CLOSE, encode_close_payload, encode_frame
from zmqws.gateway import Gateway
from zmqws.server import WebSocketServer

CONNECT_TIMEOUT = 5.0


# -- small helpers -------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005,
               message: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def run_async(coro, timeout: float = 15.0):
    """Run a coroutine on a fresh event loop, failing (not hanging) after ``timeout`` seconds."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def upgrade_request(path: str = "/", *, method: str = "GET", key: Optional[str] = "dGhlIHNhbXBsZSBub25jZQ==",
                    version: Optional[str] = "13", host: str = "127.0.0.1",
                    extra: Tuple[Tuple[str, str], ...] = ()) -> bytes:
    """The bytes of a WebSocket opening handshake request (fields can be left out or broken)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> Tuple[int, dict, bytes]:
    """Send raw request bytes, read one response (to its Content-Length, or until the server
    closes when it has none, or the head only for HEAD); (status, headers, body)."""
    head_only = request.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no end of response within {timeout} s: {data[:200]!r}")
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if head_only or (match and len(rest) >= int(match.group(1))):
                    # keep-alive: the server may keep the connection open; wait a moment for
                    # stray bytes after the response (a HEAD body would be a bug)
                    sock.settimeout(0.2)
                    try:
                        extra = sock.recv(65536)
                    except socket.timeout:
                        extra = b""
                    data += extra
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers, body


class RawWebSocket:
    """A blocking WebSocket client on a plain socket: frames are built and parsed by hand."""

    MASK = b"\x37\xfa\x21\x3d"

    def __init__(self, port: int, *, rcvbuf: Optional[int] = None, timeout: float = CONNECT_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so that the advertised window is small too
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.closed = False

    # handshake
    def handshake(self, path: str = "/", **request_options) -> bytes:
        """Send an upgrade request; return the response head; assert 101."""
        self.sock.sendall(upgrade_request(path, **request_options))
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed during the handshake: {self.buf!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return head

    # output
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
                   masked: bool = True) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, rsv1=rsv1,
                                       mask=self.MASK if masked else None))

    def send_close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        self.send_frame(OP_CLOSE, encode_close_payload(code, reason))

    # input
    def _read_exactly(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("frame not complete in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buf)} of {n} bytes read")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self, timeout: float = CONNECT_TIMEOUT) -> Tuple[bool, int, bytes]:
        """One server frame: (fin, opcode, payload); server frames must not be masked."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read_exactly(2, deadline)
        assert not b1 & 0x80, "a server frame is masked"
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exactly(2, deadline))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exactly(8, deadline))[0]
        payload = self._read_exactly(length, deadline) if length else b""
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_close(self, timeout: float = CONNECT_TIMEOUT) -> Tuple[Optional[int], str, List[Tuple[int, bytes]]]:
        """Read frames until a close frame: (code, reason, [(opcode, payload) before it])."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            _fin, opcode, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if opcode == OP_CLOSE:
                if len(payload) >= 2:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8"), before
                return None, "", before
            before.append((opcode, payload))

    def wait_eof(self, timeout: float = CONNECT_TIMEOUT) -> float:
        """Read (and drop) until the server closes TCP; return the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        self.buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the server did not close the connection within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - start
            except socket.timeout:
                continue
            if not chunk:
                return time.monotonic() - start

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass


# -- fixtures: helpers as callables -----------------------------------------------------------


@pytest.fixture(name="wait_until")
def _wait_until_fixture():
    return wait_until


@pytest.fixture(name="run_async")
def _run_async_fixture():
    return run_async


@pytest.fixture(name="http_exchange")
def _http_exchange_fixture():
    return http_exchange


@pytest.fixture(name="upgrade_request")
def _upgrade_request_fixture():
    return upgrade_request


@pytest.fixture
def raw_ws():
    """``raw_ws(port, handshake=True, rcvbuf=None, **request_options)`` → a RawWebSocket, closed at teardown."""
    made: List[RawWebSocket] = []

    def make(port: int, handshake: bool = True, rcvbuf: Optional[int] = None, **request_options):
        client = RawWebSocket(port, rcvbuf=rcvbuf)
        made.append(client)
        if handshake:
            client.handshake(**request_options)
        return client

    yield make
    for client in made:
        client.close()


# -- fixtures: servers ----------------------------------------------------------------------


@pytest.fixture
def make_server():
    """``make_server(**options)`` → a started WebSocketServer on a free port; stopped at teardown."""
    servers: List[WebSocketServer] = []

    def make(**options) -> WebSocketServer:
        options.setdefault("close_timeout", 1.0)
        server = WebSocketServer(0, **options)
        servers.append(server)
        server.start()
        assert server.port
        return server

    yield make
    for server in servers:
        server.stop(timeout=1.0)


def _echo(client, data):
    client.send(data)


@pytest.fixture
def echo_server():
    """A running echo server (every message comes back to its sender); context-managed."""
    with WebSocketServer(0, on_message=_echo, close_timeout=1.0) as server:
        yield server


@pytest.fixture
def zmq_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Pub:
    """A PUB socket and the endpoint it is bound to."""

    def __init__(self, socket_: zmq.Socket, endpoint: str) -> None:
        self.socket = socket_
        self.endpoint = endpoint

    def send(self, payload: bytes) -> None:
        self.socket.send(payload)

    def send_multipart(self, parts) -> None:
        self.socket.send_multipart(parts)


@pytest.fixture
def make_pub(zmq_context):
    """``make_pub(connect=None)``: a PUB bound to tcp://127.0.0.1:* (or connected to ``connect``)."""
    sockets: List[zmq.Socket] = []

    def make(connect: Optional[str] = None) -> Pub:
        sock = zmq_context.socket(zmq.PUB)
        sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # no silent drops at the publisher in tests
        if connect is not None:
            sock.connect(connect)
            return Pub(sock, connect)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return Pub(sock, f"tcp://127.0.0.1:{port}")

    yield make
    for sock in sockets:
        sock.close(linger=0)


@pytest.fixture
def pub(make_pub) -> Pub:
    return make_pub()


@pytest.fixture
def make_gateway():
    """``make_gateway(endpoints, **options)`` → a started Gateway on a free port; stopped at teardown."""
    gateways: List[Gateway] = []

    def make(endpoints=None, **options) -> Gateway:
        options.setdefault("close_timeout", 1.0)
        options.setdefault("first_id", 1)  # small, predictable ids (the default comes from the clock)
        gateway = Gateway(endpoints, 0, **options)
        gateways.append(gateway)
        gateway.start()
        return gateway

    yield make
    for gateway in gateways:
        gateway.stop(timeout=1.0)


PROBE = b"__zmqws_test_probe__"
FENCE = b"__zmqws_test_fence__"


@pytest.fixture
def pull(zmq_context):
    """A PULL socket bound to tcp://127.0.0.1:* → (socket, endpoint), for client → ZeroMQ tests."""
    sock = zmq_context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def wait_subscribed(pub: Pub, gateway: Gateway, timeout: float = 5.0) -> None:
    """Return once messages sent on ``pub`` reach the gateway's clients (ZeroMQ slow joiner).

    A raw WebSocket client connects; probes are published until one reaches
    it (then the SUB is connected and subscribed); then a fence message is
    published and read, so every probe still in flight has been delivered
    before this returns (one PUB→SUB pipe keeps order).  The client then
    closes, so that no later client sees a probe.
    """
    before = gateway.clients
    client = RawWebSocket(gateway.port)
    try:
        client.handshake()
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway's SUB did not receive from {pub.endpoint} "
                                     f"within {timeout} s")
            pub.send(PROBE)
            try:
                client.recv_frame(timeout=0.02)
                break
            except socket.timeout:
                continue
        pub.send(FENCE)
        while client.recv_frame(timeout=max(0.01, deadline - time.monotonic()))[2] != FENCE:
            pass
        client.send_close(1000)
        client.recv_close()
    finally:
        client.close()
    wait_until(lambda: gateway.clients == before, message="the probe client to be gone")


@pytest.fixture(name="wait_subscribed")
def _wait_subscribed_fixture():
    return wait_subscribed


@pytest.fixture
def gateway(pub):
    """A running Gateway whose SUB is connected to ``pub`` and already receiving; context-managed
    (``__exit__`` stops it: 1001 to the clients, sockets closed, thread joined)."""
    with Gateway(pub.endpoint, 0, close_timeout=1.0) as gw:
        wait_subscribed(pub, gw)
        yield gw
    assert gw._thread is None, "the loop thread was not joined"


def ws_client(url: str, **options):
    """A ``websockets`` client of ``url``: no compression (unless asked), no proxy, no
    client-side pings, no message size limit; short opening and closing timeouts."""
    options.setdefault("compression", None)
    options.setdefault("proxy", None)
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 2)
    options.setdefault("ping_interval", None)
    options.setdefault("max_size", None)
    return connect(url, **options)


def ws_connect(port: int, path: str = "/", **options):
    """:func:`ws_client` of ``ws://127.0.0.1:PORT/PATH``."""
    return ws_client(f"ws://127.0.0.1:{port}{path}", **options)


NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_ready() -> str:
    """The node binary, with tests/node's packages (ws, socket.io-client) installed: CI runs
    ``npm ci`` there; else they are installed now."""
    node = shutil.which("node")
    assert node, "node is not installed"
    if not all((NODE_DIR / "node_modules" / package / "package.json").is_file()
               for package in ("ws", "socket.io-client")):
        npm = shutil.which("npm")
        assert npm, "npm is not installed"
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=180, stdout=subprocess.DEVNULL)
    return node


class NodeProcess:
    """A Node.js test client as a subprocess: stdout read by the subclass, stderr kept in a file."""

    def __init__(self, args: List[str], stderr_path, stdin: bool = False) -> None:
        self._stderr = open(stderr_path, "w+b")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self._buf = b""

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._stderr.close()


# -- child processes ----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")


@contextlib.contextmanager
def sigint_not_ignored():
    """Spawn children with SIGINT at its default even if this process inherited SIG_IGN.

    A shell starts background jobs with SIGINT ignored, children inherit that
    across exec, and Python then installs no KeyboardInterrupt handler: the
    SIGINT tests would test the runner's environment, not zmqws.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to SIG_DFL on exec
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
    else:
        yield


class ChildProcess:
    """A running child (``python -m zmqws``, an example...) with its stdout and stderr read
    line by line on threads, so that a test can wait for a line without blocking."""

    def __init__(self, argv: List[str], env: Optional[dict] = None) -> None:
        with sigint_not_ignored():
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env or CHILD_ENV, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        self.lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True)
                         for name in self.lines]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        for line in getattr(self.popen, name):
            self.lines[name].put(line)
        self.lines[name].put(None)

    def wait_for_line(self, name: str, pattern: "Union[str, re.Pattern[str]]",
                      timeout: float = 10.0) -> "re.Match[str]":
        """The first line on ``name`` (stdout or stderr) not yet consumed that matches ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self.lines[name].get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen[name].append(line)
            match = regex.search(line)
            if match:
                return match
        raise AssertionError(f"no line matching {regex.pattern!r} on {name} within {timeout} s; "
                             f"seen: {''.join(self.seen[name])!r}")

    def rest(self, name: str) -> str:
        """Everything the child wrote on ``name`` (call it once the child has exited)."""
        for reader in self._readers:
            reader.join(5)
        while True:
            try:
                line = self.lines[name].get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen[name].append(line)
        return "".join(self.seen[name])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            stream.close()


@pytest.fixture
def spawn():
    """``spawn(*argv, env=None)``: start a :class:`ChildProcess`; every one is killed at the end."""
    processes: List[ChildProcess] = []

    def start(*argv: str, env: Optional[dict] = None) -> ChildProcess:
        process = ChildProcess(list(argv), env=env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


# -- HTTP clients: http.client, raw responses, event streams ---------------------------------------


def _parse_head(head: bytes) -> Tuple[int, Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = (lines[0] + " ").split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


def _recv_until(sock: socket.socket, done: Callable[[bytes], Any], timeout: float, what: str) -> Any:
    """Read from ``sock`` until ``done(data)`` gives something (returned), within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        result = done(data)
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {what} within {timeout} s: {data[:200]!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {what}: {data[:200]!r}")
        data += chunk


def read_response(sock: socket.socket, timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP response with a Content-Length from a raw socket."""
    def whole(data: bytes) -> Optional[Tuple[int, Dict[str, str], bytes]]:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        status, headers = _parse_head(head)
        length = int(headers.get("content-length", "0"))
        return (status, headers, rest[:length]) if len(rest) >= length else None
    return _recv_until(sock, whole, timeout, "complete response")


def response_head(sock: socket.socket, timeout: float = 5.0) -> Tuple[int, bytes, bytes]:
    """Read an HTTP response head from ``sock``: (status, head, bytes after it)."""
    def head_of(data: bytes) -> Optional[Tuple[int, bytes, bytes]]:
        head, sep, rest = data.partition(b"\r\n\r\n")
        return (int(head.split(b" ", 2)[1]), head, rest) if sep else None
    return _recv_until(sock, head_of, timeout, "response head")


def request_status(port: int, request: bytes, source: Optional[str] = None) -> int:
    """Send raw request bytes and return the status of the response head (then close)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        return response_head(sock)[0]
    finally:
        sock.close()


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


# -- permessage-deflate --------------------------------------------------------------------------

TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: the end of a sync flush, removed by the sender


def inflate(payload: bytes, wbits: int = 15) -> bytes:
    """A compressed message's payload inflated by zlib, as a client does (RFC 7692 §7.2.2)."""
    d = zlib.decompressobj(-wbits)
    return d.decompress(payload + TAIL) + d.flush()


# -- asyncio WebSocket clients: bounded receives ---------------------------------------------------


async def recv(ws, timeout: float = 5.0):
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws, timeout: float = 5.0):
    return json.loads(await recv(ws, timeout))


async def nothing_within(ws, seconds: float) -> bool:
    """True if no message arrives on ``ws`` within ``seconds``."""
    try:
        message = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"unexpected message {message!r}")


# -- ZeroMQ sockets of any kind --------------------------------------------------------------------


@pytest.fixture
def make_zmq(zmq_context):
    """``make_zmq(kind, **options)`` → (socket, endpoint): bound to tcp://127.0.0.1:*, closed at teardown."""
    sockets = []

    def make(kind: int, subscribe: Optional[bytes] = None, **options):
        sock = zmq_context.socket(kind)
        sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        if subscribe is not None:
            sock.setsockopt(zmq.SUBSCRIBE, subscribe)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}"

    yield make
    for sock in sockets:
        sock.close(linger=0)


def recv_parts(sock: zmq.Socket, timeout: float = 5.0) -> List[bytes]:
    assert sock.poll(int(timeout * 1000)), f"nothing received within {timeout} s"
    return sock.recv_multipart(zmq.NOBLOCK)
