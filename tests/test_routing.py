"""Unit tests of zmqws/routing.py: the Router at scale, History bounds, Upstream reference counts
and gaps."""

from __future__ import annotations

import contextlib
import gc
import random
import time
from typing import List

import pytest

from zmqws.protocol.frames import OP_TEXT
from zmqws.routing import History, Router, Stored, Upstream

pytestmark = pytest.mark.timeout(40)


# -- Router ----------------------------------------------------------------------------------------


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


# -- History ---------------------------------------------------------------------------------------


def stored(msg_id: int, payload: bytes = b"p", topic: bytes = b"") -> Stored:
    return Stored(msg_id, topic, payload, OP_TEXT, bool(topic))


def ids(items) -> List[int]:
    return [m.id for m in items]


def test_history_count_bound():
    h = History(3)
    assert list(h.after(0)) == [] and h.first_missing == 0
    for i in range(1, 6):
        h.add(stored(i))
    assert len(h) == 3
    assert h.first_missing == 2
    assert ids(h.after(0)) == [3, 4, 5]
    assert ids(h.after(2)) == [3, 4, 5]
    assert ids(h.after(3)) == [4, 5]
    assert ids(h.after(4)) == [5]
    assert list(h.after(5)) == [] and list(h.after(99)) == []


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
    assert len(h) == 0 and list(h.after(0)) == [] and h.first_missing == 7


def test_history_after_with_ids_that_skip():
    # Ids skip where subscription markers took one: after() searches, it does not index.
    h = History(10)
    for i in (1, 2, 5, 9, 10):
        h.add(stored(i))
    assert ids(h.after(0)) == [1, 2, 5, 9, 10]
    assert ids(h.after(3)) == [5, 9, 10]
    assert ids(h.after(5)) == [9, 10]
    assert ids(h.after(8)) == [9, 10]
    assert list(h.after(10)) == []


# -- Upstream --------------------------------------------------------------------------------------


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
