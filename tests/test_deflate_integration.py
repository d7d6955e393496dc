"""permessage-deflate (RFC 7692) against real clients: ``websockets``, Node's ``ws``, raw browser offers.

* The ``websockets`` client (compression on, its default) against the
  Gateway and the echo server, byte for byte both ways.
* Raw-socket clients: RSV1 set on big messages and clear on small ones, and
  the compressed frame bytes identical for every client (compressed once).
* Node's ``ws`` client (tests/node/ws_client.mjs; ``npm install`` in
  tests/node if its node_modules is missing) against the Gateway and the
  echo server.
* The offers of Chromium, Firefox and Safari all negotiate.
"""

from __future__ import annotations

import base64
import json
import os
import random
import select
import struct
import time
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest

from conftest import NODE_DIR, TAIL, NodeProcess, inflate, recv, ws_connect as plain_ws_connect
from zmqws.protocol.frames import OP_BINARY, OP_TEXT

pytestmark = pytest.mark.timeout(60)

KiB = 1 << 10
NODE_CLIENT = NODE_DIR / "ws_client.mjs"

CHROMIUM = "permessage-deflate; client_max_window_bits"
FIREFOX = "permessage-deflate; client_max_window_bits"
SAFARI = "permessage-deflate"
RESPONSE = "permessage-deflate; server_no_context_takeover"

FIN, RSV1 = 0x80, 0x40


# -- helpers ------------------------------------------------------------------------------------




def ws_connect(port: int, path: str = "/", **options):
    """A ``websockets`` client with its default compression (permessage-deflate offered)."""
    return plain_ws_connect(port, path, compression="deflate", **options)


WORDS = ("price bid ask volume open close high low symbol exchange market order trade "
         "quote depth spread tick session venue currency").split()


def words(rng: random.Random, size: int) -> str:
    """Compressible but not trivially repetitive text of about ``size`` characters."""
    out: List[str] = []
    length = 0
    while length <= size:
        word = rng.choice(WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.3 else "")
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def big_json(rng: random.Random, seq: int, size: int = KiB) -> str:
    doc = {"seq": seq, "symbol": rng.choice(WORDS).upper(), "pad": ""}
    doc["pad"] = words(rng, size - len(json.dumps(doc)))
    text = json.dumps(doc)
    assert len(text) == size
    return text


def recv_raw_frame(client, timeout: float = 5.0) -> Tuple[int, bytes, bytes]:
    """One server frame from a RawWebSocket: (first header byte, payload, the whole frame's bytes)."""
    deadline = time.monotonic() + timeout
    head = client._read_exactly(2, deadline)
    b1 = head[1]
    assert not b1 & 0x80, "a server frame is masked"
    length = b1 & 0x7F
    ext = b""
    if length == 126:
        ext = client._read_exactly(2, deadline)
        length = struct.unpack("!H", ext)[0]
    elif length == 127:
        ext = client._read_exactly(8, deadline)
        length = struct.unpack("!Q", ext)[0]
    payload = client._read_exactly(length, deadline) if length else b""
    return head[0], payload, head + ext + payload


def extensions_of(head: bytes) -> Optional[str]:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions":
            return value.strip()
    return None


def offer(value: str):
    return (("Sec-WebSocket-Extensions", value),)


class CompressingClient:
    """What a browser does: one compressor for the whole connection (context takeover)."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)

    def send(self, opcode: int, data: bytes) -> None:
        body = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        assert body.endswith(TAIL)
        self.raw.send_frame(opcode, body[:-4], rsv1=True)


# =================================================================================================
# 1. The websockets client and raw clients
# =================================================================================================


def test_websockets_client_negotiates_and_receives_byte_for_byte(gateway, pub, run_async):
    rng = random.Random(1)
    messages: List[object] = []
    for i in range(200):
        messages.append(big_json(rng, i))
        if i % 10 == 0:
            messages.append(f"short {i}")  # below the 128-byte threshold: sent plain
    messages.append(bytes(range(256)) * 8)  # binary, compressed
    messages.append(b"\xff\x00")            # binary, plain
    assert sum(isinstance(m, str) and len(m) < 128 for m in messages) == 20
    raw_size = sum(len(m.encode() if isinstance(m, str) else m) for m in messages)

    async def main():
        async with ws_connect(gateway.port) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            before = gateway.stats.bytes_out
            for m in messages:
                pub.send(m.encode() if isinstance(m, str) else m)
            got = [await recv(ws) for _ in messages]
            return extensions, got, gateway.stats.bytes_out - before

    extensions, got, sent_bytes = run_async(main())
    assert extensions == RESPONSE
    assert got == messages
    assert all(type(g) is type(m) for g, m in zip(got, messages))
    assert sent_bytes < raw_size / 2, f"{sent_bytes} bytes on the wire for {raw_size} of payload"


def test_raw_clients_rsv1_and_the_same_compressed_bytes_for_everyone(gateway, pub, raw_ws):
    rng = random.Random(2)
    big = big_json(rng, 0).encode()
    edge_plain = b"p" * 127          # just below the threshold
    edge_compressed = b"c" * 128     # at the threshold
    binary = bytes(range(256)) * 4
    sent = [big, b"tiny", edge_plain, edge_compressed, binary]
    compressed_clients = [raw_ws(gateway.port, handshake=False) for _ in range(2)]
    for client in compressed_clients:
        assert extensions_of(client.handshake(extra=offer(CHROMIUM))) == RESPONSE
    plain_client = raw_ws(gateway.port)  # no offer: the same messages, uncompressed
    for m in sent:
        pub.send(m)

    frames = [[recv_raw_frame(c) for _ in sent] for c in compressed_clients]
    assert [f[2] for f in frames[0]] == [f[2] for f in frames[1]], "compressed once, same bytes"
    (b0_big, p_big, _), (b0_tiny, p_tiny, _), (b0_127, p_127, _), (b0_128, p_128, _), \
        (b0_bin, p_bin, _) = frames[0]
    assert b0_big == FIN | RSV1 | OP_TEXT and inflate(p_big) == big and len(p_big) < len(big)
    assert b0_tiny == FIN | OP_TEXT and p_tiny == b"tiny"
    assert b0_127 == FIN | OP_TEXT and p_127 == edge_plain
    assert b0_128 == FIN | RSV1 | OP_TEXT and inflate(p_128) == edge_compressed
    assert b0_bin == FIN | RSV1 | OP_BINARY and inflate(p_bin) == binary

    plain = [recv_raw_frame(plain_client) for _ in sent]
    assert [(b0, p) for b0, p, _ in plain] == [
        (FIN | OP_TEXT, big), (FIN | OP_TEXT, b"tiny"), (FIN | OP_TEXT, edge_plain),
        (FIN | OP_TEXT, edge_compressed), (FIN | OP_BINARY, binary)]


def test_handshake_response_names_the_extension_only_when_offered(gateway, raw_ws):
    head = raw_ws(gateway.port, handshake=False).handshake(extra=offer(CHROMIUM))
    assert extensions_of(head) == RESPONSE
    head = raw_ws(gateway.port, handshake=False).handshake()
    assert extensions_of(head) is None


def test_deflate_disabled_means_no_extension(make_gateway, raw_ws, run_async):
    gw = make_gateway(None, deflate=False)
    client = raw_ws(gw.port, handshake=False)
    assert extensions_of(client.handshake(extra=offer(CHROMIUM))) is None
    big = "x" * 4096

    async def main():
        async with ws_connect(gw.port) as ws:
            gw.publish(big)
            return ws.response.headers.get("Sec-WebSocket-Extensions"), await recv(ws)
    assert run_async(main()) == (None, big)
    b0, payload, _ = recv_raw_frame(client)
    assert b0 == FIN | OP_TEXT and payload == big.encode()


def test_echo_server_inflates_compressed_client_messages(echo_server, run_async):
    rng = random.Random(3)
    text = words(rng, 100 * KiB)
    binary = words(rng, 100 * KiB).encode() + bytes(range(256))
    small = "small"

    async def main():
        async with ws_connect(echo_server.port) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") == RESPONSE
            got = []
            for m in (text, binary, small, text):
                await ws.send(m)
                got.append(await recv(ws))
            return got

    before = echo_server.stats.bytes_in
    assert run_async(main()) == [text, binary, small, text]
    received = echo_server.stats.bytes_in - before
    raw_size = 2 * len(text) + len(binary) + len(small)
    assert received < raw_size / 2, f"{received} bytes received for {raw_size} of payload"


# =================================================================================================
# 2. Node's ws client
# =================================================================================================


class NodeClient(NodeProcess):
    """``node tests/node/ws_client.mjs URL COUNT [--send]`` as a subprocess, read without blocking."""

    def __init__(self, node: str, url: str, count: int, stderr_path: Path,
                 send: Optional[Sequence[object]] = None, timeout: float = 20.0) -> None:
        args = [node, str(NODE_CLIENT), url, str(count), "--timeout", str(timeout)]
        if send is not None:
            args.append("--send")
        super().__init__(args, stderr_path, stdin=send is not None)
        self._to_send = send

    def _read_until(self, done, timeout: float) -> None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"node client: no answer in {timeout} s; stderr: {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    if not done():
                        self.proc.wait(5)
                        raise AssertionError(f"node client exited ({self.proc.returncode}) early; "
                                             f"output {self._buf[:300]!r}; stderr: {self.stderr()}")
                    return
                self._buf += chunk

    def wait_open(self, timeout: float = 10.0) -> None:
        self._read_until(lambda: b"\n" in self._buf, timeout)
        line, _, self._buf = self._buf.partition(b"\n")
        assert line == b"open", (line, self.stderr())
        if self._to_send is not None:
            for m in self._to_send:
                item = {"text": m} if isinstance(m, str) else {"binary": base64.b64encode(m).decode()}
                self.proc.stdin.write(json.dumps(item).encode() + b"\n")
            self.proc.stdin.close()

    def result(self, timeout: float = 20.0) -> dict:
        self._read_until(lambda: self._buf.endswith(b"\n"), timeout)
        assert self.proc.wait(5) == 0, self.stderr()
        result = json.loads(self._buf)
        result["messages"] = [m["text"] if "text" in m else base64.b64decode(m["binary"])
                              for m in result["messages"]]
        return result



@pytest.fixture
def node_client(node_ready, tmp_path):
    """``node_client(url, count, send=None)`` → a started NodeClient, killed at teardown."""
    made: List[NodeClient] = []

    def make(url: str, count: int, send: Optional[Sequence[object]] = None) -> NodeClient:
        client = NodeClient(node_ready, url, count, tmp_path / f"node-{len(made)}.err", send)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def node_messages(rng: random.Random) -> List[object]:
    messages: List[object] = []
    for i in range(100):
        messages.append(big_json(rng, i, size=KiB + (i % 7) * 150))
        if i % 5 == 0:
            messages.append(f"short {i}")
    messages += ["é ✓ 𝄞 " * 200, "", "é"]
    messages += [bytes(rng.randrange(256) for _ in range(64)) * 40 for _ in range(5)]  # binary, big
    messages += [b"\xff", b"\xff\xfe\xfd"]                                             # binary, small
    return messages


def test_node_ws_client_receives_compressed_messages_byte_for_byte(gateway, pub, node_client):
    messages = node_messages(random.Random(4))
    raw_size = sum(len(m.encode() if isinstance(m, str) else m) for m in messages)
    client = node_client(f"ws://127.0.0.1:{gateway.port}/?topic=node.", len(messages))
    client.wait_open()
    before = gateway.stats.bytes_out
    for m in messages:
        pub.send_multipart([b"node.x", m.encode() if isinstance(m, str) else m])
    pub.send_multipart([b"other", b"not for node"])
    result = client.result()
    assert result["extensions"] == RESPONSE
    assert result["close"] == 1000
    got = result["messages"]
    assert got == messages
    assert all(type(g) is type(m) for g, m in zip(got, messages))
    sent_bytes = gateway.stats.bytes_out - before
    assert sent_bytes < raw_size / 2, f"{sent_bytes} bytes on the wire for {raw_size} of payload"


def test_node_ws_client_sends_compressed_messages_to_the_echo_server(echo_server, node_client):
    rng = random.Random(5)
    text = words(rng, 100 * KiB)
    binary = words(rng, 100 * KiB).encode() + bytes(range(256))
    messages = [text, binary, "small", b"\x01\x02", "é ✓ 𝄞 " * 500, text]
    raw_size = sum(len(m.encode() if isinstance(m, str) else m) for m in messages)
    before = echo_server.stats.bytes_in
    client = node_client(f"ws://127.0.0.1:{echo_server.port}/", len(messages), send=messages)
    client.wait_open()
    result = client.result()
    assert result["extensions"] == RESPONSE
    assert result["messages"] == messages
    assert all(type(g) is type(m) for g, m in zip(result["messages"], messages))
    received = echo_server.stats.bytes_in - before
    assert received < raw_size / 2, f"{received} bytes received for {raw_size} of payload"


# =================================================================================================
# 3. Browser offers
# =================================================================================================


@pytest.mark.parametrize("browser_offer", [CHROMIUM, FIREFOX, SAFARI], ids=["chromium", "firefox", "safari"])
def test_browser_offers_negotiate_and_work_both_ways(echo_server, make_gateway, raw_ws, browser_offer):
    client = raw_ws(echo_server.port, handshake=False)
    assert extensions_of(client.handshake(extra=offer(browser_offer))) == RESPONSE
    # Client → server compressed with context takeover (one compressor for the connection,
    # as browsers do); the echoes come back compressed.
    compressing = CompressingClient(client)
    text = words(random.Random(6), 2 * KiB).encode()
    for opcode, data in ((OP_TEXT, text), (OP_TEXT, text), (OP_BINARY, text + b"\xff"), (OP_TEXT, b"hi")):
        compressing.send(opcode, data)
        b0, payload, _ = recv_raw_frame(client)
        if len(data) >= 128:
            assert b0 == FIN | RSV1 | opcode and inflate(payload) == data
        else:
            assert b0 == FIN | opcode and payload == data
    # The gateway negotiates the same way.
    gw = make_gateway(None)
    head = raw_ws(gw.port, handshake=False).handshake(extra=offer(browser_offer))
    assert extensions_of(head) == RESPONSE
