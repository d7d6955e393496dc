"""The ZeroMQ side (zmqws/upstream.py) against real sockets on 127.0.0.1: visibility (the SUB
socket's monitor events as log lines, the ``zmqws_upstream_connected`` gauge, ``GET /readyz``),
gaps in upstream ids, bind mode and several endpoints, bad endpoints, and client messages
sent upstream (PUSH or PUB, the high-water mark, no peer)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import sys
import threading
import time

import pytest
import zmq

import zmqws.upstream
from conftest import recv, recv_parts, ws_connect
from zmqws.gateway import Gateway

pytestmark = pytest.mark.timeout(40)

KiB = 1 << 10

READYZ = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n"
METRICS = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"


def free_port() -> int:
    """A port nobody listens on now (bound to 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gauge(http_exchange, port: int, endpoint: str) -> int:
    _status, _headers, body = http_exchange(port, METRICS)
    match = re.search(rf'^zmqws_upstream_connected{{endpoint="{re.escape(endpoint)}"}} (\d+)$',
                      body.decode(), re.M)
    assert match, body.decode()
    return int(match.group(1))


def readyz(http_exchange, port: int):
    status, _headers, body = http_exchange(port, READYZ)
    return status, body.decode()


def upstream_lines(caplog, endpoint: str):
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("zmqws") and r.getMessage().startswith(f"upstream {endpoint}:")]


@pytest.fixture
def pub_socket(zmq_context):
    """``bind(endpoint)``: a PUB bound there; ``close()`` closes it (and at teardown)."""
    class Publisher:
        sock = None

        def bind(self, endpoint):
            self.sock = zmq_context.socket(zmq.PUB)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.bind(endpoint)

        def close(self):
            if self.sock is not None:
                self.sock.close(linger=0)
                self.sock = None

    publisher = Publisher()
    yield publisher
    publisher.close()


def test_publisher_that_comes_and_goes(make_gateway, pub_socket, http_exchange, wait_until, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    gw = make_gateway(endpoint, upstream_log_interval=0.3)

    wait_until(lambda: upstream_lines(caplog, endpoint), message="a retry line")
    first = upstream_lines(caplog, endpoint)[0]
    assert "not connected" in first and "refused" in first, first
    status, body = readyz(http_exchange, gw.port)
    assert status == 503 and endpoint in body
    assert gauge(http_exchange, gw.port, endpoint) == 0
    wait_until(lambda: sum("still not connected after" in line
                           for line in upstream_lines(caplog, endpoint)) >= 2, message="count lines")
    # libzmq retries every ~0.1-0.2 s; a line comes at most once per upstream_log_interval.
    records = [r for r in caplog.records
               if r.getMessage().startswith(f"upstream {endpoint}: ") and "not connected" in r.getMessage()]
    assert min(b.created - a.created for a, b in zip(records, records[1:])) >= 0.29
    retries = int(re.search(r"after (\d+) retries", records[-1].getMessage()).group(1))
    assert retries > len(records), [r.getMessage() for r in records]

    pub_socket.bind(endpoint)
    wait_until(lambda: readyz(http_exchange, gw.port)[0] == 200, message="ready")
    assert readyz(http_exchange, gw.port)[1] == "ready\n"
    assert gauge(http_exchange, gw.port, endpoint) == 1
    assert gw.upstream_status() == {endpoint: True}
    assert re.search(r": connected after \d+ retries", upstream_lines(caplog, endpoint)[-1])

    pub_socket.close()
    wait_until(lambda: readyz(http_exchange, gw.port)[0] == 503, message="not ready again")
    assert gauge(http_exchange, gw.port, endpoint) == 0
    assert any("disconnected" in line for line in upstream_lines(caplog, endpoint))

    pub_socket.bind(endpoint)
    wait_until(lambda: readyz(http_exchange, gw.port)[0] == 200, message="ready again")
    assert gauge(http_exchange, gw.port, endpoint) == 1
    # /healthz says only that the loop answers, whatever the upstream
    assert http_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 200


@pytest.mark.parametrize("ready_any", [False, True])
def test_ready_any(make_gateway, pub, http_exchange, wait_until, ready_any):
    down = f"tcp://127.0.0.1:{free_port()}"
    gw = make_gateway([pub.endpoint, down], ready_any=ready_any)
    wait_until(lambda: gw.upstream_status()[pub.endpoint], message="the publisher connected")
    status, body = readyz(http_exchange, gw.port)
    if ready_any:
        assert status == 200
    else:
        assert status == 503 and down in body and pub.endpoint not in body


def test_gateway_without_endpoints_is_ready(make_gateway, http_exchange):
    gw = make_gateway(None)
    assert readyz(http_exchange, gw.port) == (200, "ready\n")


def test_unresolvable_host_names_the_endpoint_and_the_lookup(make_gateway, http_exchange,
                                                             wait_until, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    endpoint = "tcp://nohost.invalid:5556"
    gw = make_gateway(endpoint)
    wait_until(lambda: upstream_lines(caplog, endpoint), message="a retry line")
    line = upstream_lines(caplog, endpoint)[0]
    assert "not connected" in line and "DNS lookup of nohost.invalid failed" in line, line
    assert not any("connected" in line and "not connected" not in line
                   for line in upstream_lines(caplog, endpoint))
    assert readyz(http_exchange, gw.port)[0] == 503


def test_bound_endpoint_is_connected_while_a_peer_is(make_gateway, zmq_context, http_exchange,
                                                     wait_until):
    endpoint = "tcp://127.0.0.1:*"
    gw = make_gateway(endpoint, bind=True)
    assert readyz(http_exchange, gw.port)[0] == 503
    bound = gw.upstream.bound_endpoint()
    peers = []
    for _ in range(2):
        peer = zmq_context.socket(zmq.PUB)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(bound)
        peers.append(peer)
    wait_until(lambda: readyz(http_exchange, gw.port)[0] == 200, message="a peer")
    assert gauge(http_exchange, gw.port, endpoint) == 1
    peers.pop().close(linger=0)
    time.sleep(0.3)
    assert readyz(http_exchange, gw.port)[0] == 200  # one peer left
    peers.pop().close(linger=0)
    wait_until(lambda: readyz(http_exchange, gw.port)[0] == 503, message="no peer left")
    assert gauge(http_exchange, gw.port, endpoint) == 0


def _stamped(msg_id: int, topic: bytes = b"t") -> list:
    return [topic, msg_id.to_bytes(8, "big"), b"payload"]


def _receiving(pub, gw, wait_until) -> int:
    """Send stamped messages with consecutive ids until the gateway takes them; the next id."""
    next_id = 1
    deadline = time.monotonic() + 5
    while not gw.last_id:
        assert time.monotonic() < deadline, "the gateway's SUB took nothing"
        pub.send_multipart(_stamped(next_id))
        next_id += 1
        time.sleep(0.01)
    wait_until(lambda: gw.last_id == next_id - 1, message="the probes")
    return next_id


def test_upstream_id_gap_is_counted_and_logged(make_gateway, pub, http_exchange, wait_until,
                                               caplog, monkeypatch):
    monkeypatch.setattr(zmqws.upstream, "GAP_SETTLE", 0.0)
    caplog.set_level(logging.INFO, logger="zmqws")
    gw = make_gateway(pub.endpoint, upstream_ids=True, subscribe_all=True)
    next_id = _receiving(pub, gw, wait_until)
    assert gw.stats.upstream_gaps == 0  # consecutive ids: no gap
    pub.send_multipart(_stamped(next_id + 3))  # 3 ids never come
    wait_until(lambda: gw.last_id == next_id + 3, message="the message after the gap")
    assert (gw.stats.upstream_gaps, gw.stats.upstream_missed) == (1, 3)
    body = http_exchange(gw.port, METRICS)[2].decode()
    assert "zmqws_upstream_gaps_total 1" in body and "zmqws_upstream_missed_total 3" in body
    lines = [r.getMessage() for r in caplog.records if "ids jump" in r.getMessage()]
    assert len(lines) == 1 and f"from {next_id - 1} to {next_id + 3}" in lines[0], lines


def test_upstream_id_jump_under_topic_filtering_is_no_gap(make_gateway, pub, raw_ws, wait_until,
                                                          monkeypatch):
    """Subscribed to some topics only, the ids of the others are skipped by design."""
    monkeypatch.setattr(zmqws.upstream, "GAP_SETTLE", 0.0)
    gw = make_gateway(pub.endpoint, upstream_ids=True)
    client = raw_ws(gw.port, path="/?topic=t")
    wait_until(lambda: gw.subscriptions() == [b"t"], message="the upstream subscription")
    next_id = _receiving(pub, gw, wait_until)
    pub.send_multipart(_stamped(next_id + 3))
    wait_until(lambda: gw.last_id == next_id + 3, message="the message after the jump")
    assert gw.stats.upstream_gaps == 0
    client.close()


def test_workers_report_the_real_upstream_endpoints(spawn, pub_socket, http_exchange, wait_until):
    """With --workers, the parent's forwarder watches the --sub endpoints: a worker's /readyz and
    gauge speak of them (not of the worker's IPC link to the parent), and the lines come once."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    process = spawn(sys.executable, "-m", "zmqws", "--workers", "2", "--sub", endpoint,
                    "--port", "0", "--close-timeout", "0.5")
    try:
        port = int(process.wait_for_line("stderr", r"listening on port (\d+) with 2 workers").group(1))
        status, body = readyz(http_exchange, port)
        assert status == 503 and endpoint in body and "ipc://" not in body, body
        assert gauge(http_exchange, port, endpoint) == 0
        retry = rf"upstream {re.escape(endpoint)}: not connected \(connection refused"
        if not any(re.search(retry, line) for line in process.seen["stderr"]):  # not yet read
            process.wait_for_line("stderr", retry)
        pub_socket.bind(endpoint)
        wait_until(lambda: readyz(http_exchange, port)[0] == 200, timeout=10, message="ready")
        # the other worker's figures come from its snapshot, written once a second
        wait_until(lambda: gauge(http_exchange, port, endpoint) == 1, timeout=5, interval=0.1,
                   message="the gauge of both workers")
    finally:
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=15) == 0
    lines = process.rest("stderr").splitlines()
    assert len([line for line in lines if f"upstream {endpoint}: connected" in line]) == 1, lines


def test_a_listener_that_is_not_zeromq_is_not_connected(make_gateway, http_exchange, wait_until,
                                                         caplog):
    """TCP connects, the ZeroMQ handshake fails: not connected, and the line says why."""
    caplog.set_level(logging.INFO, logger="zmqws")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop = threading.Event()

    def answer_http():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        gw = make_gateway(endpoint)
        wait_until(lambda: upstream_lines(caplog, endpoint), message="a line for the endpoint")
        line = upstream_lines(caplog, endpoint)[0]
        assert "not connected (ZeroMQ handshake failed" in line, line
        assert readyz(http_exchange, gw.port)[0] == 503
        assert gauge(http_exchange, gw.port, endpoint) == 0
    finally:
        stop.set()
        thread.join(5)
        listener.close()


# -- ZeroMQ side configurations: bind, several endpoints, bad endpoints ----------------------------


def test_bind_mode_with_connecting_publisher(make_gateway, make_pub, run_async, wait_subscribed, tmp_path):
    endpoint = f"ipc://{tmp_path}/gateway.ipc"
    gw = make_gateway(endpoint, bind=True)
    publisher = make_pub(connect=endpoint)
    wait_subscribed(publisher, gw)

    async def main():
        async with ws_connect(gw.port) as ws:
            for i in range(10):
                publisher.send(f"bound {i}".encode())
            return [await ws.recv() for _ in range(10)]
    assert run_async(main()) == [f"bound {i}" for i in range(10)]


def test_bind_mode_with_two_connecting_publishers(make_gateway, make_pub, run_async, wait_subscribed,
                                                 tmp_path):
    endpoint = f"ipc://{tmp_path}/gateway.ipc"
    gw = make_gateway(endpoint, bind=True)
    publishers = [make_pub(connect=endpoint) for _ in range(2)]
    for publisher in publishers:
        wait_subscribed(publisher, gw)

    async def main():
        async with ws_connect(gw.port) as ws:
            publishers[0].send(b"from 0")
            publishers[1].send(b"from 1")
            return {await ws.recv(), await ws.recv()}
    assert run_async(main()) == {"from 0", "from 1"}


def test_several_sub_endpoints(make_gateway, make_pub, run_async, wait_subscribed):
    pubs = [make_pub() for _ in range(3)]
    gw = make_gateway([p.endpoint for p in pubs])
    for p in pubs:
        wait_subscribed(p, gw)

    async def main():
        async with ws_connect(gw.port) as ws:
            for i in range(20):
                for k, p in enumerate(pubs):
                    p.send(f"{k}:{i}".encode())
            return [await ws.recv() for _ in range(60)]
    received = run_async(main())
    for k in range(3):  # in order per publisher
        assert [m for m in received if m.startswith(f"{k}:")] == [f"{k}:{i}" for i in range(20)]


def test_bad_endpoint_raises_value_error():
    gw = Gateway("nonsense://x", 0)
    with pytest.raises(ValueError, match=r"cannot connect SUB socket to 'nonsense://x'"):
        gw.start()
    gw.stop()  # safe after a failed start


def test_bad_endpoint_releases_the_port():
    gw = Gateway("nonsense://x", 0)
    with pytest.raises(ValueError):
        gw.start()
    # The listening socket made before the SUB failed must be closed again.
    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", gw.port))
        probe.listen(1)
    finally:
        probe.close()


def test_bad_bind_endpoint_raises_value_error(make_pub):
    taken = make_pub()
    gw = Gateway(taken.endpoint, 0, bind=True)  # address already bound by the PUB
    with pytest.raises(ValueError, match="cannot bind SUB socket"):
        gw.start()


# -- client messages upstream: PUSH or PUB, high-water mark, no peer -------------------------------


def test_give_push_or_pub_not_both():
    with pytest.raises(ValueError, match="not both"):
        Gateway(None, 0, push_endpoint="tcp://127.0.0.1:1", pub_endpoint="tcp://127.0.0.1:2")


def test_upstream_full_drops_and_counts_while_others_are_served(make_gateway, make_pub, make_zmq,
                                                               wait_subscribed, run_async):
    # A PULL peer that is connected but never reads (after a first message): its queue
    # (RCVHWM 1), the TCP buffers and the gateway's send queue (upstream_hwm) fill up.
    pull, endpoint = make_zmq(zmq.PULL, rcvhwm=1, rcvbuf=4096)
    pub = make_pub()
    gw = make_gateway(pub.endpoint, push_endpoint=endpoint, upstream_hwm=10, client_rate=0)
    wait_subscribed(pub, gw)
    big = bytes(range(256)) * (256 * KiB // 256)

    async def main():
        async with ws_connect(gw.port) as sender, ws_connect(gw.port) as other:
            await sender.send(b"first")
            assert (await asyncio.to_thread(recv_parts, pull))[2] == b"first"  # connected
            sent = 1
            deadline = time.monotonic() + 20
            while gw.stats.upstream_drops == 0:
                assert time.monotonic() < deadline, "the upstream socket never filled up"
                for _ in range(10):
                    await sender.send(big)
                    sent += 1
                await asyncio.sleep(0.02)
            # Full now: further messages are dropped and counted. (The peer's I/O thread
            # may still take a message now and then as TCP drains, so count drops, not sends.)
            drops_full = gw.stats.upstream_drops
            while gw.stats.upstream_drops < drops_full + 20:
                assert time.monotonic() < deadline, "messages to a full upstream were not dropped"
                for _ in range(5):
                    await sender.send(b"small")
                    sent += 1
                await asyncio.sleep(0.01)
            # The loop still serves the others (and the sender is still open).
            pub.send(b"still served")
            assert await recv(other) == "still served"
            assert await recv(sender) == "still served"
            await asyncio.to_thread(wait_until_counted, gw, sent)
            return sent

    sent = run_async(main(), timeout=30)
    stats = gw.stats
    assert stats.upstream_drops >= 20
    assert stats.upstream_messages + stats.upstream_drops == sent
    assert stats.rate_limited == 0 and stats.protocol_errors == 0


def wait_until_counted(gw: Gateway, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.stats.upstream_messages + gw.stats.upstream_drops < n:
        assert time.monotonic() < deadline, "client messages not all counted"
        time.sleep(0.005)


def test_upstream_without_peer_drops_everything(make_gateway, make_pub, wait_subscribed, run_async,
                                                tmp_path):
    # bind=True and nobody connected to the PUSH: send(NOBLOCK) raises zmq.Again at once.
    gw = make_gateway(f"ipc://{tmp_path}/sub.ipc", bind=True, push_endpoint=f"ipc://{tmp_path}/push.ipc",
                      upstream_hwm=10)
    pub = make_pub(connect=f"ipc://{tmp_path}/sub.ipc")
    wait_subscribed(pub, gw)

    async def main():
        async with ws_connect(gw.port) as sender, ws_connect(gw.port) as other:
            for i in range(50):
                await sender.send(f"m{i}")
            await asyncio.to_thread(wait_until_counted, gw, 50)
            pub.send(b"still served")
            assert await recv(other) == "still served"
            assert await recv(sender) == "still served"
    run_async(main())
    assert gw.stats.upstream_drops == 50 and gw.stats.upstream_messages == 0
