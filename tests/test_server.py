"""Integration tests of the standalone WebSocketServer on 127.0.0.1.

Well-behaved traffic goes through the ``websockets`` client; malformed
traffic through raw sockets (frames built with ``zmqws.protocol.frames.encode_frame``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.protocol import State

from conftest import ws_connect
from zmqws import WebSocketServer
from zmqws.protocol.frames import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, encode_frame

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20




def echo(client, data):
    client.send(data)


# -- well-behaved clients -----------------------------------------------------------------


@pytest.mark.parametrize("message", ["hello", "", "wörld ✓ 𝄞", b"\x00\x01\xff", b""],
                         ids=["text", "empty-text", "non-ascii", "binary", "empty-binary"])
def test_echo(echo_server, run_async, message):
    async def main():
        async with ws_connect(echo_server.port) as ws:
            await ws.send(message)
            reply = await ws.recv()
            assert type(reply) is type(message)
            assert reply == message
    run_async(main())
    assert echo_server.stats.messages_in == 1


def test_many_messages_in_order(echo_server, run_async):
    async def main():
        async with ws_connect(echo_server.port) as ws:
            for i in range(200):
                await ws.send(f"m{i}")
            for i in range(200):
                assert await ws.recv() == f"m{i}"
    run_async(main())


def test_message_of_exactly_max_message_size_is_accepted(make_server, run_async):
    server = make_server(on_message=echo, max_message_size=MiB)
    payload = bytes(range(256)) * (MiB // 256)
    assert len(payload) == MiB

    async def main():
        async with ws_connect(server.port) as ws:
            await ws.send(payload)
            assert await ws.recv() == payload
            text = "x" * MiB
            await ws.send(text)
            assert await ws.recv() == text
    run_async(main())


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_message_over_max_message_size_gets_1009(make_server, run_async, fragmented):
    server = make_server(on_message=echo, max_message_size=MiB)
    payload = b"\x01" * (MiB + 1)

    async def main():
        async with ws_connect(server.port) as ws:
            if fragmented:
                await ws.send([payload[:MiB // 2], payload[MiB // 2:]])
            else:
                await ws.send(payload)
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            assert ws.close_code == 1009
    run_async(main())
    assert server.stats.messages_in == 0


@pytest.mark.parametrize("fragments", [["Hel", "lo, ", "wörld"], [b"\x00", b"", b"\xff" * 70000]],
                         ids=["text", "binary"])
def test_fragmented_message_from_client(echo_server, run_async, fragments):
    async def main():
        async with ws_connect(echo_server.port) as ws:
            await ws.send(fragments)
            whole = fragments[0][:0].join(fragments)
            assert await ws.recv() == whole
            await ws.send("after")  # the connection is still usable
            assert await ws.recv() == "after"
    run_async(main())


def test_ping_gets_pong(echo_server, run_async):
    async def main():
        async with ws_connect(echo_server.port) as ws:
            waiter = await ws.ping(b"are you there")
            latency = await asyncio.wait_for(waiter, 2)
            assert latency >= 0
            waiter = await ws.ping()  # four random bytes
            await asyncio.wait_for(waiter, 2)
    run_async(main())


@pytest.mark.parametrize("code", [1000, 4000])
def test_client_close_code_is_echoed(echo_server, run_async, wait_until, code):
    async def main():
        async with ws_connect(echo_server.port) as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(code, "bye now")
            assert ws.protocol.close_sent.code == code
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.code == code
            assert ws.protocol.close_rcvd.reason == "bye now"
            assert ws.close_code == code
    run_async(main())
    wait_until(lambda: echo_server.stats.closes.get(code) == 1, timeout=2,
               message=f"the server to count a close with {code}")
    assert echo_server.clients == 0


def test_server_initiated_close_from_hook(make_server, run_async, wait_until):
    def on_message(client, data):
        if data == "close me":
            client.close(4001, "as you wish")
        else:
            client.send(data)

    server = make_server(on_message=on_message)

    async def main():
        async with ws_connect(server.port) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.send("close me")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 4001
            assert info.value.rcvd.reason == "as you wish"
            await ws.wait_closed()
            assert ws.close_code == 4001
    run_async(main())
    wait_until(lambda: server.stats.closes.get(4001) == 1, timeout=2, message="close counted")
    assert server.clients == 0


def test_connect_and_disconnect_hooks_called_once_each(make_server, run_async, wait_until):
    events = []
    lock = threading.Lock()

    def on_connect(client):
        with lock:
            events.append(("connect", client, client.path, client.request.query_value("a")))

    def on_disconnect(client):
        with lock:
            # The upgrade request is released after on_connect; the path stays.
            events.append(("disconnect", client, client.path, client.request))

    server = make_server(on_connect=on_connect, on_message=echo, on_disconnect=on_disconnect)

    async def main():
        async with ws_connect(server.port, "/room?a=1") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    run_async(main())
    wait_until(lambda: len(events) == 2, timeout=2, message="on_disconnect")
    server.stop()
    assert [e[0] for e in events] == ["connect", "disconnect"]
    assert events[0][1] is events[1][1]
    assert events[0][2:] == ("/room", "1")
    assert events[1][2:] == ("/room", None)


def test_disconnect_hook_called_once_when_server_stops(make_server, run_async, wait_until):
    disconnects = []
    server = make_server(on_disconnect=disconnects.append, close_timeout=0.5)

    async def main():
        async with ws_connect(server.port) as ws:
            await asyncio.to_thread(server.stop)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    run_async(main())
    assert len(disconnects) == 1
    server.stop()
    assert len(disconnects) == 1


def test_subprotocol_negotiation_follows_server_preference(make_server, run_async):
    chosen = []
    server = make_server(subprotocols=["b", "a"], on_connect=lambda c: chosen.append(c.subprotocol))

    async def main():
        async with ws_connect(server.port, subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"
        async with ws_connect(server.port, subprotocols=["a"]) as ws:
            assert ws.subprotocol == "a"
        async with ws_connect(server.port) as ws:
            assert ws.subprotocol is None
    run_async(main())
    assert chosen == ["b", "a", None]


def test_keepalive_closes_silent_client_and_keeps_responsive_one(make_server, raw_ws, run_async):
    server = make_server(on_message=echo, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5)

    async def main():
        async with ws_connect(server.port) as ws:  # answers pings by itself
            silent = raw_ws(server.port)
            start = time.monotonic()

            def watch_silent():
                code, reason, before = silent.recv_close(timeout=3)
                closed_frame_at = time.monotonic() - start
                silent.wait_eof(timeout=3)
                return code, before, closed_frame_at, time.monotonic() - start

            code, before, close_frame_at, eof_at = await asyncio.to_thread(watch_silent)
            assert code == 1011
            assert (OP_PING, b"zmqws") in before  # it was pinged first
            assert 0.3 < close_frame_at < 1.5
            assert eof_at < 2.5
            # The responsive client went through the same time and is still open.
            assert ws.state is State.OPEN
            await ws.send("still here")
            assert await ws.recv() == "still here"
    run_async(main())
    assert server.stats.ping_timeouts == 1


def test_handshake_timeout_drops_silent_socket(make_server, raw_ws):
    server = make_server(handshake_timeout=0.5)
    silent = raw_ws(server.port, handshake=False)
    start = time.monotonic()
    silent.wait_eof(timeout=3)
    elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 2.0
    assert server.stats.handshake_timeouts == 1


def test_hook_exception_closes_that_client_with_1011_only(make_server, run_async, wait_until):
    def on_message(client, data):
        if data == "boom":
            raise RuntimeError("hook failure (expected by the test)")
        client.send(data)

    server = make_server(on_message=on_message)

    async def main():
        async with ws_connect(server.port) as good, ws_connect(server.port) as bad:
            await bad.send("boom")
            with pytest.raises(ConnectionClosedError) as info:
                await bad.recv()
            assert info.value.rcvd.code == 1011
            for i in range(3):
                await good.send(f"ok {i}")
                assert await good.recv() == f"ok {i}"
        async with ws_connect(server.port) as later:
            await later.send("new")
            assert await later.recv() == "new"
    run_async(main())


def test_frames_sent_right_behind_the_handshake(echo_server, raw_ws, upgrade_request):
    client = raw_ws(echo_server.port, handshake=False)
    client.send_raw(upgrade_request() + encode_frame(OP_TEXT, b"eager", mask=b"abcd"))
    client.buf = b""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.sock.recv(4096)
        assert chunk
        data += chunk
    head, _, client.buf = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert client.recv_frame() == (True, OP_TEXT, b"eager")


# -- malformed handshakes -------------------------------------------------------------------

BAD_HANDSHAKES = {
    "missing-key": (dict(key=None), 400),
    "bad-key": (dict(key="not base64!"), 400),
    "short-key": (dict(key="AAAAAAAAAAA="), 400),  # base64 of 8 bytes, not 16
    "post-upgrade": (dict(method="POST"), 400),
    "version-8": (dict(version="8"), 426),
    "no-version": (dict(version=None), 426),
    "huge-header": (dict(extra=(("X-Padding", "a" * 9216),)), 431),
}


@pytest.mark.parametrize("name", list(BAD_HANDSHAKES))
def test_bad_handshake_gets_http_status(echo_server, http_exchange, upgrade_request, name):
    options, status = BAD_HANDSHAKES[name]
    got, headers, body = http_exchange(echo_server.port, upgrade_request(**options))
    assert got == status, body
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert b"Traceback" not in body and b"File \"" not in body
    assert len(body) < 200
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    assert echo_server.clients == 0
    assert echo_server.stats.http_errors == 1


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", 405),
    (b"hello there\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n", 505),
], ids=["get-unknown", "get-root", "post", "garbage", "http2"])
def test_plain_http_on_plain_server(echo_server, http_exchange, request_bytes, status):
    got, headers, body = http_exchange(echo_server.port, request_bytes)
    assert got == status
    assert b"Traceback" not in body
    assert int(headers["content-length"]) == len(body)
    if status == 405:
        assert "GET" in headers["allow"]


def test_head_error_response_has_no_body(echo_server, http_exchange):
    status, headers, body = http_exchange(echo_server.port, b"HEAD /nope HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 404
    assert body == b""  # RFC 9110 §9.3.2
    assert int(headers["content-length"]) > 0  # the length a GET would have had


def test_server_survives_bad_handshakes(echo_server, http_exchange, upgrade_request, run_async):
    for _ in range(5):
        assert http_exchange(echo_server.port, upgrade_request(key=None))[0] == 400

    async def main():
        async with ws_connect(echo_server.port) as ws:
            await ws.send("fine")
            assert await ws.recv() == "fine"
    run_async(main())


# -- malformed frames ---------------------------------------------------------------------------


def test_unmasked_frame_gets_1002(echo_server, raw_ws):
    client = raw_ws(echo_server.port)
    client.send_frame(OP_TEXT, b"not masked", masked=False)
    code, _reason, before = client.recv_close()
    assert code == 1002 and before == []
    client.wait_eof()
    assert echo_server.stats.protocol_errors == 1


@pytest.mark.parametrize("frames", [
    [(OP_TEXT, b"\xff\xfe", True)],
    [(OP_TEXT, b"caf\xc3", False), (OP_CONT, b"(", True)],   # broken across fragments
    [(OP_TEXT, b"\xed\xa0\x80", True)],                       # a UTF-16 surrogate
], ids=["invalid-byte", "split-sequence", "surrogate"])
def test_invalid_utf8_gets_1007(echo_server, raw_ws, frames):
    client = raw_ws(echo_server.port)
    for opcode, payload, fin in frames:
        client.send_frame(opcode, payload, fin=fin)
    code, _reason, before = client.recv_close()
    assert code == 1007 and before == []
    client.wait_eof()


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcode_gets_1002(echo_server, raw_ws, opcode):
    client = raw_ws(echo_server.port)
    client.send_frame(opcode, b"x")
    code, _reason, _before = client.recv_close()
    assert code == 1002
    client.wait_eof()


@pytest.mark.parametrize("frame, code", [
    (encode_frame(OP_TEXT, b"x", rsv1=True, mask=b"abcd"), 1002),            # RSV1, no extension
    (encode_frame(OP_PING, b"x", fin=False, mask=b"abcd"), 1002),            # fragmented control
    (encode_frame(OP_PING, b"p" * 126, mask=b"abcd"), 1002),                 # control > 125 bytes
    (encode_frame(OP_CONT, b"x", mask=b"abcd"), 1002),                       # nothing to continue
    (encode_frame(0x8, b"\x03", mask=b"abcd"), 1002),                        # one-byte close
    (encode_frame(0x8, b"\x03\xed", mask=b"abcd"), 1002),                    # close code 1005
    (encode_frame(0x8, b"\x03\xe8\xff", mask=b"abcd"), 1007),                # reason not UTF-8
    (encode_frame(OP_TEXT, b"a", fin=False, mask=b"abcd")
     + encode_frame(OP_TEXT, b"b", mask=b"abcd"), 1002),                     # new message inside one
], ids=["rsv1", "fragmented-ping", "long-ping", "orphan-continuation", "close-1-byte",
        "close-1005", "close-reason-not-utf8", "interleaved-message"])
def test_bad_frames_get_their_close_code(echo_server, raw_ws, frame, code):
    client = raw_ws(echo_server.port)
    client.send_raw(frame)
    got, _reason, before = client.recv_close()
    assert got == code and before == []
    client.wait_eof()


def test_valid_utf8_split_across_fragments_and_reads(echo_server, raw_ws):
    client = raw_ws(echo_server.port)
    client.send_frame(OP_TEXT, b"caf\xc3", fin=False)
    client.send_frame(OP_PING, b"between fragments")  # control frames may be interleaved
    client.send_frame(OP_CONT, b"\xa9 \xf0\x9d", fin=False)
    client.send_frame(OP_CONT, b"\x84\x9e")
    assert client.recv_frame() == (True, OP_PING + 1, b"between fragments")  # the pong
    assert client.recv_frame() == (True, OP_TEXT, "café 𝄞".encode())


def test_bytes_dribbled_one_at_a_time(echo_server, raw_ws, upgrade_request):
    client = raw_ws(echo_server.port, handshake=False)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = (upgrade_request() + encode_frame(OP_TEXT, "dribble ✓".encode(), mask=b"\x01\x02\x03\x04")
            + encode_frame(OP_BINARY, b"\x00" * 300, mask=b"\xff\x00\xff\x00"))
    for i in range(len(data)):
        client.send_raw(data[i:i + 1])
    received = b""
    while received.count(b"\r\n\r\n") < 1:
        received += client.sock.recv(4096)
    head, _, client.buf = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert client.recv_frame() == (True, OP_TEXT, "dribble ✓".encode())
    assert client.recv_frame() == (True, OP_BINARY, b"\x00" * 300)


def test_broadcast_from_another_thread(echo_server, run_async):
    async def main():
        clients = [await ws_connect(echo_server.port) for _ in range(3)]
        try:
            await asyncio.to_thread(lambda: [echo_server.broadcast(m) for m in ("one", b"\x02", "three")])
            for ws in clients:
                assert [await ws.recv() for _ in range(3)] == ["one", b"\x02", "three"]
        finally:
            for ws in clients:
                await ws.close()
    run_async(main())


def test_message_before_bad_frame_is_answered(echo_server, raw_ws):
    client = raw_ws(echo_server.port)
    client.send_raw(encode_frame(OP_BINARY, b"first", mask=b"wxyz") + encode_frame(0x3, b"", mask=b"wxyz"))
    code, _reason, before = client.recv_close()
    assert before == [(OP_BINARY, b"first")]
    assert code == 1002


def test_client_vanishing_mid_frame_is_cleaned_up(echo_server, raw_ws, wait_until):
    gone = raw_ws(echo_server.port)
    other = raw_ws(echo_server.port)
    wait_until(lambda: echo_server.clients == 2, timeout=1)
    frame = encode_frame(OP_BINARY, b"z" * 1000, mask=b"abcd")
    gone.send_raw(frame[:300])  # header and part of the payload
    gone.close()
    wait_until(lambda: echo_server.clients == 1, timeout=1, message="the vanished client to be dropped")
    other.send_frame(OP_TEXT, b"still working")
    assert other.recv_frame() == (True, OP_TEXT, b"still working")
    assert echo_server.stats.closes.get(1006) == 1
    other.send_close(1000)
    assert other.recv_close()[0] == 1000
    wait_until(lambda: echo_server.clients == 0, timeout=1)


def test_client_vanishing_mid_handshake_is_cleaned_up(echo_server, raw_ws, upgrade_request, wait_until):
    gone = raw_ws(echo_server.port, handshake=False)
    gone.send_raw(upgrade_request()[:40])
    wait_until(lambda: echo_server.stats.bytes_in >= 40, timeout=1)
    gone.close()
    wait_until(lambda: not echo_server.connection_list(), timeout=1, message="the half-handshake socket to be dropped")
    other = raw_ws(echo_server.port)
    other.send_frame(OP_TEXT, b"ok")
    assert other.recv_frame() == (True, OP_TEXT, b"ok")


# -- stopping -------------------------------------------------------------------------------------


def test_stop_sends_1001_to_every_client(make_server, run_async):
    server = make_server(on_message=echo, close_timeout=2.0)

    async def main():
        clients = [await ws_connect(server.port) for _ in range(3)]
        try:
            start = time.monotonic()
            receivers = [asyncio.ensure_future(ws.recv()) for ws in clients]
            await asyncio.to_thread(server.stop)
            elapsed = time.monotonic() - start
            for receiver in receivers:
                with pytest.raises(ConnectionClosed) as info:
                    await receiver
                assert info.value.rcvd.code == 1001
            return elapsed
        finally:
            for ws in clients:
                await ws.close()

    elapsed = run_async(main())
    assert elapsed < 1.5  # the clients answered; no need to wait for close_timeout
    assert server.stats.closes.get(1001) == 3
    server.stop()  # twice is safe
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_stop_does_not_wait_forever_for_unresponsive_clients(make_server, raw_ws):
    server = make_server(close_timeout=0.5)
    clients = [raw_ws(server.port) for _ in range(2)]
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 1.5
    for client in clients:
        code, _reason, _ = client.recv_close(timeout=1)
        assert code == 1001
        client.wait_eof(timeout=1)


def test_stop_is_safe_twice_and_before_start():
    server = WebSocketServer(0)
    server.stop()  # never started
    server.start()
    try:
        port = server.port
        server.stop()
    finally:
        server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_stop_from_a_hook(make_server, run_async):
    server_box = []

    def on_message(client, data):
        server_box[0].stop()  # from the loop thread: must not deadlock

    server = make_server(on_message=on_message)
    server_box.append(server)

    async def main():
        async with ws_connect(server.port) as ws:
            await ws.send("stop")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1001
    run_async(main())
    assert server._stopped.wait(3)


def test_context_manager(run_async):
    with WebSocketServer(0, on_message=echo, close_timeout=0.5) as server:
        port = server.port
        assert port

        async def main():
            async with ws_connect(port) as ws:
                await ws.send("ctx")
                assert await ws.recv() == "ctx"
        run_async(main())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_port_in_use_raises_oserror(make_server):
    first = make_server()
    second = WebSocketServer(first.port)
    with pytest.raises(OSError, match="address already in use") as info:
        second.start()
    assert info.value.errno == errno.EADDRINUSE
    assert str(first.port) in str(info.value)
    second.stop()  # safe after a failed start


def test_no_tls_no_openssl_loaded():
    """Without TLS a gateway does not load ssl or hashlib (OpenSSL's libraries are megabytes
    of RSS per process, about a tenth of the memory budget for 10 000 idle connections)."""
    code = (
        "import sys, zmqws, zmqws.cli\n"  # the command line's modules too
        "g = zmqws.Gateway('tcp://127.0.0.1:1', 0)\n"
        "g.start()\n"
        "import socket, base64\n"
        "s = socket.create_connection(('127.0.0.1', g.port))\n"
        "s.sendall(b'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n"
        "          b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')\n"
        "head = s.recv(4096)\n"
        "assert b's3pPLMBiTxaQ9kYGzzhZRbK+xOo=' in head, head\n"  # RFC 6455 §1.3's example
        "s.close()\n"
        "g.stop()\n"
        "print(sorted(m for m in ('ssl', '_ssl', 'hashlib', '_hashlib', 'secrets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
