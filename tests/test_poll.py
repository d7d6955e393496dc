"""Long-polling clients (zmqws/transports/poll.py) against a real Gateway on 127.0.0.1:
``GET /poll?since=ID`` answered at once or held, bounded batches, keep-alive, parked polls,
gap notices and topic filters.  Clients are ``http.client`` or raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import List

import pytest

from conftest import get, ids_of, read_response, wait_until
from zmqws.config import TransportConfig

pytestmark = pytest.mark.timeout(60)


def get_while(conn, path: str, *later):
    """``get(conn, path)`` while ``later``'s ``(delay, action)`` pairs run on timers (started
    before the request, cancelled after it): a held poll and what comes during it."""
    timers = [threading.Timer(delay, action) for delay, action in later]
    for timer in timers:
        timer.start()
    try:
        return get(conn, path)
    finally:
        for timer in timers:
            timer.cancel()


def test_poll_returns_what_was_missed_at_once_in_bounded_batches(make_gateway, http_conn):
    # subscribe_all: the gateway vouches for every id from the start (no gap notice)
    gw = make_gateway(None, poll_max_messages=10, poll_timeout=0.5, subscribe_all=True)
    base = gw.last_id
    for i in range(25):
        gw.publish(f"m{i}", topic="p.x")
    wait_until(lambda: gw.last_id == base + 25)
    conn = http_conn(gw.port)
    since, got = base, []
    for expected in (10, 10, 5):
        response, body, elapsed = get(conn, f"/poll?since={since}")
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("application/json")
        assert response.getheader("Cache-Control") == "no-cache"
        docs = json.loads(body)
        assert len(docs) == expected and elapsed < 0.4
        got += docs
        since = docs[-1]["id"]
    assert [d["data"] for d in got] == [f"m{i}" for i in range(25)]
    assert ids_of(got) == list(range(base + 1, base + 26))
    assert all(d["topic"] == "p.x" for d in got)
    # nothing after the last one: held, then [] at the timeout
    response, body, elapsed = get(conn, f"/poll?since={since}")
    assert json.loads(body) == [] and elapsed >= 0.45


def test_poll_bounded_by_bytes(make_gateway, http_conn):
    gw = make_gateway(None, poll_max_bytes=2500, subscribe_all=True)
    base = gw.last_id
    for _ in range(10):
        gw.publish("x" * 1000, topic="big")
    wait_until(lambda: gw.last_id == base + 10)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={base}")
    assert len(body) <= 2500 and ids_of(json.loads(body)) == [base + 1, base + 2]
    # one message larger than the bound still goes (alone)
    gw.publish("y" * 5000, topic="big")
    response, body, _ = get(conn, f"/poll?since={base + 10}")
    assert [d["data"] for d in json.loads(body)] == ["y" * 5000]


def test_poll_is_held_until_a_message_comes(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=10, subscribe_all=True)
    gw.publish("before", topic="h.x")
    wait_until(lambda: gw.last_id == 2)
    conn = http_conn(gw.port, timeout=15)
    response, body, elapsed = get_while(conn, "/poll?topic=h.&since=2", (0.3, lambda: gw.publish("now", topic="h.x")))
    docs = json.loads(body)
    assert response.status == 200 and [d["data"] for d in docs] == ["now"]
    assert 0.25 <= elapsed < 2.0, f"answered after {elapsed:.2f} s (timeout 10 s)"
    # a first poll (no since) is held too, and gets only what comes after it
    response, body, elapsed = get_while(conn, "/poll?topic=h.", (0.2, lambda: gw.publish("later", topic="h.y")))
    assert [d["data"] for d in json.loads(body)] == ["later"] and elapsed < 2.0


def test_poll_times_out_with_an_empty_array(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=0.5)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, "/poll?topic=nothing.")
    assert response.status == 200 and json.loads(body) == []
    assert 0.45 <= elapsed < 3.0, elapsed
    assert gw.stats.polls_held == 1
    wait_until(lambda: len(gw.hub.router) == 0, message="the timed-out poll to leave its route")


def test_poll_keep_alive_many_polls_on_one_connection(make_gateway, http_conn):
    gw = make_gateway(None, poll_timeout=0.3, subscribe_all=True)
    conn = http_conn(gw.port)
    conn.connect()
    sock = conn.sock
    since = gw.last_id
    for round_ in range(6):
        if round_ % 3 == 2:  # a held poll that times out, on the same connection
            response, body, _ = get(conn, f"/poll?since={since}")
            assert json.loads(body) == []
        else:
            gw.publish(f"r{round_}", topic="k")
            response, body, _ = get(conn, f"/poll?since={since}")
            docs = json.loads(body)
            assert [d["data"] for d in docs] == [f"r{round_}"]
            since = docs[-1]["id"]
        assert response.status == 200
        assert response.getheader("Connection") == "keep-alive"
        assert conn.sock is sock, "http.client had to reconnect"
    response, body, _ = get(conn, "/zmqws.js")  # other requests share it too
    assert response.status == 200 and conn.sock is sock
    assert gw.stats.connections == 1
    assert gw.stats.http_requests == 7
    # Connection: close is honoured
    response, body, _ = get(conn, "/poll?since=0", headers={"Connection": "close"})
    assert response.getheader("Connection") == "close"
    assert response.will_close


def test_many_parked_polls_cost_no_thread_and_one_publish_answers_all(make_gateway):
    n = 200
    gw = make_gateway(None, poll_timeout=30)
    # (<=, not ==: a thread of an earlier test, e.g. its file reader, may end meanwhile)
    threads_before = threading.active_count()
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            socks.append(sock)
            sock.sendall(b"GET /poll?topic=many.&format=json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: gw.stats.polls_held == n, message=f"{n} parked polls")
        assert threading.active_count() <= threads_before
        time.sleep(0.2)
        for sock in socks[:5]:  # nothing is answered before a message
            sock.settimeout(0.01)
            with pytest.raises(socket.timeout):
                sock.recv(1)
        gw.publish(b"for everyone", topic="many.x")
        start = time.monotonic()
        for sock in socks:
            status, headers, body = read_response(sock)
            assert status == 200
            assert [d["data"] for d in json.loads(body)] == ["for everyone"]
        assert time.monotonic() - start < 5
        assert threading.active_count() <= threads_before
        wait_until(lambda: len(gw.hub.router) == 0, message="the answered polls to leave their route")
    finally:
        for sock in socks:
            sock.close()


def test_parked_poll_closed_by_the_client_is_forgotten(make_gateway):
    gw = make_gateway(None, poll_timeout=30, linger=0)
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"GET /poll?topic=gone. HTTP/1.1\r\nHost: localhost\r\n\r\n")
    wait_until(lambda: gw.stats.polls_held == 3)
    assert gw.subscriptions() == [b"gone."]
    for sock in socks:
        sock.close()
    wait_until(lambda: len(gw.hub.router) == 0 and gw.subscriptions() == [], message="the polls to be forgotten")


def test_poll_gap_notice_when_since_is_older_than_the_history(make_gateway, http_conn):
    gw = make_gateway(None, history=5, subscribe_all=True)  # id 1: the subscription's marker
    for i in range(20):  # ids 2..21
        gw.publish(f"m{i}", topic="g")
    wait_until(lambda: gw.last_id == 21)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, "/poll?since=3")
    docs = json.loads(body)
    assert docs[0] == {"gap": [4, 16]}  # the history keeps ids 17..21
    assert ids_of(docs[1:]) == [17, 18, 19, 20, 21]
    assert [d["data"] for d in docs[1:]] == [f"m{i}" for i in range(15, 20)]
    assert elapsed < 1
    assert gw.stats.gaps == 1
    # within the history: no notice
    response, body, _ = get(conn, "/poll?since=18")
    assert ids_of(json.loads(body)) == [19, 20, 21]
    assert gw.stats.gaps == 1


def test_poll_answers_share_one_encoding_of_each_message(make_gateway, http_conn, monkeypatch):
    """A message's JSON document is encoded once, whatever the number of polls that get it
    (held ones, answered on delivery, and ones answered at once from the history)."""
    import zmqws.wire
    docs_made = []
    json_doc = zmqws.wire.json_doc
    monkeypatch.setattr(zmqws.wire, "json_doc", lambda m: docs_made.append(m.id) or json_doc(m))
    gw = make_gateway(None, poll_timeout=5, subscribe_all=True)
    base = gw.last_id
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(f"GET /poll?since={base} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        wait_until(lambda: gw.stats.polls_held == 2)
        gw.publish(b"\x00\xffbinary", topic="enc")
        bodies = [read_response(sock)[2] for sock in held]
    finally:
        for sock in held:
            sock.close()
    conn = http_conn(gw.port)
    bodies += [get(conn, f"/poll?since={base}")[1] for _ in range(2)]
    assert docs_made == [base + 1]
    assert len(set(bodies)) == 1
    stored = next(gw.hub.history.after(base))
    assert bodies[0] == b"[" + stored.json + b"]"
    assert json.loads(bodies[0]) == [{"id": base + 1, "topic": "enc", "data": "AP9iaW5hcnk=", "binary": True}]


def test_poll_coalesce_after_a_quiet_interval_the_first_message_goes_at_once(make_gateway, http_conn):
    """Leading edge: a connection with no answer yet, or whose previous one went the interval
    ago or more, is answered at once, whether its messages are waiting or come while it is held."""
    gw = make_gateway(None, poll_coalesce_ms=400, poll_timeout=5, subscribe_all=True)
    base = gw.last_id
    gw.publish("waiting", topic="c")
    wait_until(lambda: gw.last_id == base + 1)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, f"/poll?since={base}")  # a new connection: at once
    assert [d["data"] for d in json.loads(body)] == ["waiting"] and elapsed < 0.25
    time.sleep(0.5)  # quiet for longer than the interval
    # held, then answered at once
    response, body, elapsed = get_while(conn, f"/poll?since={base + 1}",
                                        (0.1, lambda: gw.publish("held", topic="c")))
    assert [d["data"] for d in json.loads(body)] == ["held"] and elapsed < 0.35


def first_answer_at_once(gw, conn, base: int) -> float:
    """A held poll of a new connection: "first" (on topic c), published 50 ms into it, is
    answered at once (nothing was answered before); the time of the answer."""
    _response, body, elapsed = get_while(conn, f"/poll?since={base}", (0.05, lambda: gw.publish("first", topic="c")))
    assert [d["data"] for d in json.loads(body)] == ["first"] and elapsed < 0.3
    return time.monotonic()


def test_poll_coalesce_messages_right_after_an_answer_wait_for_the_interval_in_one_answer(
        make_gateway, http_conn):
    """A connection answered less than the interval ago waits until the interval after that
    answer (not after its next message) and gets what came meanwhile in one answer."""
    gw = make_gateway(None, poll_coalesce_ms=800, poll_timeout=5, subscribe_all=True)
    base = gw.last_id
    conn = http_conn(gw.port)
    answered = first_answer_at_once(gw, conn, base)
    # held: "second" comes 0.4 s after that answer, "third" 0.1 s later; both go 0.8 s after
    # the answer (a trailing delay would send them 0.8 s after "second": 1.2 s)
    response, body, _ = get_while(conn, f"/poll?since={base + 1}",
                                  (0.4, lambda: gw.publish("second", topic="c")),
                                  (0.5, lambda: gw.publish("third", topic="c")))
    since_answer = time.monotonic() - answered
    assert [d["data"] for d in json.loads(body)] == ["second", "third"]
    assert 0.6 <= since_answer < 1.05
    # waiting when the poll comes, right after an answer: held with it until the interval's end
    answered = time.monotonic()
    gw.publish("fourth", topic="c")
    wait_until(lambda: gw.last_id == base + 4)
    response, body, _ = get_while(conn, f"/poll?since={base + 3}", (0.2, lambda: gw.publish("fifth", topic="c")))
    assert [d["data"] for d in json.loads(body)] == ["fourth", "fifth"]
    assert 0.6 <= time.monotonic() - answered < 1.6


def test_poll_coalesce_a_full_answer_or_a_gap_notice_goes_at_once(make_gateway, http_conn):
    gw = make_gateway(None, poll_coalesce_ms=1000, poll_max_messages=3, history=4, poll_timeout=5,
                      subscribe_all=True)  # id 1: the marker
    for i in range(6):  # ids 2..7, the history keeps 4..7
        gw.publish(f"m{i}", topic="c")
    wait_until(lambda: gw.last_id == 7)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, "/poll?since=4")  # 5, 6, 7: full
    assert ids_of(json.loads(body)) == [5, 6, 7] and elapsed < 0.5
    response, body, elapsed = get(conn, "/poll?since=1")  # 2, 3 evicted: a gap notice first
    docs = json.loads(body)
    assert docs[0] == {"gap": [2, 3]} and ids_of(docs[1:]) == [4, 5] and elapsed < 0.5
    # a held poll whose gathered messages fill an answer
    response, body, elapsed = get_while(conn, "/poll?since=7",
                                        (0.2, lambda: [gw.publish(f"n{i}", topic="c") for i in range(3)]))
    assert ids_of(json.loads(body)) == [8, 9, 10] and elapsed < 0.9


def test_poll_coalesce_pacer_one_timer_per_due_time_and_no_drift():
    """PollPacer in-process (a fake loop): members sent together share one timer; what a
    timer releases counts as sent when it was due, so a late timer does not push the next
    due time later; a member answered meanwhile (gathering again) is not released by it."""
    from types import SimpleNamespace

    from zmqws.transports import PollPacer
    timers = []
    loop = SimpleNamespace(call_later=lambda delay, callback: timers.append(callback))
    context = SimpleNamespace(config=SimpleNamespace(poll_coalesce_ms=100), server=SimpleNamespace(loop=loop))
    released = []

    def release(member):
        del pacer.gathering[member]
        released.append(member)
        pacer.sent([member], pacer.now())

    pacer = PollPacer(context, release)
    assert pacer.wait_until("a", 10.0) is None  # never sent: at once
    pacer.sent(["a", "b", "c"], 10.0)
    assert pacer.wait_until("a", 10.1) is None  # the interval passed: at once
    due = pacer.wait_until("a", 10.03)
    assert due == pytest.approx(10.1)
    for member in ("a", "b", "c"):
        pacer.gather(member, [member], due)
    assert len(timers) == 1  # one timer for the three
    pacer.gathering["c"] = ["c again"]  # answered meanwhile and gathering again
    timers.pop()()  # fired late: at 10.13, say
    assert released == ["a", "b"]
    assert pacer.wait_until("a", 10.15) == pytest.approx(10.2)  # the interval after 10.1, not 10.23
    pacer.forget("a")
    assert pacer.wait_until("a", 10.15) is None and "c" in pacer.gathering


def test_poll_coalesce_is_bounded():
    for ms in (-1, 1001):
        with pytest.raises(ValueError, match="poll_coalesce_ms"):
            TransportConfig(poll_coalesce_ms=ms)


def test_poll_resume_after_upstream_blind_spell_gets_a_gap_notice(make_gateway, http_conn):
    """A poll that resumes after the gateway dropped the topic's upstream subscription (the
    linger expired) is told, as a WebSocket client would be, that messages may be lost."""
    gw = make_gateway(None, linger=0, poll_timeout=0.5)
    conn = http_conn(gw.port)
    response, body, _ = get_while(conn, "/poll?topic=b.", (0.2, lambda: gw.publish("seen", topic="b.x")))
    seen = json.loads(body)[-1]["id"]
    # No poll now: nobody wants b. and it was dropped upstream at once (linger 0); what the
    # publishers sent meanwhile never reached the gateway.  The client comes back:
    response, body, _ = get(conn, f"/poll?topic=b.&since={seen}")
    docs = json.loads(body)
    assert docs and "gap" in docs[0], f"no gap notice: {docs}"
    first, last = docs[0]["gap"]
    assert first == seen + 1 and last > seen


def test_poll_client_on_a_busy_stream_keeps_its_upstream_subscription(make_gateway, make_pub, http_conn):
    """A real PUB publishes steadily; a poll client's polls are answered at once from the history
    (there is always something new).  Its topic must stay subscribed upstream for as long as it
    polls (each poll renews the linger): every message arrives, and nothing goes missing silently."""
    pub = make_pub()
    gw = make_gateway(pub.endpoint, linger=0.6, poll_max_messages=5, poll_timeout=2)
    conn = http_conn(gw.port)
    stop = threading.Event()
    sent = [0]

    def publisher():
        while not stop.is_set():
            pub.send_multipart([b"busy.x", b"%d" % sent[0]])
            sent[0] += 1
            time.sleep(0.004)

    # The first poll parks and subscribes; probes go out until the subscription reaches the PUB
    # (ZeroMQ's slow joiner) and one of them answers it.
    def probe():
        for _ in range(300):
            if gw.stats.zmq_messages:
                return
            pub.send_multipart([b"busy.probe", b"-1"])
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        response, body, _ = get(conn, "/poll?topic=busy.")
    finally:
        prober.join()
    since = json.loads(body)[-1]["id"]
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    got: List[int] = []
    gaps = []
    try:
        end = time.monotonic() + 2.0  # more than three lingers
        while time.monotonic() < end:
            time.sleep(0.05)  # between polls, new messages pile up in the history
            response, body, _ = get(conn, f"/poll?topic=busy.&since={since}")
            for doc in json.loads(body):
                if "gap" in doc:
                    gaps.append(doc["gap"])
                elif doc["data"] != "-1":
                    got.append(int(doc["data"]))
                    since = doc["id"]
    finally:
        stop.set()
        thread.join(5)
    assert got, "nothing arrived"
    assert got == list(range(got[0], got[0] + len(got))) or gaps, \
        f"messages lost without a gap notice: {sorted(set(range(got[0], got[-1])) - set(got))[:20]}"
    assert gaps == [] and got == list(range(got[0], got[0] + len(got)))
    assert gw.subscriptions() == [b"busy."]


def test_poll_topic_filter(make_gateway, http_conn):
    gw = make_gateway(None, subscribe_all=True)
    base = gw.last_id
    for topic in ("a.1", "b.1", "a.2", "ab", "c"):
        gw.publish(topic.upper(), topic=topic)
    wait_until(lambda: gw.last_id == base + 5)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={base}&topic=a.&topic=c")
    assert [d["data"] for d in json.loads(body)] == ["A.1", "A.2", "C"]


@pytest.mark.parametrize("query", ["since=abc", "since=-1", "since=1.5", "format=xml"])
def test_poll_bad_query_is_400(make_gateway, http_conn, query):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, body, elapsed = get(conn, f"/poll?{query}")
    assert response.status == 400 and elapsed < 1
    assert gw.stats.polls_held == 0


def test_poll_coalesce_is_on_by_default_at_100_ms_and_a_quiet_poller_is_answered_at_once(
        make_gateway, http_conn):
    """By default a busy connection gets at most one answer with messages per 100 ms (the
    pacing itself: the tests above, with intervals long enough to time on a busy machine);
    the first message after a quiet spell is answered at once."""
    assert TransportConfig().poll_coalesce_ms == 100
    gw = make_gateway(None, poll_timeout=5, subscribe_all=True)
    first_answer_at_once(gw, http_conn(gw.port), gw.last_id)
