"""Upstream visibility: the SUB socket's monitor events as log lines, the
``zmqws_upstream_connected`` gauge, ``GET /readyz``, and gaps in upstream ids."""

from __future__ import annotations

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

pytestmark = pytest.mark.timeout(40)

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
