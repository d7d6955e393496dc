"""``python -m zmqws.client``: the terminal client, as a child process, against a real Gateway fed
by a real ZeroMQ PUB socket: printing formats, topic filters, resume without loss after the
server drops the connection or the gateway restarts on the same port, pings, TLS, tokens and
Ctrl-C.  The URL and printing helpers are also tested on their own."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import pytest
import zmq
from conftest import CHILD_ENV, ROOT, wait_subscribed, wait_until

from zmqws.client import Printer, stream_url
from zmqws.protocol.connection import Message
from zmqws.gateway import Gateway

pytestmark = pytest.mark.timeout(60)

ENV = dict(CHILD_ENV, PYTHONPATH=str(ROOT))


def start_client(spawn, port: int, *args: str, scheme: str = "ws"):
    return spawn(sys.executable, "-m", "zmqws.client", f"{scheme}://127.0.0.1:{port}/", *args, env=ENV)


def connected(client, timeout: float = 10.0) -> None:
    client.wait_for_line("stderr", r"^zmqws\.client: connected to ", timeout)


def prime(client, pub, topic: bytes = b"a.probe", timeout: float = 10.0) -> None:
    """Publish probes until the client prints one (the SUB has subscribed: slow joiner)."""
    connected(client)
    deadline = time.monotonic() + timeout
    while True:
        pub.send_multipart([topic, b'{"seq": -1}'])
        try:
            client.wait_for_line("stdout", r'seq\\?": -1', timeout=0.1)  # as is, or in JSON
            return
        except AssertionError:
            assert time.monotonic() < deadline, "no probe reached the client"


def publish(pub, topic: bytes, seqs) -> None:
    for seq in seqs:
        pub.send_multipart([topic, json.dumps({"seq": seq}).encode()])


def read_seqs(client, n: int, timeout: float = 10.0):
    """The next ``n`` stdout lines that carry a seq >= 0, as ints (probes skipped)."""
    seqs = []
    while len(seqs) < n:
        match = client.wait_for_line("stdout", r'"seq": (\d+)', timeout)
        seqs.append(int(match.group(1)))
    return seqs


def drop_all(gw) -> None:
    """Abort every WebSocket connection on the server side: no close frame, TCP gone."""
    done = []
    gw.call_soon_threadsafe(lambda: done.append([gw.abort(c) for c in gw.client_list()]))
    wait_until(lambda: done, message="the connections to be aborted")


def assert_closed_cleanly(gw) -> None:
    """Every WebSocket connection has ended with a 1000 close frame (1006: TCP dropped)."""
    wait_until(lambda: gw.clients == 0 and sum(gw.stats.closes.values()) == gw.stats.ws_connections,
               message="the client to close")
    assert set(gw.stats.closes) == {1000}, gw.stats.closes


# -- helpers on their own -------------------------------------------------------------------------------


def test_stream_url_asks_for_json_with_topics_and_since():
    assert stream_url("ws://h:1/", ["a.", "b c"], None) == "ws://h:1/?topic=a.&topic=b+c&format=json"
    assert stream_url("https://h/x?format=topic&since=3&k=v", [], 42) == "wss://h/x?k=v&format=json&since=42"
    assert stream_url("http://[::1]:8080", [], None) == "ws://[::1]:8080/?format=json"
    with pytest.raises(ValueError):
        stream_url("tcp://h:1/", [], None)


@pytest.mark.parametrize("fmt, expected", [
    ("payload", ['{"p": 1}', "<3 bytes>", "plain"]),
    ("topic", ['t.x {"p": 1}', "t.b <3 bytes>", "plain"]),
    ("json", ['{"id": 5, "topic": "t.x", "data": "{\\"p\\": 1}"}',
              '{"id": 7, "topic": "t.b", "data": "AAEC", "binary": true}', "plain"]),
])
def test_printer_formats_skips_seen_ids_and_sends_notices_to_stderr(fmt, expected):
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(fmt, out, err, since=4)
    for doc in ({"id": 3, "topic": "t.x", "data": "old"}, {"gap": [1, 2]},
                {"id": 5, "topic": "t.x", "data": '{"p": 1}'}, {"id": 5, "topic": "t.x", "data": "again"},
                {"id": 7, "topic": "t.b", "data": "AAEC", "binary": True}, "plain"):
        text = doc if isinstance(doc, str) else json.dumps(doc)
        printer.handle(Message(text.encode(), False))
    assert out.getvalue().splitlines() == expected
    assert err.getvalue().splitlines() == ['{"gap": [1, 2]}']
    assert printer.last_id == 7 and printer.printed == 3


# -- against a gateway --------------------------------------------------------------------------------


@pytest.fixture
def gw(make_gateway, pub):
    gateway = make_gateway(pub.endpoint, linger=30, history=10_000)
    wait_subscribed(pub, gateway)
    return gateway


def test_prints_payloads_and_exits_after_count(gw, pub, spawn):
    client = start_client(spawn, gw.port, "--count", "12")
    prime(client, pub)
    publish(pub, b"a.x", range(20))
    client.popen.wait(10)
    assert client.popen.returncode == 0
    lines = client.rest("stdout").splitlines()
    probes = lines.count('{"seq": -1}')
    assert len(lines) == 12 and probes < 12
    assert [json.loads(line)["seq"] for line in lines[probes:]] == list(range(12 - probes))
    assert_closed_cleanly(gw)


def test_topic_filter_and_topic_format(gw, pub, spawn):
    client = start_client(spawn, gw.port, "--topic", "a.", "--format", "topic")
    prime(client, pub)
    for seq in range(10):
        publish(pub, b"b.x", [seq])
        publish(pub, b"a.y", [seq])
    for seq in range(10):
        match = client.wait_for_line("stdout", r"^(\S+) (\{.*\})$")
        assert match.group(1) == "a.y" and json.loads(match.group(2)) == {"seq": seq}


def test_json_lines_parse_with_increasing_ids(gw, pub, spawn):
    client = start_client(spawn, gw.port, "--json")
    prime(client, pub)
    publish(pub, b"a.x", range(10))
    docs = [json.loads(client.wait_for_line("stdout", r"^\{.*\}$").group(0)) for _ in range(10)]
    assert [json.loads(d["data"])["seq"] for d in docs] == list(range(10))
    assert {d["topic"] for d in docs} == {"a.x"}
    ids = [d["id"] for d in docs]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))


def test_resumes_without_loss_after_the_server_drops_the_connection(gw, pub, spawn):
    client = start_client(spawn, gw.port)
    prime(client, pub)
    publish(pub, b"a.x", range(50))
    assert read_seqs(client, 50) == list(range(50))
    drop_all(gw)
    publish(pub, b"a.x", range(50, 100))  # while the client is away (it waits 0.5 s)
    client.wait_for_line("stderr", r"reconnecting in 0\.5 s")
    client.wait_for_line("stderr", r"connected to .*[?&]since=\d+")
    publish(pub, b"a.x", range(100, 150))
    assert read_seqs(client, 100) == list(range(50, 150))
    assert gw.stats.ws_connections >= 3  # the probe's, the client's first and its second


def test_resumes_after_the_gateway_restarts_on_the_same_port(make_gateway, pub, spawn):
    first = make_gateway(pub.endpoint, linger=30)
    wait_subscribed(pub, first)
    port = first.port
    client = start_client(spawn, port)
    prime(client, pub)
    publish(pub, b"a.x", range(5))
    assert read_seqs(client, 5) == list(range(5))
    first.stop(timeout=1.0)
    client.wait_for_line("stderr", r"closed by the server: 1001")
    # A new process: ids from a larger first id, an empty history, the same port.
    with Gateway(pub.endpoint, port, linger=30, first_id=10_000, close_timeout=1.0) as second:
        since = int(client.wait_for_line("stderr", r"connected to .*since=(\d+)", timeout=15).group(1))
        gap = json.loads(client.wait_for_line("stderr", r'^\{"gap".*\}$').group(0))["gap"]
        assert since < 10_000 and gap[0] == since + 1 and gap[1] >= gap[0]
        deadline = time.monotonic() + 10
        seqs = []
        while 5 not in seqs:  # the new SUB is a slow joiner: publish until it hears
            assert time.monotonic() < deadline, seqs
            publish(pub, b"a.x", [5])
            try:
                seqs += read_seqs(client, 1, timeout=0.2)
            except AssertionError:
                pass
        publish(pub, b"a.x", range(6, 20))
        assert read_seqs(client, 14) == list(range(6, 20))
        assert second.stats.ws_connections >= 1


def test_answers_pings(make_gateway, pub, spawn):
    gw = make_gateway(pub.endpoint, ping_interval=0.2, ping_timeout=0.5)
    client = start_client(spawn, gw.port)
    connected(client)
    time.sleep(2.0)  # several pings, each needing a masked pong within 0.5 s
    assert gw.stats.ping_timeouts == 0 and gw.stats.protocol_errors == 0
    assert gw.clients == 1 and gw.stats.ws_connections == 1
    assert client.popen.poll() is None


def test_ctrl_c_exits_0_without_traceback(gw, pub, spawn):
    client = start_client(spawn, gw.port)
    prime(client, pub)
    client.popen.send_signal(signal.SIGINT)
    assert client.popen.wait(10) == 0
    assert "Traceback" not in client.rest("stderr")
    assert_closed_cleanly(gw)


def test_token_refused_without_it_and_accepted_with_it(make_gateway, pub, spawn):
    from zmqws.auth import token_authenticator

    gw = make_gateway(pub.endpoint, authenticate=token_authenticator("s3cret"))
    refused = start_client(spawn, gw.port)
    assert refused.popen.wait(10) == 1
    assert "refused: HTTP 401" in refused.rest("stderr")
    client = start_client(spawn, gw.port, "--token", "s3cret")
    prime(client, pub)


def test_wss_with_insecure_and_certificate_check(make_gateway, pub, spawn, tmp_path):
    import zmqws.tls

    certfile, keyfile = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", keyfile, "-out", certfile], check=True, capture_output=True, timeout=60)
    gw = make_gateway(pub.endpoint, ssl_context=zmqws.tls.server_context(certfile, keyfile))
    checked = start_client(spawn, gw.port, scheme="wss")
    assert checked.popen.wait(10) == 1
    assert "--insecure" in checked.rest("stderr")
    client = start_client(spawn, gw.port, "--insecure", scheme="wss")
    prime(client, pub)
    publish(pub, b"a.x", range(3))
    assert read_seqs(client, 3) == [0, 1, 2]


def test_rpc_sends_one_request_and_prints_the_reply(make_gateway, zmq_context, spawn):
    """``--rpc TOPIC --data JSON``: the reply's data on stdout, status 0; an error reply on
    stderr, status 1; a gateway without the two-way channel answers at once (status 1)."""
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    gw = make_gateway(None, rpc_endpoint=endpoint)
    assert monitor.poll(5000), "the gateway's DEALER did not connect"  # else a request fails at once

    def answer(ok: bool) -> None:
        while True:
            identity, kind, *rest = router.recv_multipart()
            if kind == b"request":
                client_id, request_id, topic, payload = rest[:4]
                assert topic == b"orders.new" and json.loads(payload) == {"qty": 2}
                status = b"ok" if ok else b"error"
                body = json.dumps({"accepted": True}).encode() if ok else b"no stock"
                router.send_multipart([identity, b"reply", client_id, request_id, status, body])
                return

    for ok in (True, False):
        child = start_client(spawn, gw.port, "--rpc", "orders.new", "--data", '{"qty": 2}')
        answer(ok)
        assert child.popen.wait(timeout=10) == (0 if ok else 1)
        if ok:
            assert json.loads(child.rest("stdout")) == {"accepted": True}
        else:
            assert "error: no stock" in child.rest("stderr")
    plain = make_gateway(None)
    child = start_client(spawn, plain.port, "--rpc", "orders.new")
    assert child.popen.wait(timeout=10) == 1
    assert "no two-way channel" in child.rest("stderr")
    router.disable_monitor()
    monitor.close(linger=0)
    router.close(linger=0)
