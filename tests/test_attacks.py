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
import http.client
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import zmq
from websockets.sync.client import connect as sync_connect

from conftest import wait_until
from zmqws.frames import OP_BINARY, OP_TEXT
from zmqws.gateway import Gateway
from zmqws.proxy import Sequencer

KiB = 1024

# -- 1. Socket.IO topic rights bypass --------------------------------------------------------


# -- 2. Pipelined HTTP requests queue responses without bound ------------------------------


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
        for client in list(gw._clients.values()):
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


# -- 5. Topics per client without bound, quadratic bookkeeping -------------------------------


# -- 6. One exception in the send path wedges routes -----------------------------------------


def test_6_a_payload_that_is_not_utf8_in_text_mode_wedges_no_route(make_gateway, raw_ws):
    gw = make_gateway(None, payload_mode="text")
    # The json route first: encoding it is what raised, and the routes after it never sent again.
    clients = {fmt: raw_ws(gw.port, path=f"/?format={fmt}") for fmt in ("json", "payload", "topic")}
    stream = EventStream(gw.port, "/events")
    try:
        assert stream.read_head().startswith(b"HTTP/1.1 200 ")
        wait_until(lambda: len(gw._states) == 4)
        bad = b"\xff\xfe not UTF-8"
        gw.publish(bad, topic="t")
        gw.publish("good 1", topic="t")
        wait_until(lambda: gw.stats.zmq_messages == 2)
        late = raw_ws(gw.port, path="/?format=json")  # joins afterwards
        wait_until(lambda: len(gw._states) == 5)
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


# -- 8. A bad Socket.IO recovery offset ------------------------------------------------------


# -- 9. Malformed input and tracebacks -------------------------------------------------------


# -- 10. Writing upstream outside one's rights ----------------------------------------------


# -- 11. /metrics with --token ----------------------------------------------------------------


# -- 12. DNS rebinding and cross-site WebSocket ----------------------------------------------


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


# -- The token file ----------------------------------------------------------------------------
