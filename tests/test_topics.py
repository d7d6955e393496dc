"""Integration tests of the gateway's topic features, with real clients and real ZeroMQ sockets.

Topic filtering (``?topic=``), control messages (``{"subscribe": ...}``),
upstream subscriptions (observed on an XPUB socket), envelopes (``?format=``),
client → ZeroMQ forwarding (PUSH/PUB) with its flood and high-water-mark
limits, resume (``?since=``) with gap notices, and the routing structures
(:mod:`zmqws.routing`) at scale and in unit tests.

Every server, socket and thread started here is stopped by a fixture or a
``finally``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import random
import threading
import time
from typing import Dict, List, Optional, Sequence

import pytest
import zmq
from websockets.exceptions import ConnectionClosed

from conftest import ws_connect
from zmqws.protocol.frames import OP_TEXT
from zmqws.gateway import Gateway
from zmqws.routing import History, Router, Stored, Upstream

pytestmark = pytest.mark.timeout(40)

KiB = 1 << 10


# -- helpers ------------------------------------------------------------------------------------




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


def _text(message) -> str:
    return message if isinstance(message, str) else message.decode("latin-1")


TOPIC_PROBE = "__topic_probe__"
TOPIC_FENCE = "__topic_fence__"


async def topic_fence(ws, pub, topic: bytes, timeout: float = 5.0) -> None:
    """Return once messages published on ``topic`` reach ``ws`` (the slow-joiner fence for one topic).

    After a new upstream SUBSCRIBE, the publisher drops messages until the
    subscription has reached it.  Probes on ``topic`` are published until one
    arrives, then a fence is published and read, so no probe is still in
    flight when this returns.  ``ws`` must be subscribed to ``topic`` and get
    nothing else meanwhile.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert loop.time() < deadline, f"no message on {topic!r} reached the client in {timeout} s"
        pub.send_multipart([topic, TOPIC_PROBE.encode()])
        try:
            await asyncio.wait_for(ws.recv(), 0.02)
            break
        except asyncio.TimeoutError:
            continue
    pub.send_multipart([topic, TOPIC_FENCE.encode()])
    while TOPIC_FENCE not in _text(await asyncio.wait_for(ws.recv(), max(0.01, deadline - loop.time()))):
        pass


async def fence_everything(port: int, pub) -> None:
    """The slow-joiner fence for a gateway of any envelope (``wait_subscribed`` compares raw payloads).

    A client that names no topic makes the gateway subscribe to everything
    upstream; once its fence has arrived, the subscription lingers after it
    leaves, so the test's clients that name no topic miss nothing.
    """
    async with ws_connect(port) as ws:
        await topic_fence(ws, pub, b"__fence__")


class Ticker(threading.Thread):
    """Publishes ``[topic, b"<topic>|<seq>"]`` on each topic in turn, every ``interval`` s, until stopped.

    The PUB socket is used by this thread only while it runs (ZeroMQ sockets
    are not thread-safe); :meth:`stop` joins it.
    """

    def __init__(self, pub, topics: Sequence[bytes], interval: float = 0.001) -> None:
        super().__init__(name="ticker", daemon=True)
        self.pub = pub
        self.topics = list(topics)
        self.interval = interval
        self.sent: Dict[bytes, int] = {t: 0 for t in self.topics}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for topic in self.topics:
                self.pub.send_multipart([topic, b"%s|%d" % (topic, self.sent[topic])])
                self.sent[topic] += 1
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        assert not self.is_alive(), "the ticker thread did not stop"


def tick_of(data: str):
    """(topic, seq) of a Ticker payload."""
    topic, _, seq = data.rpartition("|")
    return topic, int(seq)


def assert_contiguous(seqs: List[int], what: str) -> None:
    assert seqs, f"no {what} messages"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{what}: not contiguous: {seqs}"


def upgrade_status(http_exchange, upgrade_request, port: int, path: str) -> int:
    return http_exchange(port, upgrade_request(path))[0]


# =================================================================================================
# 1. Topic filtering
# =================================================================================================


def test_repeated_topic_parameter_filters_by_prefix(gateway, pub, run_async):
    a_path = "/?topic=prices.&topic=news"
    messages = [
        [b"prices.AAPL", b"p1"],          # A, B
        [b"news", b"n1"],                 # A, B
        [b"newsletter.weekly", b"n2"],    # A (prefix rule: "news" matches "newsletter"), B
        [b"weather.paris", b"w1"],        # B, C
        [b"prices", b"no dot"],           # B only: "prices." is not a prefix of "prices"
        [b"PRICES.AAPL", b"case"],        # B only: bytes, case-sensitive
        [b"news.sport", b"meta", b"n3"],  # A, B; the payload is the last part
        [b"prices.single-part"],          # A, B: single part, matched by its leading bytes
        [b"weather single-part"],         # B, C
        [b"nothing to see"],              # B only
        [b"prices.end", b"end A"],        # A, B
        [b"weather.end", b"end C"],       # B, C
    ]
    expected_a = ["p1", "n1", "n2", "n3", "prices.single-part", "end A"]
    expected_b = ["p1", "n1", "n2", "w1", "no dot", "case", "n3", "prices.single-part",
                  "weather single-part", "nothing to see", "end A", "end C"]
    expected_c = ["w1", "weather single-part", "end C"]

    async def main():
        async with ws_connect(gateway.port, a_path) as a, ws_connect(gateway.port) as b, \
                ws_connect(gateway.port, "/?topic=weather") as c:
            for parts in messages:
                pub.send_multipart(parts)
            got = []
            for ws, expected in ((a, expected_a), (b, expected_b), (c, expected_c)):
                got.append([await recv(ws) for _ in expected])
                assert await nothing_within(ws, 0.05)
            return got

    assert run_async(main()) == [expected_a, expected_b, expected_c]


def test_require_topic_refuses_a_client_without_topic(make_gateway, http_exchange, upgrade_request,
                                                      raw_ws):
    gw = make_gateway(None, require_topic=True)
    status, _headers, body = http_exchange(gw.port, upgrade_request("/"))
    assert status == 400
    assert b"topic" in body
    assert upgrade_status(http_exchange, upgrade_request, gw.port, "/?format=json") == 400
    raw_ws(gw.port, path="/?topic=prices.")  # asserts 101
    assert gw.stats.http_errors == 2


def test_many_clients_over_many_topics_each_get_exactly_their_topics_in_order(gateway, pub, run_async):
    n_clients, n_topics, n_messages = 30, 10, 1000
    rng = random.Random(6455)

    def topic_name(t: int) -> str:
        return f"sym{t}."

    client_topics = []
    for i in range(n_clients):
        topics = {i % n_topics}
        if i % 2 == 0:
            topics.add((i * 7 + 3) % n_topics)
        client_topics.append(sorted(topics))
    stream = [(seq, rng.randrange(n_topics)) for seq in range(n_messages)]
    expected = []
    for topics in client_topics:
        wanted = set(topics)
        expected.append([f"{t}:{seq}" for seq, t in stream if t in wanted]
                        + [f"end:{t}" for t in range(n_topics) if t in wanted])

    async def main():
        clients = []
        try:
            for topics in client_topics:
                query = "&".join(f"topic={topic_name(t)}" for t in topics)
                clients.append(await ws_connect(gateway.port, f"/?{query}"))
            assert gateway.clients == n_clients

            async def consume(ws, n):
                return [await recv(ws, 10) for _ in range(n)]

            consumers = [asyncio.ensure_future(consume(ws, len(exp)))
                         for ws, exp in zip(clients, expected)]
            for seq, t in stream:
                pub.send_multipart([f"{topic_name(t)}x".encode(), f"{t}:{seq}".encode()])
            for t in range(n_topics):
                pub.send_multipart([f"{topic_name(t)}end".encode(), f"end:{t}".encode()])
            return await asyncio.gather(*consumers)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    results = run_async(main(), timeout=30)
    for i, (got, exp) in enumerate(zip(results, expected)):
        assert got == exp, f"client {i} (topics {client_topics[i]})"
    assert gateway.stats.drops == 0


# =================================================================================================
# 2. Control messages
# =================================================================================================


def test_control_messages_are_acknowledged(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port, "/?topic=a") as ws:
            await ws.send(json.dumps({"subscribe": "b"}))
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "b", "topics": ["a", "b"]}
            await ws.send(json.dumps({"subscribe": "b"}))  # already there: acknowledged, unchanged
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "b", "topics": ["a", "b"]}
            await ws.send(json.dumps({"unsubscribe": "a"}))
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "a", "topics": ["b"]}
            await ws.send(json.dumps({"unsubscribe": "zzz"}))  # not subscribed: unchanged
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "zzz", "topics": ["b"]}
            # Not control messages: ignored (no push socket), no answer, the connection stays.
            await ws.send(json.dumps({"subscribe": 42}))
            await ws.send(json.dumps({"subscribe": "c", "extra": 1}))
            await ws.send("{not json")
            pub.send_multipart([b"a.1", b"for a"])
            pub.send_multipart([b"b.1", b"for b"])
            assert await recv(ws) == "for b"
            await ws.send(json.dumps({"unsubscribe": "b"}))
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "b", "topics": []}
            pub.send_multipart([b"b.2", b"not any more"])
            assert await nothing_within(ws, 0.1)

        # A client that asked for no topic gets everything until it names one.
        async with ws_connect(gateway.port) as ws:
            await ws.send(json.dumps({"subscribe": "x"}))
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "x", "topics": ["x"]}
            pub.send_multipart([b"y", b"not for x"])
            pub.send_multipart([b"x.1", b"for x"])
            assert await recv(ws) == "for x"

    run_async(main())


def test_subscribe_and_unsubscribe_while_publishing(gateway, pub, run_async):
    ticker = Ticker(pub, [b"keep.", b"other."], interval=0.0005)

    async def main():
        async with ws_connect(gateway.port, "/?topic=keep.") as ws:
            ticker.start()
            log = []  # ("ack", action) or (topic, seq), in arrival order

            async def read_until(predicate):
                while True:
                    data = await recv(ws)
                    message = json.loads(data) if data.startswith("{") else data
                    if isinstance(message, dict):
                        log.append(("ack", message["ack"]))
                        assert message["topics"] == (["keep.", "other."] if message["ack"] == "subscribe"
                                                     else ["keep."])
                    else:
                        log.append(tick_of(message))
                    if predicate(log[-1]):
                        return

            def count(topic):
                return sum(1 for entry in log if entry[0] == topic)

            await read_until(lambda _: count("keep.") >= 20)
            await ws.send(json.dumps({"subscribe": "other."}))
            await read_until(lambda entry: entry == ("ack", "subscribe"))
            await read_until(lambda _: count("other.") >= 30)
            await ws.send(json.dumps({"unsubscribe": "other."}))
            await read_until(lambda entry: entry == ("ack", "unsubscribe"))
            keep_at_unsubscribe = count("keep.")
            await read_until(lambda _: count("keep.") >= keep_at_unsubscribe + 100)
            return log

    try:
        log = run_async(main())
    finally:
        ticker.stop()
    subscribed = log.index(("ack", "subscribe"))
    unsubscribed = log.index(("ack", "unsubscribe"))
    assert all(topic == "keep." for topic, _ in log[:subscribed]), "other. before the subscribe ack"
    assert all(topic == "keep." for topic, _ in log[unsubscribed + 1:]), "other. after the unsubscribe ack"
    assert_contiguous([seq for topic, seq in log if topic == "keep."], "keep.")
    assert_contiguous([seq for topic, seq in log[subscribed:unsubscribed] if topic == "other."], "other.")


# =================================================================================================
# 3. Upstream subscriptions, observed on an XPUB socket
# =================================================================================================


class XPub:
    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.socket = sock
        self.endpoint = endpoint

    def next(self, timeout: float) -> Optional[bytes]:
        """The next subscription message, or None if none arrives within ``timeout`` seconds."""
        if self.socket.poll(int(timeout * 1000)):
            return self.socket.recv(zmq.NOBLOCK)
        return None

    def wait_for(self, expected: bytes, timeout: float = 5.0) -> float:
        """Wait for the subscription message ``expected`` (it must be the next); seconds waited."""
        start = time.monotonic()
        got = self.next(timeout)
        assert got == expected, f"expected {expected!r}, got {got!r}"
        return time.monotonic() - start


@pytest.fixture
def xpub(zmq_context):
    """An XPUB bound to tcp://127.0.0.1:*, verbose: every (repeated) subscription is seen."""
    sock = zmq_context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield XPub(sock, f"tcp://127.0.0.1:{port}")
    sock.close(linger=0)


def leave(client) -> None:
    """A raw client's closing handshake: the gateway forgets it when it reads the close frame."""
    client.send_close(1000)
    client.recv_close()
    client.close()


def test_upstream_follows_clients_with_linger_0(make_gateway, xpub, raw_ws):
    gw = make_gateway(xpub.endpoint, linger=0)
    # No client: nothing is subscribed.  (A subscription made before the SUB connected
    # would be sent on connection, so it would show up below before b"\x01a.".)
    assert xpub.next(0.3) is None
    a = raw_ws(gw.port, path="/?topic=a.")
    xpub.wait_for(b"\x01a.")
    # Reference counting: a second client on the same topic subscribes nothing more
    # (XPUB_VERBOSE would show a repeated subscription).
    b = raw_ws(gw.port, path="/?topic=a.&topic=b.")
    xpub.wait_for(b"\x01b.")
    assert xpub.next(0.1) is None
    leave(a)
    assert xpub.next(0.2) is None  # b still wants a.
    leave(b)
    start = time.monotonic()
    got = {xpub.next(1.0), xpub.next(1.0)}
    assert got == {b"\x00a.", b"\x00b."}
    assert time.monotonic() - start < 0.5, "linger=0: the unsubscribe was not prompt"
    assert xpub.next(0.1) is None
    assert gw.subscriptions() == []


def test_upstream_linger_delays_the_unsubscribe(make_gateway, xpub, raw_ws):
    linger = 0.5
    gw = make_gateway(xpub.endpoint, linger=linger)
    a = raw_ws(gw.port, path="/?topic=a.")
    xpub.wait_for(b"\x01a.")
    leave(a)
    waited = xpub.wait_for(b"\x00a.", timeout=3)
    assert linger - 0.1 <= waited <= linger + 1.0, waited

    # A client back within the linger: no unsubscribe, no new subscribe.
    a = raw_ws(gw.port, path="/?topic=a.")
    xpub.wait_for(b"\x01a.")
    leave(a)
    time.sleep(linger / 4)
    a = raw_ws(gw.port, path="/?topic=a.")
    assert xpub.next(linger * 2) is None
    assert gw.subscriptions() == [b"a."]
    leave(a)
    waited = xpub.wait_for(b"\x00a.", timeout=3)
    assert linger - 0.1 <= waited <= linger + 1.0, waited


def test_upstream_linger_counts_from_the_last_departure(make_gateway, xpub, raw_ws):
    """Leave, come back, leave again: the subscription lingers ``linger`` after the *last* departure."""
    linger = 0.6
    gw = make_gateway(xpub.endpoint, linger=linger)
    a = raw_ws(gw.port, path="/?topic=a.")
    xpub.wait_for(b"\x01a.")
    leave(a)
    time.sleep(linger / 2)
    a = raw_ws(gw.port, path="/?topic=a.")
    time.sleep(linger / 4)
    leave(a)
    waited = xpub.wait_for(b"\x00a.", timeout=3)
    assert waited >= linger - 0.1, (
        f"unsubscribed {waited:.2f} s after the last client left, linger is {linger} s")
    assert gw.subscriptions() == []


def test_subscribe_all_subscribes_everything_at_start(make_gateway, xpub, raw_ws):
    gw = make_gateway(xpub.endpoint, subscribe_all=True, linger=0)
    xpub.wait_for(b"\x01")
    a = raw_ws(gw.port, path="/?topic=a.")
    xpub.wait_for(b"\x01a.")
    leave(a)
    xpub.wait_for(b"\x00a.")
    assert xpub.next(0.2) is None  # everything stays subscribed
    assert gw.subscriptions() == [b""]


# =================================================================================================
# 4. Envelopes
# =================================================================================================

ENVELOPE_MESSAGES = [
    [b"t.a", b"hello"],
    [b"t.b", b"\xff\x00binary"],
    [b"single part"],
    [b"t.c", "é ✓".encode()],
]


def expected_envelope(fmt: str, separator: bytes = b" "):
    if fmt == "payload":
        return ["hello", b"\xff\x00binary", "single part", "é ✓"]
    if fmt == "topic":
        sep = separator
        return ["t.a" + sep.decode() + "hello", b"t.b" + sep + b"\xff\x00binary", "single part",
                "t.c" + sep.decode() + "é ✓"]
    assert fmt == "json"
    return [{"topic": "t.a", "data": "hello"},
            {"topic": "t.b", "data": base64.b64encode(b"\xff\x00binary").decode(), "binary": True},
            {"topic": "", "data": "single part"},
            {"topic": "t.c", "data": "é ✓"}]


async def receive_envelopes(ws, fmt: str):
    got = [await recv(ws) for _ in ENVELOPE_MESSAGES]
    if fmt != "json":
        return got
    docs = [json.loads(m) for m in got]
    assert all(isinstance(m, str) for m in got), "JSON envelopes go out as text"
    ids = [doc.pop("id") for doc in docs]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids)), ids
    return docs


@pytest.mark.parametrize("envelope, separator", [
    ("payload", b" "), ("topic", b" "), ("topic", b"|"), ("json", b" "),
], ids=["payload", "topic", "topic-separator", "json"])
def test_gateway_envelope(make_gateway, pub, run_async, envelope, separator):
    gw = make_gateway(pub.endpoint, envelope=envelope, separator=separator)

    async def main():
        await fence_everything(gw.port, pub)
        async with ws_connect(gw.port) as ws:
            for parts in ENVELOPE_MESSAGES:
                pub.send_multipart(parts)
            return await receive_envelopes(ws, envelope)

    assert run_async(main()) == expected_envelope(envelope, separator)


@pytest.mark.parametrize("gateway_envelope", ["payload", "json"])
def test_envelope_per_connection(make_gateway, pub, run_async, gateway_envelope):
    gw = make_gateway(pub.endpoint, envelope=gateway_envelope)
    formats = ["payload", "topic", "json"]

    async def main():
        await fence_everything(gw.port, pub)
        clients = [await ws_connect(gw.port, f"/?format={fmt}") for fmt in formats]
        default = await ws_connect(gw.port)
        try:
            for parts in ENVELOPE_MESSAGES:
                pub.send_multipart(parts)
            got = [await receive_envelopes(ws, fmt) for ws, fmt in zip(clients, formats)]
            return got, await receive_envelopes(default, gateway_envelope)
        finally:
            for ws in clients + [default]:
                await ws.close()

    got, default = run_async(main())
    assert got == [expected_envelope(fmt) for fmt in formats]
    assert default == expected_envelope(gateway_envelope)


def test_envelope_json_ids_are_the_same_for_every_client(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port, "/?format=json") as a, \
                ws_connect(gateway.port, "/?format=json&topic=t.") as b:
            pub.send_multipart([b"t.1", b"x"])
            return await recv_json(a), await recv_json(b)
    a, b = run_async(main())
    assert a == b and a["id"] > 0


@pytest.mark.parametrize("query", ["format=bogus", "format=", "format=JSON"])
def test_unknown_format_is_refused(gateway, http_exchange, upgrade_request, query):
    status, _headers, body = http_exchange(gateway.port, upgrade_request(f"/?{query}"))
    assert status == 400
    assert b"format" in body


def test_unknown_envelope_option_is_refused():
    with pytest.raises(ValueError, match="envelope"):
        Gateway(None, 0, envelope="xml")


# =================================================================================================
# 5. Client → ZeroMQ
# =================================================================================================


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


def test_client_messages_are_pushed_upstream(make_gateway, make_zmq, run_async):
    pull, endpoint = make_zmq(zmq.PULL)
    gw = make_gateway(None, push_endpoint=endpoint)

    async def main():
        async with ws_connect(gw.port) as a, ws_connect(gw.port) as b, \
                ws_connect(gw.port, "/?format=json") as j:
            await a.send("from a")
            parts_a = await asyncio.to_thread(recv_parts, pull)
            await b.send(b"\x00from b")
            parts_b = await asyncio.to_thread(recv_parts, pull)
            await a.send("again a")
            parts_a2 = await asyncio.to_thread(recv_parts, pull)
            await j.send(json.dumps({"topic": "chat.room7", "data": "hi"}))
            parts_j = await asyncio.to_thread(recv_parts, pull)
            await j.send(json.dumps({"topic": "chat.room7", "data": {"n": 1}}))
            parts_j2 = await asyncio.to_thread(recv_parts, pull)
            await j.send("plain text from a json client")
            parts_j3 = await asyncio.to_thread(recv_parts, pull)
            return parts_a, parts_b, parts_a2, parts_j, parts_j2, parts_j3

    parts_a, parts_b, parts_a2, parts_j, parts_j2, parts_j3 = run_async(main())
    assert parts_a[0] == b"ws" and parts_a[2] == b"from a" and len(parts_a) == 3
    assert parts_b[0] == b"ws" and parts_b[2] == b"\x00from b"
    assert parts_a2 == [b"ws", parts_a[1], b"again a"], "a client's id is stable"
    ids = {parts_a[1], parts_b[1], parts_j[1]}
    assert len(ids) == 3 and all(ids), "client ids differ"
    assert parts_j == [b"chat.room7", parts_j[1], b"hi"]
    assert parts_j2 == [b"chat.room7", parts_j[1], b'{"n": 1}']
    assert parts_j3 == [b"ws", parts_j[1], b"plain text from a json client"]
    assert gw.stats.upstream_messages == 6 and gw.stats.upstream_drops == 0


def test_upstream_topic_option(make_gateway, make_zmq, run_async):
    pull, endpoint = make_zmq(zmq.PULL)
    gw = make_gateway(None, push_endpoint=endpoint, upstream_topic=b"from-browser")

    async def main():
        async with ws_connect(gw.port) as ws:
            await ws.send("x")
            return await asyncio.to_thread(recv_parts, pull)
    parts = run_async(main())
    assert parts[0] == b"from-browser" and parts[2] == b"x"


def test_client_messages_are_published_upstream(make_gateway, make_zmq, run_async):
    sub, endpoint = make_zmq(zmq.SUB, subscribe=b"")
    gw = make_gateway(None, pub_endpoint=endpoint, client_rate=0)

    async def main():
        async with ws_connect(gw.port, "/?format=json") as ws:
            # PUB → SUB slow joiner: probe until the SUB's subscription has reached the PUB.
            deadline = time.monotonic() + 5
            while not sub.poll(20):
                assert time.monotonic() < deadline, "the SUB never received from the gateway's PUB"
                await ws.send("probe")
            await ws.send(json.dumps({"topic": "chat.room7", "data": "hi"}))
            while True:
                parts = await asyncio.to_thread(recv_parts, sub)
                if parts[2] != b"probe":
                    return parts
    parts = run_async(main())
    assert parts[0] == b"chat.room7" and parts[2] == b"hi" and parts[1]


def test_give_push_or_pub_not_both():
    with pytest.raises(ValueError, match="not both"):
        Gateway(None, 0, push_endpoint="tcp://127.0.0.1:1", pub_endpoint="tcp://127.0.0.1:2")


def test_client_messages_without_upstream_are_ignored(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port) as ws:
            await ws.send("nobody listens")
            await ws.send(b"\x01\x02")
            await ws.send(json.dumps({"topic": "t", "data": "x"}))
            await ws.send(json.dumps({"subscribe": "z"}))  # processed after the three above
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "z", "topics": ["z"]}
            pub.send_multipart([b"z", b"still open"])
            assert await recv(ws) == "still open"
            await ws.ping()
    run_async(main())
    assert gateway.stats.upstream_messages == 0 and gateway.stats.upstream_drops == 0
    assert gateway.stats.rate_limited == 0 and gateway.stats.protocol_errors == 0


def test_flood_is_closed_with_1008_and_a_steady_client_stays(make_gateway, run_async):
    rate = 20
    gw = make_gateway(None, client_rate=rate)

    async def main():
        async with ws_connect(gw.port) as flood, ws_connect(gw.port) as steady:
            async def flood_it():
                try:
                    for i in range(200):
                        await flood.send(f"m{i}")
                except ConnectionClosed:
                    pass
                await asyncio.wait_for(flood.wait_closed(), 5)
                return flood.close_code

            async def steady_it():
                # More messages than the burst (the bucket holds `rate` tokens), below the rate.
                for i in range(rate + 5):
                    await steady.send(f"s{i}")
                    await asyncio.sleep(1 / (rate * 0.6))
                await steady.send(json.dumps({"subscribe": "alive"}))
                return await recv_json(steady)

            return await asyncio.gather(flood_it(), steady_it())

    flood_code, ack = run_async(main())
    assert flood_code == 1008
    assert ack == {"ack": "subscribe", "topic": "alive", "topics": ["alive"]}
    assert gw.stats.rate_limited == 1


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
            for _ in range(20):  # everything is dropped now, quickly
                await sender.send(b"small")
                sent += 1
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


# =================================================================================================
# 6. Resume
# =================================================================================================


def test_resume_gets_exactly_the_missed_messages_then_live_ones(make_gateway, pub, wait_subscribed,
                                                               run_async):
    gw = make_gateway(pub.endpoint, linger=5)
    wait_subscribed(pub, gw)
    ticker = Ticker(pub, [b"r.x"], interval=0.001)

    async def main():
        async with ws_connect(gw.port, "/?topic=r.&format=json") as ws:
            ticker.start()
            first = [await recv_json(ws) for _ in range(50)]
        # Closed; the ticker goes on publishing while the client is away.
        await asyncio.sleep(0.2)
        last = first[-1]
        since = last["id"]
        async with ws_connect(gw.port, f"/?topic=r.&format=json&since={since}") as ws:
            target = ticker.sent[b"r.x"] + 100  # what was published while away, then 100 live ones
            second = []
            while not second or tick_of(second[-1]["data"])[1] < target:
                second.append(await recv_json(ws))
        return first, second

    try:
        first, second = run_async(main())
    finally:
        ticker.stop()
    assert not any("gap" in doc for doc in first + second), "no gap: everything was kept"
    seqs = [tick_of(doc["data"])[1] for doc in first + second]
    assert_contiguous(seqs, "r.x")  # no loss, no duplicate across the reconnection
    ids = [doc["id"] for doc in first + second]
    assert ids == sorted(set(ids)), "ids only grow"
    assert len(second) > 150, "the test did not cover a real absence"


def test_resume_beyond_the_history_starts_with_a_gap_notice(make_gateway, pub, wait_subscribed,
                                                             run_async, wait_until):
    gw = make_gateway(pub.endpoint, linger=5, history=10)
    wait_subscribed(pub, gw)

    async def main():
        async with ws_connect(gw.port, "/?topic=h.&format=json") as ws:
            for seq in range(5):
                pub.send_multipart([b"h.x", b"h|%d" % seq])
            seen = [await recv_json(ws) for _ in range(5)]
        since = seen[-1]["id"]
        before = gw.stats.zmq_messages
        for seq in range(5, 35):
            pub.send_multipart([b"h.x", b"h|%d" % seq])
        await asyncio.to_thread(wait_until, lambda: gw.stats.zmq_messages == before + 30)
        async with ws_connect(gw.port, f"/?topic=h.&format=json&since={since}") as ws:
            gap = await recv_json(ws)
            replay = [await recv_json(ws) for _ in range(10)]
            assert await nothing_within(ws, 0.1)
            pub.send_multipart([b"h.x", b"h|35"])
            live = await recv_json(ws)
        return since, gap, replay, live

    since, gap, replay, live = run_async(main())
    assert set(gap) == {"gap"}
    first, last = gap["gap"]
    assert first == since + 1
    assert [tick_of(doc["data"])[1] for doc in replay] == list(range(25, 35))
    assert replay[0]["id"] == last + 1, "the gap ends just before the first retained message"
    assert tick_of(live["data"])[1] == 35 and live["id"] > replay[-1]["id"]
    assert gw.stats.gaps == 1


def test_resume_after_the_upstream_subscription_expired_reports_a_gap(make_gateway, pub,
                                                                      wait_subscribed, run_async,
                                                                      wait_until):
    gw = make_gateway(pub.endpoint, linger=0)
    wait_subscribed(pub, gw)  # its b"" subscription expires as soon as the probe client leaves

    async def main():
        async with ws_connect(gw.port, "/?topic=g.&format=json") as ws:
            await topic_fence(ws, pub, b"g.x")
            for seq in range(5):
                pub.send_multipart([b"g.x", b"g|%d" % seq])
            seen = [await recv_json(ws) for _ in range(5)]
        since = seen[-1]["id"]
        await asyncio.to_thread(wait_until, lambda: b"g." not in gw.hub.upstream.subscribed)
        for seq in range(5, 15):  # nobody subscribed upstream: the gateway never sees these
            pub.send_multipart([b"g.x", b"g|%d" % seq])
        current = gw.last_id
        async with ws_connect(gw.port, f"/?topic=g.&format=json&since={since}") as ws:
            gap = await recv_json(ws)
            await topic_fence(ws, pub, b"g.x")
            pub.send_multipart([b"g.x", b"g|live"])
            live = await recv_json(ws)
        return since, current, gap, live

    since, current, gap, live = run_async(main())
    assert set(gap) == {"gap"}
    first, last = gap["gap"]
    assert first == since + 1
    assert last >= current, "the gap must cover the ids up to the new subscription"
    assert live["data"] == "g|live" and live["id"] > last
    assert gw.stats.gaps == 1


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "", "0x10"])
def test_since_not_a_number_is_refused(gateway, http_exchange, upgrade_request, since):
    status, _headers, body = http_exchange(gateway.port, upgrade_request(f"/?format=json&since={since}"))
    assert status == 400
    assert b"since" in body


def test_since_zero_replays_the_history(gateway, pub, run_async, wait_until):
    async def main():
        before = gateway.stats.zmq_messages
        for seq in range(4):
            pub.send_multipart([b"z.x", b"z|%d" % seq])
        await asyncio.to_thread(wait_until, lambda: gateway.stats.zmq_messages == before + 4)
        async with ws_connect(gateway.port, "/?topic=z.&format=json&since=0") as ws:
            got = []
            while len(got) < 4:
                doc = await recv_json(ws)
                if "gap" not in doc:  # since=0 predates the gateway's first subscription
                    got.append(doc["data"])
            pub.send_multipart([b"z.x", b"z|live"])
            got.append((await recv_json(ws))["data"])
            return got
    assert run_async(main()) == [f"z|{i}" for i in range(4)] + ["z|live"]


# =================================================================================================
# 7. Routing: scale, History, Upstream
# =================================================================================================


@contextlib.contextmanager
def gc_paused():
    """Time code without the garbage collector's passes over the whole test session's objects.

    The timings use ``time.thread_time()``: CPU time of this thread, which a
    busy machine (other processes, the gateways' loop threads) does not inflate.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class FakeClient:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def make_router(n: int):
    router = Router()
    clients = [FakeClient(i) for i in range(n)]
    for i, client in enumerate(clients):
        router.add(client, [b"t%05d." % i], "payload", None)
    return router, clients


def test_ten_thousand_routes_each_topic_matches_exactly_its_route():
    n = 10_000
    router, clients = make_router(n)
    assert len(router) == n
    for i in range(0, n, 37):
        routes = list(router.match(b"t%05d.sub.topic" % i))
        assert len(routes) == 1
        assert list(routes[0].members) == [clients[i]]
        assert router.route_of(clients[i]) is routes[0]
    assert list(router.match(b"t99999.x")) == []
    assert list(router.match(b"t0")) == []  # shorter than every prefix
    assert list(router.match(b"u00001.x")) == []


def test_adding_and_removing_routes_costs_time_linear_in_their_number():
    def build_and_tear_down(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            clients = [FakeClient(i) for i in range(n)]
            prefixes = [[b"t%05d." % i] for i in range(n)]
            router = Router()
            with gc_paused():
                start = time.thread_time()
                for client, prefix in zip(clients, prefixes):
                    router.add(client, prefix, "payload", None)
                for client in clients:
                    router.remove(client)
                best = min(best, time.thread_time() - start)
            assert len(router) == 0
        return best

    t_1k, t_10k = build_and_tear_down(1_000), build_and_tear_down(10_000)
    # Linear: about 10 times as long; quadratic (re-deriving the prefix lengths from every
    # prefix at each change) was 50 to 100 times.
    assert t_10k / t_1k < 30, f"1 000 routes: {t_1k * 1e3:.1f} ms, 10 000: {t_10k * 1e3:.1f} ms"


def _time_matches(router: Router, topics: List[bytes], repeat: int = 5) -> float:
    best = float("inf")
    match = router.match
    for _ in range(repeat):
        with gc_paused():
            start = time.thread_time()
            for topic in topics:
                for _route in match(topic):
                    pass
            best = min(best, time.thread_time() - start)
    return best


def test_match_cost_does_not_grow_with_the_number_of_routes():
    rng = random.Random(7692)
    small, _ = make_router(100)
    large, _ = make_router(10_000)
    # Hits and misses alike, 10 000 matches each.
    small_topics = [b"t%05d.x" % rng.randrange(200) for _ in range(10_000)]
    large_topics = [b"t%05d.x" % rng.randrange(20_000) for _ in range(10_000)]
    t_small = _time_matches(small, small_topics)
    t_large = _time_matches(large, large_topics)
    assert t_large / t_small < 3, f"100 routes: {t_small * 1e3:.1f} ms, 10 000: {t_large * 1e3:.1f} ms"


def test_router_shares_routes_and_forgets_empty_ones():
    router = Router()
    a, b, c = FakeClient(1), FakeClient(2), FakeClient(3)
    ra = router.add(a, [b"x", b"y"], "payload", None)
    rb = router.add(b, [b"y", b"x"], "payload", None)
    rc = router.add(c, [b"x", b"y"], "json", None)
    assert ra is rb and ra is not rc and len(router) == 2
    # A route with several prefixes that both match is yielded once.
    assert sorted(len(r.members) for r in router.match(b"xy")) == [1, 2]
    router.add(c, [b"xy"], "json", None)  # moving drops the old route
    assert len(router) == 2
    assert sorted(len(r.members) for r in router.match(b"xyz")) == [1, 2]
    router.remove(a)
    router.remove(b)
    assert router.remove(b) is None
    assert [list(r.members) for r in router.match(b"xyz")] == [[c]]
    assert list(router.match(b"y")) == []
    router.remove(c)
    assert len(router) == 0 and list(router.match(b"xyz")) == []
    # The empty prefix matches everything.
    router.add(a, [b""], "payload", None)
    assert [list(r.members) for r in router.match(b"")] == [[a]]
    assert [list(r.members) for r in router.match(b"anything")] == [[a]]


def stored(msg_id: int, payload: bytes = b"p", topic: bytes = b"") -> Stored:
    return Stored(msg_id, topic, payload, OP_TEXT, bool(topic))


def ids(items) -> List[int]:
    return [m.id for m in items]


def test_history_count_bound():
    h = History(3)
    assert h.after(0) == [] and h.first_missing == 0
    for i in range(1, 6):
        h.add(stored(i))
    assert len(h) == 3
    assert h.first_missing == 2
    assert ids(h.after(0)) == [3, 4, 5]
    assert ids(h.after(2)) == [3, 4, 5]
    assert ids(h.after(3)) == [4, 5]
    assert ids(h.after(4)) == [5]
    assert h.after(5) == [] and h.after(99) == []


def test_history_byte_bound_counts_topic_and_payload():
    h = History(100, max_bytes=10)
    h.add(stored(1, b"aaaa"))
    h.add(stored(2, b"bbbb"))
    assert ids(h.after(0)) == [1, 2] and h.first_missing == 0
    h.add(stored(3, b"cc", topic=b"tt"))  # 4 + 4 + 4 = 12 > 10: the oldest goes
    assert ids(h.after(0)) == [2, 3] and h.first_missing == 1
    h.add(stored(4, b"x" * 50))  # larger than the bound on its own: kept, alone
    assert ids(h.after(0)) == [4] and h.first_missing == 3
    h.add(stored(5, b"y"))
    assert ids(h.after(0)) == [5] and h.first_missing == 4


def test_history_zero_keeps_nothing():
    h = History(0)
    for i in (1, 2, 7):
        h.add(stored(i))
    assert len(h) == 0 and h.after(0) == [] and h.first_missing == 7


def test_history_after_with_ids_that_skip():
    # Ids skip where subscription markers took one: after() searches, it does not index.
    h = History(10)
    for i in (1, 2, 5, 9, 10):
        h.add(stored(i))
    assert ids(h.after(0)) == [1, 2, 5, 9, 10]
    assert ids(h.after(3)) == [5, 9, 10]
    assert ids(h.after(5)) == [9, 10]
    assert ids(h.after(8)) == [9, 10]
    assert h.after(10) == []


def test_upstream_reference_counts():
    u = Upstream()
    assert u.want(b"a", 1) is True      # first: SUBSCRIBE
    assert u.want(b"a", 2) is False     # already subscribed
    assert u.release(b"a") is False     # one left
    assert u.release(b"a") is True      # nobody left: linger, then expire
    assert u.subscribed == {b"a"}
    assert u.want(b"a", 3) is False     # back within the linger: still subscribed
    assert u.expire(b"a", 3) is False   # wanted again: no UNSUBSCRIBE
    assert u.release(b"a") is True
    assert u.expire(b"a", 4) is True    # UNSUBSCRIBE
    assert u.subscribed == set() and u.counts == {}
    assert u.expire(b"a", 5) is False   # not subscribed any more
    assert u.release(b"never") is False


def test_upstream_gap():
    u = Upstream()
    assert u.gap(b"a", 0) is None  # never subscribed: nothing known
    u.want(b"a", 10)               # subscribed; the marker id is 10
    assert u.gap(b"a", 10) is None and u.gap(b"a", 50) is None
    assert u.gap(b"a", 4) == (5, 10)  # before the subscription: blind until the marker
    u.release(b"a")
    u.expire(b"a", 20)             # dropped after message 20
    assert u.gap(b"a", 20) is None  # not subscribed now: the caller wants first
    u.want(b"a", 25)               # again, marker 25
    assert u.gap(b"a", 20) == (21, 25)
    assert u.gap(b"a", 18) == (21, 25), "ids up to the drop were covered"
    assert u.gap(b"a", 23) == (24, 25)
    assert u.gap(b"a", 25) is None
    # A broader subscription covers a narrower prefix.
    u.want(b"", 30)
    assert u.gap(b"a.b", 26) is None   # covered by a (since 25)
    assert u.gap(b"b", 26) == (27, 30)  # only by "" (since 30)
