"""The hub's behaviour seen end to end (zmqws/hub.py through a real Gateway), with real clients
and real ZeroMQ sockets.

Topic filtering (``?topic=``), topic changes while messages flow, upstream
subscriptions and their linger (observed on an XPUB socket), envelopes
(``?format=``), resume (``?since=``) with gap notices.  The hub's unit tests
are in tests/test_hub.py, the routing structures' in tests/test_routing.py,
the WebSocket control messages and client → ZeroMQ forwarding in
tests/test_websocket.py and tests/test_upstream.py.

Every server, socket and thread started here is stopped by a fixture or a
``finally``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from typing import Dict, List, Optional, Sequence

import pytest
import zmq

from conftest import nothing_within, recv, recv_json, ws_connect
from zmqws.gateway import Gateway

pytestmark = pytest.mark.timeout(40)


# -- helpers ------------------------------------------------------------------------------------


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
# 2. Topic changes while messages flow
# =================================================================================================


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
# 5. Resume
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
