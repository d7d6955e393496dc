"""Hardening: TLS (wss://, https://), access control, limits, observability, graceful shutdown.

Every server runs on 127.0.0.1 on a free port; every wait is bounded; every
process, socket and thread started here is stopped by a fixture or a
``finally``.  A self-signed certificate for 127.0.0.1 is made once per
session with the ``openssl`` command line.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest
from websockets.exceptions import ConnectionClosed

import zmqws.tls
from zmqws.auth import token_authenticator
from zmqws.protocol.frames import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_frame
from zmqws.protocol.handshake import HTTPError

from conftest import (RawWebSocket, http_exchange, request_status, response_head, run_async, upgrade_request,
                      wait_until, ws_client)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
MASK = b"\x11\x22\x33\x44"
KiB = 1024
MiB = 1024 * 1024


# -- certificates and TLS contexts -------------------------------------------------------------


@pytest.fixture(scope="session")
def cert(tmp_path_factory) -> Tuple[str, str]:
    """A self-signed certificate for IP 127.0.0.1: (certfile, keyfile)."""
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", keyfile, "-out", certfile],
                   check=True, capture_output=True, timeout=60)
    return certfile, keyfile


@pytest.fixture
def server_ssl(cert) -> ssl.SSLContext:
    return zmqws.tls.server_context(*cert)


@pytest.fixture
def client_ssl(cert) -> ssl.SSLContext:
    """A client context that trusts the test certificate (and checks the host name)."""
    return ssl.create_default_context(cafile=cert[0])


def _echo(client, data):
    client.send(data)


# -- small raw-socket helpers -------------------------------------------------------------------


def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> Tuple[bytes, float]:
    """Read until the peer closes (EOF or reset); (bytes, seconds it took). Fails after ``timeout``."""
    start = time.monotonic()
    data = b""
    while True:
        remaining = start + timeout - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server did not close within {timeout} s ({data[:100]!r})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, time.monotonic() - start
        except socket.timeout:
            continue
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def parse_server_frames(data: bytes) -> Tuple[List[Tuple[int, bytes]], bytes]:
    """Whole unmasked server frames in ``data``: ([(opcode, payload)], leftover bytes)."""
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        p = pos + 2
        if length == 126:
            if len(data) - p < 2:
                break
            length = struct.unpack("!H", data[p:p + 2])[0]
            p += 2
        elif length == 127:
            if len(data) - p < 8:
                break
            length = struct.unpack("!Q", data[p:p + 8])[0]
            p += 8
        if len(data) - p < length:
            break
        frames.append((b0 & 0x0F, data[p:p + length]))
        pos = p + length
    return frames, data[pos:]


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


class TLSBioClient:
    """A TLS client on a raw socket through memory BIOs: it decides which TLS records go
    into which TCP write (several records, or the handshake's end and data, in one write)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.plain = b""

    def handshake(self, flush: bool = True) -> None:
        """Run the TLS handshake; with ``flush=False`` the client's last flight stays unsent."""
        deadline = time.monotonic() + 5
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self._receive(deadline)
        if flush:
            self.flush()

    def flush(self) -> int:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)
        return len(data)

    def write_records(self, *chunks: bytes) -> None:
        """Each chunk becomes its own TLS record (nothing is sent until :meth:`flush`)."""
        for chunk in chunks:
            self.tls.write(chunk)

    def _receive(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("TLS peer silent")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.incoming.write(chunk)

    def read_until(self, predicate, timeout: float = 5.0) -> bytes:
        """Decrypt what the server sends, sending nothing, until ``predicate(plaintext)``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.plain):
            try:
                self.plain += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive(deadline)
        return self.plain

    def close(self) -> None:
        self.sock.close()


# -- TLS: wss:// and https:// ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_wss_client_gets_messages_byte_for_byte(make_gateway, server_ssl, client_ssl, compression):
    gw = make_gateway(None, ssl_context=server_ssl)
    text_big = ("é" * (MiB // 2)).encode("utf-8")  # 1 MiB of UTF-8 → a text frame
    binary_big = os.urandom(MiB)                     # 1 MiB, not UTF-8 → a binary frame
    sent = [b"hello", bytes(range(256)) * 4, text_big, binary_big, b"bye"]

    async def main():
        async with ws_client(f"wss://127.0.0.1:{gw.port}/", ssl=client_ssl,
                              compression=compression) as ws:
            for payload in sent:
                gw.publish(payload)
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in sent]
            return got

    got = run_async(main(), timeout=30)
    assert got[0] == "hello" and got[-1] == "bye"
    assert got[1] == bytes(range(256)) * 4
    assert isinstance(got[2], str) and got[2].encode("utf-8") == text_big
    assert isinstance(got[3], bytes) and got[3] == binary_big
    assert gw.stats.tls_errors == 0


def test_https_healthz_and_poll(make_gateway, server_ssl, client_ssl):
    gw = make_gateway(None, ssl_context=server_ssl, poll_timeout=5)
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=client_ssl, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        conn.close()
    before = gw.last_id
    gw.publish("over https", topic="news")
    wait_until(lambda: gw.last_id > before, message="the message to be taken in")
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=client_ssl, timeout=5)
    try:
        conn.request("GET", "/poll?since=0")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("application/json")
        docs = json.loads(response.read())
    finally:
        conn.close()
    messages = [d for d in docs if "data" in d]
    assert [(d["topic"], d["data"]) for d in messages] == [("news", "over https")]


def test_tls_staller_blocks_nobody_and_is_dropped(make_gateway, server_ssl, client_ssl):
    gw = make_gateway(None, ssl_context=server_ssl, handshake_timeout=0.5)
    staller = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        staller.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello record, then nothing
        started = time.monotonic()

        async def main():
            async with ws_client(f"wss://127.0.0.1:{gw.port}/", ssl=client_ssl) as ws:
                for i in range(20):
                    gw.publish(f"m{i}")
                got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(20)]
                return got, time.monotonic() - started

        got, took = run_async(main(), timeout=10)
        assert got == [f"m{i}" for i in range(20)]
        # The other client was served while the staller's handshake was still pending.
        staller.setblocking(False)
        with pytest.raises(BlockingIOError):
            staller.recv(1)
        assert took < 0.5, took
        data, waited = read_until_eof(staller, timeout=5)
        assert data == b""
        assert 0.35 <= time.monotonic() - started <= 3.0, waited
        assert gw.stats.handshake_timeouts == 1
    finally:
        staller.close()


def test_tls_1_1_client_is_refused(make_gateway, server_ssl, cert):
    gw = make_gateway(None, ssl_context=server_ssl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cert[0])
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
        except ssl.SSLError:
            pass
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        with pytest.raises(ssl.SSLError) as info:
            old.wrap_socket(sock, server_hostname="127.0.0.1")
    finally:
        sock.close()
    if "NO_PROTOCOLS_AVAILABLE" in str(info.value).upper():
        # This OpenSSL cannot even offer TLS 1.1: check what the server would do instead.
        assert server_ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    else:
        assert "VERSION" in str(info.value).upper(), info.value
        wait_until(lambda: gw.stats.tls_errors >= 1, message="the failed handshake to be counted")
    assert server_ssl.minimum_version == ssl.TLSVersion.TLSv1_2


def test_plain_http_to_the_tls_port_is_dropped(make_gateway, server_ssl, client_ssl):
    gw = make_gateway(None, ssl_context=server_ssl)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, _ = read_until_eof(sock, timeout=5)
    assert not data.startswith(b"HTTP/")
    wait_until(lambda: gw.stats.tls_errors >= 1, message="the TLS error to be counted")
    # ... and the port still serves TLS clients.
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=client_ssl, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def _echo_frames_in(plain: bytes, count: int) -> bool:
    head, sep, rest = plain.partition(b"\r\n\r\n")
    return bool(sep) and len(parse_server_frames(rest)[0]) >= count


def test_tls_handshake_and_frames_in_one_record_are_all_handled(make_server, server_ssl, client_ssl):
    """The upgrade request and several frames in ONE TLS write: every echo comes back
    without the client sending anything more."""
    server = make_server(on_message=_echo, ssl_context=server_ssl)
    messages = [f"message {i}".encode() for i in range(5)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with client_ssl.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(upgrade_request() + b"".join(masked(OP_TEXT, m) for m in messages))
            status, _head, rest = response_head(sock)
            assert status == 101
            deadline = time.monotonic() + 5
            frames, rest = parse_server_frames(rest)
            while len(frames) < len(messages):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                assert chunk, "closed early"
                more, rest = parse_server_frames(rest + chunk)
                frames += more
    assert frames == [(OP_TEXT, m) for m in messages]


@pytest.mark.parametrize("with_finished", [False, True], ids=["records-after-handshake",
                                                                "records-with-client-finished"])
def test_tls_several_records_in_one_tcp_write_are_all_read(make_server, server_ssl, client_ssl,
                                                           with_finished):
    """Several TLS records (one per frame) in one TCP write, optionally right behind the
    client's last handshake flight: every byte is read, nothing waits for more input."""
    server = make_server(on_message=_echo, ssl_context=server_ssl)
    client = TLSBioClient(server.port, client_ssl)
    try:
        client.handshake(flush=not with_finished)
        messages = [f"record {i}".encode() * (i + 1) for i in range(8)]
        client.write_records(upgrade_request(), *[masked(OP_TEXT, m) for m in messages])
        client.flush()  # everything above in one sendall
        plain = client.read_until(lambda p: _echo_frames_in(p, len(messages)))
        head, _, rest = plain.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        frames, _ = parse_server_frames(rest)
        assert frames == [(OP_TEXT, m) for m in messages]
    finally:
        client.close()


# -- TLS from the command line -------------------------------------------------------------------


ZMQWS = (sys.executable, "-m", "zmqws")


def test_cli_demo_over_tls(spawn, cert, client_ssl):
    process = spawn(*ZMQWS, "--demo", "--port", "0", "--certfile", cert[0], "--keyfile", cert[1])
    port = int(process.wait_for_line("stderr", r"listening on wss://127\.0\.0\.1:(\d+)/").group(1))

    async def main():
        async with ws_client(f"wss://127.0.0.1:{port}/", ssl=client_ssl) as ws:
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]

    docs = run_async(main(), timeout=15)
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(seqs)
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=10) == 0
    assert "Traceback" not in process.rest("stderr")


def test_cli_bad_certificate_is_one_line_error(tmp_path):
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run([sys.executable, "-m", "zmqws", "--demo", "--port", "0", "--certfile", missing],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zmqws: error:"), result.stderr


# -- access control: origins, the authenticate hook, tokens ----------------------------------------


def test_allow_origins(make_gateway):
    gw = make_gateway(None, allow_origins=["https://good.example"], poll_timeout=0.2)
    evil = (("Origin", "https://evil.example"),)
    good = (("Origin", "https://good.example"),)
    assert request_status(gw.port, upgrade_request(extra=evil)) == 403
    assert request_status(gw.port, upgrade_request(extra=good)) == 101
    assert request_status(gw.port, upgrade_request()) == 101  # no Origin: not a browser
    for path in ("/events", "/poll"):
        for origin, status in ((evil, 403), (good, 200), ((), 200)):
            lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{n}: {v}" for n, v in origin]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode()
            assert request_status(gw.port, request) == status, (path, origin)
    assert gw.stats.forbidden == 3


def _user_hook(request):
    user = request.query_value("user")
    if user == "admin":
        return None
    if user == "reader":
        return {"news"}
    raise HTTPError(401, "who are you?", [("WWW-Authenticate", 'Bearer realm="test"')])


def test_authenticate_hook_limits_topics(make_gateway):
    gw = make_gateway(None, authenticate=_user_hook, envelope="topic")

    # Refused before any WebSocket exists.
    assert request_status(gw.port, upgrade_request("/?user=reader&topic=prices")) == 403
    assert request_status(gw.port, upgrade_request("/?user=reader&topic=news.a&topic=prices")) == 403
    assert request_status(gw.port, upgrade_request("/")) == 401
    assert request_status(gw.port, upgrade_request("/?user=mallory")) == 401
    assert request_status(gw.port, b"GET /events?user=reader&topic=prices HTTP/1.1\r\nHost: localhost\r\n\r\n") == 403
    status, headers, _ = http_exchange(gw.port, b"GET /poll?user=nobody HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="test"'

    async def main():
        base = f"ws://127.0.0.1:{gw.port}/"
        async with ws_client(base + "?user=admin") as admin, ws_client(base + "?user=reader") as reader:
            for topic, payload in (("news.a", "1"), ("prices.x", "2"), ("news.b", "3"), ("end", "4")):
                gw.publish(payload, topic=topic)
            got_admin = [await asyncio.wait_for(admin.recv(), 5) for _ in range(4)]
            got_reader = [await asyncio.wait_for(reader.recv(), 5) for _ in range(2)]
            await reader.send(json.dumps({"subscribe": "prices"}))
            answer = json.loads(await asyncio.wait_for(reader.recv(), 5))
            gw.publish("5", topic="prices.y")
            gw.publish("6", topic="news.c")
            got_reader.append(await asyncio.wait_for(reader.recv(), 5))
            return got_admin, got_reader, answer

    got_admin, got_reader, answer = run_async(main())
    assert got_admin == ["news.a 1", "prices.x 2", "news.b 3", "end 4"]
    assert got_reader == ["news.a 1", "news.b 3", "news.c 6"]
    assert answer["error"] == "topic not allowed" and answer["topic"] == "prices"


def test_token_authenticator(make_gateway):
    gw = make_gateway(None, authenticate=token_authenticator("s3cret"))
    status, headers, _ = http_exchange(gw.port, upgrade_request("/"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert request_status(gw.port, upgrade_request("/?token=s3cret")) == 101
    assert request_status(gw.port, upgrade_request(extra=(("Authorization", "Bearer s3cret"),))) == 101
    assert request_status(gw.port, upgrade_request("/?token=s3creT")) == 401
    assert request_status(gw.port, upgrade_request(extra=(("Authorization", "Bearer nope"),))) == 401
    assert request_status(gw.port, b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n") == 401
    assert request_status(gw.port, b"GET /events?token=s3cret HTTP/1.1\r\nHost: localhost\r\n\r\n") == 200


@pytest.mark.parametrize("how", ["--token", "ZMQWS_TOKEN"])
def test_cli_token(spawn, how):
    if how == "--token":
        process = spawn(*ZMQWS, "--sub", "tcp://127.0.0.1:9", "--port", "0", "--token", "s3cret")
    else:
        process = spawn(*ZMQWS, "--sub", "tcp://127.0.0.1:9", "--port", "0", env=dict(ENV, ZMQWS_TOKEN="s3cret"))
    port = int(process.wait_for_line("stderr", r"listening on ws://127\.0\.0\.1:(\d+)/").group(1))
    status, headers, _ = http_exchange(port, upgrade_request("/"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert request_status(port, upgrade_request("/?token=wrong")) == 401
    assert request_status(port, upgrade_request("/?token=s3cret")) == 101
    assert request_status(port, upgrade_request(extra=(("Authorization", "Bearer s3cret"),))) == 101


# -- limits -------------------------------------------------------------------------------------


def test_max_connections(make_server, raw_ws):
    server = make_server(on_message=_echo, max_connections=5)
    clients = [raw_ws(server.port) for _ in range(5)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sixth:
        data, _ = read_until_eof(sixth)
    assert data.startswith(b"HTTP/1.1 503 ")
    assert server.stats.refused == 1
    # The five are still served.
    for client in clients:
        client.send_frame(OP_TEXT, b"still here")
        assert client.recv_frame() == (True, OP_TEXT, b"still here")
    clients[0].send_close(1000)
    assert clients[0].recv_close()[0] == 1000
    clients[0].close()
    wait_until(lambda: server.stats.closes.get(1000) == 1, message="the first client to be gone")
    newcomer = raw_ws(server.port)  # asserts 101
    newcomer.send_frame(OP_TEXT, b"in")
    assert newcomer.recv_frame() == (True, OP_TEXT, b"in")
    assert server.stats.refused == 1


def test_max_connections_per_address(make_server, raw_ws):
    server = make_server(on_message=_echo, max_connections_per_address=2)
    raw_ws(server.port)
    raw_ws(server.port)
    assert request_status(server.port, upgrade_request()) == 503
    assert server.stats.refused == 1
    # Another address (127.0.0.2 is loopback too) is not affected.
    assert request_status(server.port, upgrade_request(), source="127.0.0.2") == 101


def test_max_fragments(make_server, raw_ws):
    server = make_server(on_message=_echo, max_fragments=10)
    client = raw_ws(server.port)
    frames = [masked(OP_TEXT, b"a", fin=False)] + [masked(OP_CONT, b"b", fin=False)] * 8 + [masked(OP_CONT, b"c")]
    client.send_raw(b"".join(frames))  # 10 fragments: accepted
    assert client.recv_frame() == (True, OP_TEXT, b"a" + b"b" * 8 + b"c")
    frames = [masked(OP_TEXT, b"a", fin=False)] + [masked(OP_CONT, b"b", fin=False)] * 9 + [masked(OP_CONT, b"c")]
    client.send_raw(b"".join(frames))  # 11 fragments
    code, _reason, before = client.recv_close()
    assert code == 1009 and before == []


def test_idle_timeout_closes_the_silent_client_only(make_server, raw_ws):
    server = make_server(on_message=_echo, idle_timeout=0.5, ping_interval=0)
    silent = raw_ws(server.port)
    active = raw_ws(server.port)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        active.send_frame(OP_PING, b"alive")
        assert active.recv_frame() == (True, OP_PONG, b"alive")
        time.sleep(0.1)
    code, reason, _ = silent.recv_close(timeout=0.1)  # already there
    assert (code, reason) == (1000, "idle timeout")
    active.send_frame(OP_TEXT, b"still open")
    assert active.recv_frame() == (True, OP_TEXT, b"still open")
    assert server.stats.idle_closed == 1


def test_slow_loris_is_dropped_after_the_handshake_timeout(make_server):
    server = make_server(handshake_timeout=0.5)
    request = upgrade_request()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        dropped_after = None
        for i in range(len(request)):
            try:
                sock.sendall(request[i:i + 1])
            except OSError:
                dropped_after = time.monotonic() - started
                break
            if select.select([sock], [], [], 0.2)[0]:
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:
                    data = b""
                assert data == b"", data
                dropped_after = time.monotonic() - started
                break
            assert time.monotonic() - started < 5, "not dropped"
    assert dropped_after is not None
    assert 0.45 <= dropped_after <= 2.5, dropped_after
    assert server.stats.handshake_timeouts == 1


def test_header_over_8k_gets_431(make_server):
    server = make_server()
    status, _, _ = http_exchange(server.port, upgrade_request(extra=(("X-Big", "a" * 8200),)))
    assert status == 431


def test_max_message_size(make_server, raw_ws):
    server = make_server(on_message=_echo, max_message_size=1000)
    client = raw_ws(server.port)
    client.send_frame(OP_BINARY, b"x" * 1000)
    assert client.recv_frame() == (True, OP_BINARY, b"x" * 1000)
    client.send_frame(OP_BINARY, b"x" * 1001)
    assert client.recv_close()[0] == 1009


def test_slow_consumer_is_closed_with_1008(make_gateway, raw_ws):
    gw = make_gateway(None, max_queue=64 * KiB, close_timeout=5.0)
    slow = raw_ws(gw.port, rcvbuf=4096)  # never reads from here on
    message = b"%08d" + b"x" * 1016

    async def main():
        async with ws_client(f"ws://127.0.0.1:{gw.port}/") as fast:
            sent = 0
            received = 0
            while gw.stats.slow_closed == 0:
                assert sent < 50000, "the slow client never overflowed"
                for _ in range(32):  # 32 KiB at a time: the fast client stays under max_queue
                    gw.publish(message % sent)
                    sent += 1
                while received < sent:  # the fast one keeps up (and is never over the bound)
                    data = await asyncio.wait_for(fast.recv(), 5)
                    assert int(data[:8]) == received
                    received += 1
            gw.publish("END")
            assert await asyncio.wait_for(fast.recv(), 5) == "END"
            return sent

    sent = run_async(main(), timeout=40)
    code, reason, frames = slow.recv_close(timeout=10)
    assert (code, reason) == (1008, "slow consumer")
    assert [int(p[:8]) for _, p in frames] == list(range(len(frames)))
    assert 0 < len(frames) < sent
    assert gw.stats.slow_closed == 1


def test_client_rate_limit(make_gateway, raw_ws):
    gw = make_gateway(None, client_rate=5)

    async def main():
        async with ws_client(f"ws://127.0.0.1:{gw.port}/") as ws:
            for i in range(20):
                await ws.send(f"flood {i}")
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return info.value.rcvd

    rcvd = run_async(main())
    assert (rcvd.code, rcvd.reason) == (1008, "message rate limit")
    assert gw.stats.rate_limited == 1


def test_ping_flood_counts_against_the_client_rate(make_gateway, raw_ws):
    """Pings are messages for the flood limit: a ping flood is closed with 1008 (library fix)."""
    gw = make_gateway(None, client_rate=5)
    client = raw_ws(gw.port)
    client.send_raw(masked(OP_PING, b"p") * 20)
    code, reason, before = client.recv_close()
    assert (code, reason) == (1008, "message rate limit")
    assert 1 <= len([op for op, _ in before if op == OP_PONG]) <= 6


def test_pongs_of_a_client_that_does_not_read_are_bounded(make_gateway, raw_ws):
    """A peer that floods pings and never reads its pongs: its queue stays near max_queue and it
    is closed with 1008 (before the fix, the pongs piled up without bound: 16 MB in 2 s)."""
    gw = make_gateway(None, client_rate=0, max_queue=64 * KiB, close_timeout=0.5)
    client = raw_ws(gw.port, rcvbuf=4096)
    burst = masked(OP_PING, b"x" * 125) * 200
    deadline = time.monotonic() + 10
    client.sock.settimeout(5)
    try:
        while gw.stats.slow_closed == 0:
            assert time.monotonic() < deadline, "never closed"
            client.sock.sendall(burst)
    except (ConnectionResetError, BrokenPipeError):
        pass
    wait_until(lambda: gw.stats.slow_closed == 1, message="the slow close")
    wait_until(lambda: gw.stats.closes.get(1008) == 1, timeout=5, message="the connection to be dropped")


def test_a_closed_peer_that_keeps_talking_is_dropped_after_close_timeout(make_gateway, raw_ws):
    """After the close handshake, bytes a peer keeps sending (while it never reads) must not
    push the close deadline back (library fix: before, it was pushed back on every read)."""
    gw = make_gateway(None, close_timeout=0.5)
    client = raw_ws(gw.port, rcvbuf=4096)
    first_id = gw.last_id
    for i in range(6000):  # more than the kernel buffers hold: output stays queued
        gw.publish(b"%08d" % i + b"y" * 504)
    wait_until(lambda: gw.last_id >= first_id + 6000, message="the messages to be taken in")
    client.send_close(1000)
    started = time.monotonic()
    dropped = False
    while time.monotonic() - started < 5:
        try:
            client.sock.sendall(b"\x00")  # keep talking; never read
        except OSError:
            dropped = True
            break
        if gw.stats.closes.get(1000):
            dropped = True
            break
        time.sleep(0.1)
    assert dropped, "the peer was never dropped"
    assert time.monotonic() - started < 3.0


# -- observability: /metrics, /healthz, log lines ---------------------------------------------------


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? '
                    r'(-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)|NaN|[+-]Inf)$')
TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$")


def scrape(port: int) -> dict:
    """GET /metrics, check the text format line by line: {(name, labels): value}."""
    status, headers, body = http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    types = {}
    text = body.decode("utf-8")
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            match = TYPE_LINE.match(line)
            assert match, line
            assert match.group(1) not in types, f"TYPE twice: {line}"
            types[match.group(1)] = match.group(2)
        elif line.startswith("# HELP"):
            assert re.match(r"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.group(1), match.group(3) or "", match.group(4)
            assert name in types, f"{name} has no # TYPE line before it"
            if types[name] == "counter":
                assert float(value) >= 0
            assert (name, labels) not in samples, f"duplicate sample {line}"
            samples[(name, labels)] = float(value)
    return samples


def test_metrics_and_healthz(make_gateway):
    gw = make_gateway(None, poll_timeout=10, client_rate=3, sse_heartbeat=0)
    status, _, body = http_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (status, body) == (200, b"ok\n")
    first = scrape(gw.port)
    for name in ("zmqws_messages_out_total", "zmqws_loop_turns_total", "zmqws_connections_total"):
        assert (name, "") in first

    sse = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    poll = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        sse.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert response_head(sse)[0] == 200
        poll.sendall(b"GET /poll HTTP/1.1\r\nHost: localhost\r\n\r\n")

        async def main():
            url = f"ws://127.0.0.1:{gw.port}/"
            async with ws_client(url) as ws, ws_client(url) as flooder:
                wait_until(lambda: scrape(gw.port)[("zmqws_clients", 'transport="poll"')] == 1,
                           message="the poll to be held")
                during = scrape(gw.port)
                for i in range(3):
                    gw.publish(f"m{i}")
                assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)] == ["m0", "m1", "m2"]
                for i in range(10):
                    await flooder.send(f"flood {i}")
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(flooder.recv(), 5)
            return during

        during = run_async(main())
        assert during[("zmqws_clients", 'transport="websocket"')] == 2
        assert during[("zmqws_clients", 'transport="sse"')] == 1
        assert during[("zmqws_clients", 'transport="poll"')] == 1
        wait_until(lambda: gw.clients == 0, message="the clients to be gone")
        after = scrape(gw.port)
    finally:
        sse.close()
        poll.close()
    # 3 messages to 2 websockets + the SSE stream + the poll (answered with the first one at least)
    assert after[("zmqws_messages_out_total", "")] - first[("zmqws_messages_out_total", "")] >= 3 * 3 + 1
    assert after[("zmqws_drops_total", 'cause="client_rate_limit"')] == 1
    assert after[("zmqws_drops_total", 'cause="slow_consumer_closed"')] == 0
    assert after[("zmqws_closes_total", 'code="1000"')] >= 1
    assert after[("zmqws_closes_total", 'code="1008"')] == 1
    assert after[("zmqws_loop_turns_total", "")] > first[("zmqws_loop_turns_total", "")]
    assert after[("zmqws_websocket_connections_total", "")] == 2
    assert after[("zmqws_sse_connections_total", "")] == 1


def test_log_lines_name_the_client_and_the_close_code(make_server, caplog):
    caplog.set_level(logging.INFO, logger="zmqws")
    server = make_server(on_message=_echo)

    async def main():
        async with ws_client(f"ws://127.0.0.1:{server.port}/some/path") as ws:
            for i in range(5):
                await ws.send(f"message {i}")
                await ws.recv()
            connected = [r.getMessage() for r in caplog.records]
        return connected

    during = run_async(main())
    wait_until(lambda: any("disconnect" in r.getMessage() for r in caplog.records),
               message="the disconnect log line")
    lines = [r.getMessage() for r in caplog.records if r.name == "zmqws" and r.levelno >= logging.INFO]
    connects = [line for line in lines if line.startswith("connect ")]
    disconnects = [line for line in lines if line.startswith("disconnect ")]
    assert len(connects) == 1 and len(disconnects) == 1, lines
    client_id = re.search(r"client=(\d+)", connects[0]).group(1)
    assert re.search(rf"client={client_id} addr=127\.0\.0\.1:\d+ transport=websocket path=/some/path",
                     connects[0]), connects[0]
    assert re.search(rf"client={client_id} .*code=1000", disconnects[0]), disconnects[0]
    # Per-message lines, if any, are at DEBUG: the five messages added no INFO line.
    assert not [line for line in during if "message" in line], during


# -- graceful shutdown ------------------------------------------------------------------------------


def test_sigterm_closes_every_client_with_1001_and_refuses_newcomers(spawn, pub):
    close_timeout = 2.0
    process = spawn(*ZMQWS, "--sub", pub.endpoint, "--port", "0", "--close-timeout", str(close_timeout))
    port = int(process.wait_for_line("stderr", r"listening on ws://127\.0\.0\.1:(\d+)/").group(1))
    # A peer that never answers the close: it keeps the gateway in its stopping phase
    # for close_timeout, long enough to try a new connection meanwhile.
    deaf = RawWebSocket(port, rcvbuf=4096)
    deaf.handshake()

    async def main():
        clients = [await ws_client(f"ws://127.0.0.1:{port}/") for _ in range(20)]
        # Everyone receives before the signal (the SUB is connected).
        deadline = time.monotonic() + 5
        while True:
            pub.send(b"ping")
            try:
                await asyncio.wait_for(clients[0].recv(), 0.05)
                break
            except asyncio.TimeoutError:
                assert time.monotonic() < deadline, "the gateway's SUB never received"
        sent_at = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)

        async def closed(ws):
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

        codes = await asyncio.gather(*(closed(ws) for ws in clients))
        # Still stopping (the deaf peer holds it): newcomers are refused.
        assert process.popen.poll() is None
        with pytest.raises(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(upgrade_request())
                response_head(sock)  # a refused connection never gets here
        return codes, sent_at

    try:
        codes, sent_at = run_async(main(), timeout=20)
        assert codes == [1001] * 20
        returncode = process.popen.wait(timeout=close_timeout + 2)
        assert returncode == 0
        assert time.monotonic() - sent_at <= close_timeout + 2
        assert deaf.recv_close(timeout=2)[0] == 1001
    finally:
        deaf.close()
    assert "Traceback" not in process.rest("stderr")


def test_restart_then_resume_gets_a_gap_notice_and_growing_ids(spawn, pub):
    """The gateway process stops and a new one starts on the same publisher: ids come from
    the clock, so they keep growing, and a client resuming with ?since=<last id> is told of
    the gap (what was published meanwhile is not recoverable) before the new messages."""

    async def receive_after_probes(url: str, count: int, tag: bytes):
        async with ws_client(url) as ws:
            docs = []
            deadline = time.monotonic() + 10
            while not any(d.get("topic") == "probe" for d in docs):
                # The new SUB's slow joiner: probe until a probe comes back.
                pub.send_multipart([b"probe", tag])
                try:
                    docs.append(json.loads(await asyncio.wait_for(ws.recv(), 0.05)))
                except asyncio.TimeoutError:
                    assert time.monotonic() < deadline, "the gateway's SUB never received"
            for i in range(count):
                pub.send_multipart([b"t", b"%s %d" % (tag, i)])
            while not any(d.get("data") == f"{tag.decode()} {count - 1}" for d in docs):
                docs.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            return docs

    first = spawn(*ZMQWS, "--sub", pub.endpoint, "--port", "0", "--close-timeout", "1")
    port = int(first.wait_for_line("stderr", r"listening on ws://127\.0\.0\.1:(\d+)/").group(1))
    before = run_async(receive_after_probes(f"ws://127.0.0.1:{port}/?format=json", 5, b"old"))
    last = max(d["id"] for d in before if "id" in d)
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(timeout=5) == 0
    for i in range(3):
        pub.send_multipart([b"t", b"lost %d" % i])  # nobody subscribed: gone

    second = spawn(*ZMQWS, "--sub", pub.endpoint, "--port", "0", "--close-timeout", "1")
    port = int(second.wait_for_line("stderr", r"listening on ws://127\.0\.0\.1:(\d+)/").group(1))
    after = run_async(receive_after_probes(f"ws://127.0.0.1:{port}/?format=json&since={last}", 5, b"new"))
    gap = after[0].get("gap")
    assert gap is not None, after[:3]
    assert gap[0] == last + 1 and gap[1] >= gap[0]
    ids = [d["id"] for d in after[1:]]
    assert ids == sorted(ids) and ids[0] > gap[1], (gap, ids)
    assert [d["data"] for d in after if d.get("topic") == "t"] == [f"new {i}" for i in range(5)]
    assert not any(d.get("data", "").startswith("lost") for d in after)
