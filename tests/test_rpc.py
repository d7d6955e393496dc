"""The two-way channel (``--rpc``, :mod:`zmqws.rpc`): a real ROUTER as the application on
127.0.0.1, real WebSocket, SSE, long-poll and HTTP clients."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from zmqws.cli import config_from_args, parse_args
from zmqws.rights import Rights

from conftest import http_exchange, run_async, wait_until, ws_connect


class Application:
    """The application behind the gateway: a ROUTER bound to tcp://127.0.0.1:*."""

    def __init__(self, context: zmq.Context) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.identity: Optional[bytes] = None

    def wait_peer(self, timeout: float = 5.0) -> None:
        """Until a gateway's DEALER has completed its handshake (else its frames are refused)."""
        assert self.monitor.poll(int(timeout * 1000)), "the gateway's DEALER did not connect"
        recv_monitor_message(self.monitor)
        time.sleep(0.05)  # the DEALER's side of the pipe attaches just after ours

    def recv(self, timeout: float = 5.0) -> List[bytes]:
        """The next frames of a gateway (its identity kept, not returned)."""
        assert self.router.poll(int(timeout * 1000)), "nothing from the gateway"
        identity, *parts = self.router.recv_multipart()
        self.identity = identity
        return parts

    def recv_kind(self, kind: bytes, timeout: float = 5.0) -> List[bytes]:
        """The next frames of ``kind`` (others, e.g. connect events, skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            parts = self.recv(max(0.01, deadline - time.monotonic()))
            if parts[0] == kind:
                return parts

    def nothing(self, wait: float = 0.2) -> bool:
        return not self.router.poll(int(wait * 1000))

    def send(self, *parts: bytes) -> None:
        assert self.identity is not None
        self.router.send_multipart([self.identity, *parts])

    def close(self) -> None:
        self.router.disable_monitor()
        self.monitor.close(linger=0)
        self.router.close(linger=0)


@pytest.fixture
def app(zmq_context):
    application = Application(zmq_context)
    yield application
    application.close()


@pytest.fixture
def rpc_gateway(make_gateway, app):
    """``rpc_gateway(**options)``: a gateway whose DEALER is connected to ``app``."""
    def make(**options: Any):
        gateway = make_gateway(None, rpc_endpoint=app.endpoint, **options)
        app.wait_peer()
        return gateway
    return make


READYZ = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def test_readyz_waits_for_the_application(make_gateway, zmq_context):
    """The two-way channel counts for /readyz (503 naming it until the application is there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    gateway = make_gateway(None, rpc_endpoint=endpoint)
    status, _, body = http_exchange(gateway.port, READYZ)
    assert status == 503 and endpoint in body.decode()
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    try:
        wait_until(lambda: http_exchange(gateway.port, READYZ)[0] == 200, message="/readyz 200")
        assert gateway.upstream_status() == {endpoint: True}
    finally:
        router.close(linger=0)


def _info(parts: List[bytes]) -> Dict[str, Any]:
    assert parts[0] == b"connect" and len(parts) == 3, parts
    return json.loads(parts[2])


async def _ws_request(ws, request_id: Any, topic: str, data: Any) -> None:
    await ws.send(json.dumps({"rpc": request_id, "topic": topic, "data": data}))


# -- frames and WebSocket ------------------------------------------------------------------------


def test_websocket_connect_and_disconnect_frames_carry_the_info(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port, "/?topic=orders.&format=json&token=secret&x=1"):
            parts = app.recv()
            info = _info(parts)
            assert info["transport"] == "websocket" and info["namespace"] is None
            assert info["address"].startswith("127.0.0.1:") and info["token"] is None
            assert info["topics"] == ["orders."]
            assert info["query"] == {"topic": ["orders."], "format": ["json"], "x": ["1"]}  # never the token
            return parts[1]

    client_id = run_async(session())
    assert client_id.decode("ascii").split(".")[1].isdigit()
    assert app.recv() == [b"disconnect", client_id, b"1000"]


def test_websocket_request_reply_ok_error_and_id_echoed(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port) as ws:
            await _ws_request(ws, {"n": [1, "a"]}, "orders.new", {"qty": 2})
            kind, client_id, request_id, topic, payload = app.recv_kind(b"request")
            assert (kind, topic, json.loads(payload)) == (b"request", b"orders.new", {"qty": 2})
            assert request_id.isascii() and client_id.isascii()
            app.send(b"reply", client_id, request_id, b"ok", b'{"accepted":true}')
            assert json.loads(await ws.recv()) == {"reply": {"n": [1, "a"]}, "data": {"accepted": True}}
            await _ws_request(ws, 7, "orders.new", "text")
            _, client_id, request_id, _, payload = app.recv_kind(b"request")
            assert payload == b'"text"'  # the JSON of data
            app.send(b"reply", client_id, request_id, b"ok", b"not json")
            assert json.loads(await ws.recv()) == {"reply": 7, "data": "not json"}
            await _ws_request(ws, "e", "orders.new", None)
            _, client_id, request_id, _, _ = app.recv_kind(b"request")
            app.send(b"reply", client_id, request_id, b"error", b'{"code":42}')
            assert json.loads(await ws.recv()) == {"reply": "e", "error": {"code": 42}}

    run_async(session())
    assert gateway.stats.rpc_requests == 3 and gateway.stats.rpc_replies == 3


def test_request_timeout_then_a_late_reply_is_unknown(rpc_gateway, app):
    gateway = rpc_gateway(rpc_timeout=0.3)

    async def session():
        async with ws_connect(gateway.port) as ws:
            started = time.monotonic()
            await _ws_request(ws, 1, "t", 1)
            _, client_id, request_id, _, _ = app.recv_kind(b"request")
            assert json.loads(await ws.recv()) == {"reply": 1, "error": "timeout"}
            assert 0.25 <= time.monotonic() - started < 3
            app.send(b"reply", client_id, request_id, b"ok", b"1")
            wait_until(lambda: gateway.stats.rpc_unknown == 1, message="the late reply counted")

    run_async(session())
    assert gateway.stats.rpc_timeouts == 1 and gateway.stats.rpc_replies == 0


def test_dead_application_is_an_immediate_error(make_gateway):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    gateway = make_gateway(None, rpc_endpoint=endpoint, rpc_timeout=30)

    async def session():
        async with ws_connect(gateway.port) as ws:
            started = time.monotonic()
            await _ws_request(ws, 1, "t", 1)
            answer = json.loads(await ws.recv())
            assert time.monotonic() - started < 2
            return answer

    answer = run_async(session())
    assert answer["reply"] == 1 and "no application" in answer["error"]
    assert gateway.stats.rpc_unavailable >= 2  # the connect event and the request
    assert gateway.stats.rpc_requests == 0


def test_client_leaving_with_requests_in_flight(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port) as ws:
            await _ws_request(ws, 1, "t", 1)
            return app.recv_kind(b"request")

    _, client_id, request_id, _, _ = run_async(session())
    assert app.recv_kind(b"disconnect")[1] == client_id
    app.send(b"reply", client_id, request_id, b"ok", b"1")
    wait_until(lambda: gateway.stats.rpc_unknown == 1, message="the reply for a gone client counted")
    assert gateway.stats.rpc_replies == 0


def test_flood_past_max_inflight_is_refused(rpc_gateway, app):
    gateway = rpc_gateway(rpc_max_inflight=3)

    async def session():
        async with ws_connect(gateway.port) as ws:
            for i in range(5):
                await _ws_request(ws, i, "t", i)
            refusals = [json.loads(await ws.recv()) for _ in range(2)]
            requests = [app.recv_kind(b"request") for _ in range(3)]
            assert app.nothing()
            for _, client_id, request_id, _, payload in requests:
                app.send(b"reply", client_id, request_id, b"ok", payload)
            replies = [json.loads(await ws.recv()) for _ in range(3)]
            await _ws_request(ws, 9, "t", 9)  # room again
            _, client_id, request_id, _, _ = app.recv_kind(b"request")
            app.send(b"reply", client_id, request_id, b"ok", b"9")
            return refusals, replies, json.loads(await ws.recv())

    refusals, replies, last = run_async(session())
    assert refusals == [{"reply": 3, "error": "too many requests in flight"},
                        {"reply": 4, "error": "too many requests in flight"}]
    assert replies == [{"reply": i, "data": i} for i in range(3)]
    assert last == {"reply": 9, "data": 9}
    assert gateway.stats.rpc_refused == 2


def test_write_rights_apply_to_requests_and_messages(rpc_gateway, app):
    gateway = rpc_gateway(authenticate=lambda request: Rights.of(None, ["orders."], name="tok:1"))

    async def session():
        async with ws_connect(gateway.port, "/?format=json") as ws:
            assert _info(app.recv())["token"] == "tok:1"
            await _ws_request(ws, 1, "admin.reset", None)
            refused = json.loads(await ws.recv())
            await ws.send(json.dumps({"topic": "admin.x", "data": 1}))
            refused_message = json.loads(await ws.recv())
            assert app.nothing()
            await _ws_request(ws, 2, "orders.new", None)
            assert app.recv()[0] == b"request"
            return refused, refused_message

    refused, refused_message = run_async(session())
    assert refused == {"reply": 1, "error": "topic not allowed for writing"}
    assert refused_message == {"error": "topic not allowed for writing", "topic": "admin.x"}
    assert gateway.stats.writes_refused == 2


def test_client_messages_become_message_frames_without_push(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port, "/?format=json") as ws:
            await ws.send(json.dumps({"topic": "chat.room1", "data": {"text": "hi"}}))
            await ws.send(b"\x00\x01")
            return app.recv_kind(b"message"), app.recv_kind(b"message")

    (kind, client_id, topic, payload), binary = run_async(session())
    assert (topic, json.loads(payload)) == (b"chat.room1", {"text": "hi"})
    assert binary == [b"message", client_id, b"ws", b"\x00\x01"]
    assert gateway.stats.rpc_messages == 2


def test_send_and_close_to_a_websocket_client(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port, "/?format=json") as json_ws, \
                ws_connect(gateway.port, "/?format=topic") as topic_ws:
            json_id = app.recv_kind(b"connect")[1]
            topic_id = app.recv_kind(b"connect")[1]
            app.send(b"send", json_id, b"news", b"hello")
            app.send(b"send", topic_id, b"news", b"hello")
            app.send(b"send", b"0.0", b"news", b"nobody")
            got = json.loads(await json_ws.recv()), await topic_ws.recv()
            app.send(b"close", json_id, b"4001", b"bye")
            await json_ws.wait_closed()
            return got, json_ws.close_code, json_ws.close_reason

    (as_json, as_topic), code, reason = run_async(session())
    assert as_json == {"id": None, "topic": "news", "data": "hello"}
    assert as_topic == "news hello"
    assert (code, reason) == (4001, "bye")
    assert gateway.stats.rpc_sends == 2 and gateway.stats.rpc_closes == 1 and gateway.stats.rpc_unknown == 1


def test_malformed_frames_from_the_application_are_counted(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port):
            client_id = app.recv_kind(b"connect")[1]
            app.send(b"hello")
            app.send(b"reply", client_id, b"1", b"maybe", b"x")
            app.send(b"close", client_id, b"1005", b"reserved code")
            wait_until(lambda: gateway.stats.malformed == 3, message="three malformed messages")

    run_async(session())


# -- SSE and long-polling ------------------------------------------------------------------------


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    data = b""
    sock.settimeout(timeout)
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sse_client_events_send_and_close(rpc_gateway, app):
    gateway = rpc_gateway()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /events?topic=a&format=json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _read_until(sock, b"retry:")
        parts = app.recv()
        info = _info(parts)
        assert (info["transport"], info["topics"]) == ("sse", ["a"])
        client_id = parts[1]
        app.send(b"send", client_id, b"news", b"hello")
        event = _read_until(sock, b"hello")
        assert b'data: {"id":null,"topic":"news","data":"hello"}\n' in event and b"id: " not in event
        app.send(b"close", client_id, b"1000", b"")
        sock.settimeout(5)
        rest = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    assert app.recv_kind(b"disconnect") == [b"disconnect", client_id, b"closed"]


def _poll(sock: socket.socket, query: str = "topic=a") -> bytes:
    sock.sendall(f"GET /poll?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = _read_until(sock, b"\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                 .split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return body


def test_poll_client_events_and_sends(rpc_gateway, app):
    gateway = rpc_gateway(poll_timeout=5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /poll?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        parts = app.recv()
        assert _info(parts)["transport"] == "poll"
        client_id = parts[1]
        wait_until(lambda: gateway.stats.polls_held == 1, message="the poll held")
        app.send(b"send", client_id, b"news", b"held")
        body = _read_until(sock, b"held")
        assert body.endswith(b'[{"id":null,"topic":"news","data":"held"}]')
        app.send(b"send", client_id, b"news", b"between polls")  # kept for the next poll
        wait_until(lambda: gateway.stats.rpc_sends == 2, message="the second send")
        assert json.loads(_poll(sock)) == [{"id": None, "topic": "news", "data": "between polls"}]
        assert app.nothing()  # the same client: no second connect
    assert app.recv_kind(b"disconnect", timeout=5) == [b"disconnect", client_id, b"closed"]


# -- POST /rpc -------------------------------------------------------------------------------------


def _post(port: int, body: bytes, extra: str = "") -> bytes:
    return (f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _answer_next_request(app: Application, status: bytes, payload: bytes) -> Dict[str, Any]:
    info = _info(app.recv())
    _, client_id, request_id, topic, data = app.recv_kind(b"request")
    if status:
        app.send(b"reply", client_id, request_id, status, payload)
    return {"info": info, "topic": topic, "data": data, "client": client_id}


@pytest.mark.parametrize("status, payload, expected", [
    (b"ok", b'{"total":3}', (200, "application/json", b'{"total":3}')),
    (b"error", b"out of stock", (502, "application/json", b'{"error": "out of stock"}')),
    (b"", b"", (504, "application/json", b'{"error": "timeout"}')),
], ids=["200", "502", "504"])
def test_post_rpc(rpc_gateway, app, status, payload, expected):
    gateway = rpc_gateway(rpc_timeout=0.5)
    result: Dict[str, Any] = {}

    def application() -> None:
        result.update(_answer_next_request(app, status, payload))

    thread = threading.Thread(target=application)
    thread.start()
    code, headers, body = http_exchange(gateway.port, _post(gateway.port, b'{"topic":"orders.sum","data":[1,2]}'))
    thread.join(5)
    assert (code, headers["content-type"], body) == expected
    assert result["info"]["transport"] == "http" and result["topic"] == b"orders.sum"
    assert json.loads(result["data"]) == [1, 2]
    assert app.recv_kind(b"disconnect")[1] == result["client"]


def test_post_rpc_refusals(rpc_gateway, app):
    gateway = rpc_gateway(authenticate=lambda request: Rights.of(None, ["orders."]))
    code, _, body = http_exchange(gateway.port, _post(gateway.port, b'{"topic":"admin","data":1}'))
    assert (code, json.loads(body)) == (403, {"error": "topic not allowed for writing"})
    code, _, _ = http_exchange(gateway.port, _post(gateway.port, b'[1]'))
    assert code == 400
    code, headers, _ = http_exchange(gateway.port, b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert code == 405 and headers["allow"] == "POST"


# -- command line and /metrics --------------------------------------------------------------------


def test_cli_takes_rpc_without_sub():
    args = parse_args(["--rpc", "tcp://127.0.0.1:5599", "--rpc-max-inflight", "4", "--rpc-timeout", "2.5"])
    upstream = config_from_args(args).upstream
    assert (upstream.rpc_endpoint, upstream.sub_endpoints) == ("tcp://127.0.0.1:5599", ())
    assert (upstream.rpc_max_inflight, upstream.rpc_timeout) == (4, 2.5)
    result = subprocess.run([sys.executable, "-m", "zmqws", "--rpc", "tcp://127.0.0.1:5599", "--port", "0",
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "zmqws: configuration OK\n", result.stderr
    with pytest.raises(SystemExit):  # the workers cannot all bind one endpoint
        parse_args(["--rpc", "tcp://*:5599", "--bind", "--workers", "2"])


def test_metrics_show_the_rpc_counters(rpc_gateway, app):
    gateway = rpc_gateway()

    async def session():
        async with ws_connect(gateway.port) as ws:
            await _ws_request(ws, 1, "t", 1)
            app.recv_kind(b"request")

    run_async(session())
    _, _, body = http_exchange(gateway.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b"zmqws_rpc_requests_total 1\n" in body
    assert b"zmqws_rpc_timeouts_total 0\n" in body


def test_workers_each_have_their_dealer_and_replies_find_their_worker(spawn, app):
    parent = spawn(sys.executable, "-m", "zmqws", "--rpc", app.endpoint, "--workers", "2", "--port", "0")
    try:
        _workers_answer(parent, app)
    finally:  # a graceful stop: the workers stop with the parent (a SIGKILL would orphan them)
        parent.popen.terminate()
        parent.popen.wait(20)


def _workers_answer(parent: Any, app: Application) -> None:
    port = int(parent.wait_for_line("stderr", r"listening on port (\d+) with 2 workers", timeout=30).group(1))
    for _ in range(2):  # one DEALER per worker
        assert app.monitor.poll(10_000), "a worker's DEALER did not connect"
        recv_monitor_message(app.monitor)
    time.sleep(0.05)
    identities = set()

    async def client(n: int) -> Any:
        async with ws_connect(port) as ws:
            await _ws_request(ws, n, "t", n)
            return json.loads(await ws.recv())

    async def clients() -> List[Any]:
        tasks = [asyncio.ensure_future(client(n)) for n in range(8)]
        answered = 0
        while answered < 8:
            await asyncio.sleep(0.01)
            while app.router.poll(0):
                identity, *parts = app.router.recv_multipart()
                if parts[0] == b"request":
                    identities.add(identity)
                    app.router.send_multipart([identity, b"reply", parts[1], parts[2], b"ok", parts[4]])
                    answered += 1
        return await asyncio.gather(*tasks)

    assert run_async(clients(), timeout=30) == [{"reply": n, "data": n} for n in range(8)]
    assert 1 <= len(identities) <= 2


# -- Socket.IO: every namespace socket a client (python-socketio) ----------------------------------


@pytest.fixture
def sio_client():
    """``sio_client(port, transport, namespaces, **connect_options)`` → a connected
    python-socketio Client; disconnected at the end."""
    import socketio
    made = []

    def make(port: int, transport: str, namespaces: List[str], **options: Any):
        client = socketio.Client(reconnection=False)
        client.got = []
        made.append(client)
        client.on("*", lambda event, *args: client.got.append(("/", event, args)))
        for nsp in namespaces[1:]:
            client.on("*", lambda event, *args, nsp=nsp: client.got.append((nsp, event, args)), namespace=nsp)
        client.connect(f"http://127.0.0.1:{port}", namespaces=namespaces, transports=[transport],
                       wait_timeout=5, **options)
        return client

    yield make
    for client in made:
        client.disconnect()


def _sio_connects(app: Application, count: int) -> Dict[str, Any]:
    """The next ``count`` connect frames, by namespace: (client id, info)."""
    out = {}
    for _ in range(count):
        parts = app.recv_kind(b"connect")
        info = _info(parts)
        out[info["namespace"]] = (parts[1], info)
    return out


def _acker(results: Dict[str, Any], name: str):
    return lambda *args: results.__setitem__(name, args)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_socketio_namespace_sockets_are_clients_with_connect_and_disconnect(rpc_gateway, app, sio_client, transport):
    gateway = rpc_gateway(sio_namespaces=["chat"])
    client = sio_client(gateway.port, transport, ["/", "/chat"], auth={"user": "ann"})
    connects = _sio_connects(app, 2)
    (root_id, root), (chat_id, chat) = connects["/"], connects["/chat"]
    assert chat_id == root_id + b"/chat" and root_id.decode("ascii").split(".")[1].startswith("sio")
    for info in (root, chat):
        assert info["transport"] == ("socketio" if transport == "websocket" else "socketio-polling")
        assert info["address"].startswith("127.0.0.1:") and info["token"] is None
        assert info["auth"] == {"user": "ann"}
    assert chat["topics"] == ["chat/"]
    client.disconnect()
    gone = {parts[1]: parts[2] for parts in (app.recv_kind(b"disconnect") for _ in range(2))}
    assert set(gone) == {root_id, chat_id}  # its 41s, or its transport closing first
    assert set(gone.values()) <= {b"client namespace disconnect", b"transport closed"}


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_socketio_emit_with_ack_is_a_request_and_its_reply_the_ack(rpc_gateway, app, sio_client, transport):
    gateway = rpc_gateway(sio_namespaces=["chat"], rpc_timeout=0.5)
    client = sio_client(gateway.port, transport, ["/", "/chat"])
    chat_id = _sio_connects(app, 2)["/chat"][0]
    results: Dict[str, Any] = {}

    client.emit("sum", [1, 2], namespace="/chat", callback=_acker(results, "sum"))
    _, client_id, request_id, topic, payload = app.recv_kind(b"request")
    assert (client_id, topic, json.loads(payload)) == (chat_id, b"chat/sum", [[1, 2]])
    app.send(b"reply", chat_id, request_id, b"ok", b'[3, "three"]')
    wait_until(lambda: "sum" in results)
    assert results["sum"] == (3, "three")

    client.emit("blob", ("x", b"\x00\x01"), namespace="/chat", callback=_acker(results, "blob"))
    parts = app.recv_kind(b"request")
    assert json.loads(parts[4]) == ["x", {"_placeholder": True, "num": 0}] and parts[5:] == [b"\x00\x01"]
    app.send(b"reply", chat_id, parts[2], b"ok", b'[{"_placeholder":true,"num":0},"y"]', b"\xff\xfe")
    wait_until(lambda: "blob" in results)
    assert results["blob"] == (b"\xff\xfe", "y")

    client.emit("bad", 1, namespace="/chat", callback=_acker(results, "bad"))
    parts = app.recv_kind(b"request")
    app.send(b"reply", chat_id, parts[2], b"error", b'"no such thing"')
    client.emit("slow", 1, namespace="/chat", callback=_acker(results, "slow"))
    app.recv_kind(b"request")  # never answered
    wait_until(lambda: "bad" in results and "slow" in results)
    assert results["bad"] == ({"error": "no such thing"},)
    assert results["slow"] == ({"error": "timeout"},)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_socketio_messages_sends_and_close(rpc_gateway, app, sio_client, transport):
    gateway = rpc_gateway(sio_namespaces=["chat"])
    client = sio_client(gateway.port, transport, ["/", "/chat"])
    connects = _sio_connects(app, 2)
    root_id, chat_id = connects["/"][0], connects["/chat"][0]

    client.emit("hello", {"a": 1}, namespace="/chat")
    assert app.recv_kind(b"message") == [b"message", chat_id, b"chat/hello", b'[{"a":1}]']

    app.send(b"send", chat_id, b"news", b'["hi", 2]')
    app.send(b"send", root_id, b"news", b'[{"_placeholder":true,"num":0}]', b"\x01\x02")
    wait_until(lambda: len(client.got) == 2)
    assert sorted(client.got) == [("/", "news", (b"\x01\x02",)), ("/chat", "news", ("hi", 2))]

    app.send(b"close", chat_id, b"1000", b"bye")
    assert app.recv_kind(b"disconnect") == [b"disconnect", chat_id, b"server namespace disconnect"]
    wait_until(lambda: "/chat" not in client.namespaces)
    assert client.connected and "/" in client.namespaces
    app.send(b"send", root_id, b"still", b'["here"]')
    wait_until(lambda: len(client.got) == 3)
    assert client.got[2] == ("/", "still", ("here",))
    assert gateway.stats.rpc_sends == 3 and gateway.stats.rpc_closes == 1


def test_socketio_reference_example(spawn, sio_client):
    """examples/socketio_reference.py and the gateway as docs/socketio.md runs them (port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    example = spawn(sys.executable, "examples/socketio_reference.py", "--bind", endpoint)
    example.wait_for_line("stdout", "reference application on")
    gateway = spawn(sys.executable, "-m", "zmqws", "--rpc", endpoint, "--port", "0", "--sio-namespace", "custom",
                    "--sio-ping-interval", "0.3", "--sio-ping-timeout", "0.2", "--max-message-size", "1000000",
                    "--handshake-timeout", "1")
    port = int(gateway.wait_for_line("stderr", r"listening on \S+:(\d+)/").group(1))
    # ready once the DEALER is connected: a CONNECT before that reaches no application
    wait_until(lambda: http_exchange(port, READYZ)[0] == 200, message="/readyz 200")
    client = sio_client(port, "websocket", ["/", "/custom"], auth={"token": "123"})
    wait_until(lambda: len(client.got) == 2)
    assert sorted(client.got) == [("/", "auth", ({"token": "123"},)), ("/custom", "auth", ({"token": "123"},))]

    client.emit("message", (1, "2", {"3": [True]}, b"\x04"))
    wait_until(lambda: len(client.got) == 3)
    assert client.got[2] == ("/", "message-back", (1, "2", {"3": [True]}, b"\x04"))
    assert client.call("message-with-ack", (1, "2", b"\x03"), timeout=5) == (1, "2", b"\x03")
