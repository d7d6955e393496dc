"""Unit tests of the sans-I/O hub (zmqws/hub.py): no socket, no thread, no clock of its own.

The hub is driven through fakes of what it is given: an :class:`FakeOutput`
(the server's output queues: it records the bytes queued per member, applies
``max_queue`` in ``fanout`` and returns the members over it), recorders of the
upstream SUBSCRIBE/UNSUBSCRIBE calls, timers fired by hand (``call_later``) and
a tiny wire whose frames name the message id, so that what a member got reads
back as a list of ids and notices.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from zmqws.config import HubConfig
from zmqws.hub import Hub, PacedFlush
from zmqws.loop import Timer
from zmqws.rights import ALL_RIGHTS, Rights, TopicRefused
from zmqws.stats import Stats
from zmqws.wire import Envelopes, Wire

# -- fakes -----------------------------------------------------------------------------------


class FakeWire(Wire):
    """Frames ``M<id>:<envelope>:<payload>\\n`` and notices ``N<json>\\n``; counts its encodes.
    ``fail``: how many encode calls raise (the next ones work)."""

    def __init__(self, shared: bool = True, gap_notices: bool = True, fail: int = 0) -> None:
        super().__init__(Envelopes(b" "))
        self.shared = shared
        self.gap_notices = gap_notices
        self.fail = fail
        self.encodes = 0
        self.delivered: List[Tuple[List[Any], List[int]]] = []
        self.answered: List[Tuple[Any, List[Any]]] = []

    def encode(self, m, envelope: str) -> bytes:
        self.encodes += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("encoder broken")
        return b"M%d:%s:%s\n" % (m.id, envelope.encode(), m.payload)

    def encode_notice(self, notice, envelope: str) -> bytes:
        return b"N" + json.dumps(notice).encode() + b"\n"

    def deliver(self, members, batch) -> None:
        self.delivered.append((list(members), [m.id for m in batch]))

    def answer(self, member, items) -> bool:
        self.answered.append((member, items))
        return True


class FakeOutput:
    """The server's side of the hub (:class:`zmqws.hub.Output`), recording everything."""

    def __init__(self, max_queue: int = 1 << 20, drop_slow: bool = False) -> None:
        self.max_queue = max_queue
        self.drop_slow = drop_slow
        self.queues: Dict[Any, List[bytes]] = {}
        self.refill_flags: List[Tuple[Any, bool]] = []
        self.closed: List[Any] = []

    def fanout(self, data: bytes, members, count: int) -> Optional[List[Any]]:
        over = []
        for member in members:
            queued = self.queued_bytes(member)
            if queued + len(data) > self.max_queue and queued:
                over.append(member)
            else:
                self.queue(member, data)
        return over or None

    def queue(self, member, data: bytes) -> None:
        self.queues.setdefault(member, []).append(data)

    def queued_bytes(self, member) -> int:
        return sum(len(b) for b in self.queues.get(member, ()))

    def refill_when_drained(self, member, wanted: bool) -> None:
        self.refill_flags.append((member, wanted))

    def close_slow(self, member) -> None:
        self.closed.append(member)

    def drain(self, member) -> List[Any]:
        """What ``member`` got since the last drain: message ids (ints) and notices (dicts)."""
        got: List[Any] = []
        for line in b"".join(self.queues.pop(member, [])).splitlines():
            if line.startswith(b"N"):
                got.append(json.loads(line[1:]))
            else:
                got.append(int(line[1:].split(b":", 1)[0]))
        return got

    def payloads(self, member) -> List[bytes]:
        return [line.split(b":", 2)[2] for line in b"".join(self.queues.pop(member, [])).splitlines()
                if line.startswith(b"M")]


class Timers:
    """``call_later`` for the hub: the timers wait until the test fires them."""

    def __init__(self) -> None:
        self.made: List[Tuple[float, Timer]] = []

    def call_later(self, delay: float, callback) -> Timer:
        timer = Timer(delay, callback)
        self.made.append((delay, timer))
        return timer

    def live(self) -> List[Tuple[float, Timer]]:
        return [(d, t) for d, t in self.made if not t.cancelled]

    def fire(self) -> int:
        """Fire every timer not cancelled (once); how many fired."""
        due, self.made = self.live(), []
        for _delay, timer in due:
            timer.callback()
        return len(due)


class Rig:
    """A hub with its fakes."""

    def __init__(self, max_queue: int = 1 << 20, drop_slow: bool = False, behind_timeout: float = 10.0,
                 **config: Any) -> None:
        config.setdefault("first_id", 1)
        config.setdefault("linger", 0)
        self.config = HubConfig(**config)
        self.stats = Stats()
        self.output = FakeOutput(max_queue, drop_slow)
        self.subscribed: List[bytes] = []
        self.unsubscribed: List[bytes] = []
        self.timers = Timers()
        self.hub = Hub(self.config, self.stats, self.output, self.subscribed.append, self.unsubscribed.append,
                       self.timers.call_later, behind_timeout=behind_timeout)
        self.wire = FakeWire()

    def join(self, member: Any, topics=(), since: Optional[int] = None, wire: Optional[Wire] = None,
             rights: Rights = ALL_RIGHTS, envelope: str = "payload"):
        prefixes = self.hub.topics_for(rights, topics)
        return self.hub.join(member, prefixes, envelope, wire or self.wire, rights, since,
                             chose_topics=bool(topics))

    def publish(self, *messages: Tuple[Optional[bytes], bytes]) -> List[int]:
        """Take ``(topic, payload)`` messages in one loop turn, flush; their ids."""
        ids = []
        for topic, payload in messages:
            self.hub.take(topic, payload)
            ids.append(self.hub.last_id)
        self.hub.flush()
        return ids

    def got(self, member) -> List[Any]:
        return self.output.drain(member)


@pytest.fixture
def rig() -> Rig:
    return Rig()


class FakeClock:
    """Stands in for the hub module's ``time`` (its ``monotonic`` is set by the test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


# -- ids ---------------------------------------------------------------------------------------


def test_ids_grow_by_one_per_message_from_first_id(rig):
    rig.join("a", ["t"])  # its subscription takes id 1 (the coverage marker)
    ids = rig.publish((b"t", b"1"), (b"t", b"2"), (b"t", b"3"))
    assert ids == [2, 3, 4]
    assert [m.id for m in rig.hub.history.after(0)] == [2, 3, 4]
    assert rig.got("a") == [2, 3, 4]


def test_ids_start_from_the_clock_without_first_id():
    before = int(time.time() * 1_000_000)
    hub = Rig(first_id=None).hub
    after = int(time.time() * 1_000_000)
    assert before - 1 <= hub.last_id <= after
    hub.take(None, b"x")
    assert next(hub.history.after(0)).id == hub.last_id


def test_first_id_is_the_first_id_given():
    rig = Rig(first_id=500)
    rig.hub.want(b"")
    assert rig.hub.last_id == 500  # the marker
    assert rig.publish((None, b"x")) == [501]


def test_coverage_marker_takes_an_id_only_for_a_new_upstream_subscription(rig):
    rig.hub.want(b"a")
    assert rig.hub.last_id == 1 and rig.subscribed == [b"a"]
    rig.hub.want(b"a")
    assert rig.hub.last_id == 1 and rig.subscribed == [b"a"]
    rig.hub.want(b"b")
    assert rig.hub.last_id == 2 and rig.subscribed == [b"a", b"b"]


def test_upstream_ids_take_no_marker_and_skip_to_sets_the_next_id():
    rig = Rig(upstream_ids=True, first_id=None)
    assert rig.hub.last_id == 0
    rig.join("a")
    assert rig.hub.last_id == 0 and rig.subscribed == [b""]
    rig.hub.skip_to(100)
    assert rig.hub.history.first_missing == 99  # the ids before the first: never seen here
    assert rig.publish((None, b"x")) == [100]
    rig.hub.skip_to(200)  # a jump later on: the first_missing of the history stays
    assert rig.hub.history.first_missing == 99
    assert rig.publish((None, b"y")) == [200]
    assert rig.got("a") == [100, 200]


# -- routes --------------------------------------------------------------------------------------


def test_take_routes_by_prefix_multipart_by_first_part_single_part_by_payload(rig):
    rig.join("short", ["pri"])
    rig.join("long", ["prices.eu"])
    rig.join("x", ["x"])
    rig.join("all", [])
    rig.output.queues.clear()
    multipart_eu = rig.publish((b"prices.eu.paris", b"x-payload"))[0]
    multipart_us = rig.publish((b"prices.us", b"prices.eu in the payload"))[0]
    single = rig.publish((None, b"prices.eu 5"))[0]
    topic_x = rig.publish((b"x", b"prices.eu"))[0]
    assert rig.got("short") == [multipart_eu, multipart_us, single]
    assert rig.got("long") == [multipart_eu, single]
    assert rig.got("x") == [topic_x]
    assert rig.got("all") == [multipart_eu, multipart_us, single, topic_x]


def test_multipart_stores_topic_and_last_part_single_part_has_no_topic(rig):
    rig.hub.take(b"t", b"payload")
    rig.hub.take(None, b"t payload")
    first, second = rig.hub.history.after(0)
    assert (first.topic, first.payload, first.multipart) == (b"t", b"payload", True)
    assert (second.topic, second.payload, second.multipart) == (b"", b"t payload", False)


def test_payload_mode_decides_text_or_binary():
    from zmqws.protocol.frames import OP_BINARY, OP_TEXT

    auto, binary = Rig().hub, Rig(payload_mode="binary").hub
    for hub in (auto, binary):
        hub.take(None, "é".encode())
        hub.take(None, b"\xff")
    assert [m.opcode for m in auto.history.after(0)] == [OP_TEXT, OP_BINARY]
    assert [m.opcode for m in binary.history.after(0)] == [OP_BINARY, OP_BINARY]


def test_flush_encodes_once_per_message_per_route_and_shares_the_bytes(rig):
    for member in ("a", "b", "c"):
        rig.join(member, ["t"])
    rig.output.queues.clear()
    rig.wire.encodes = 0
    rig.publish((b"t", b"1"), (b"t", b"2"))
    assert rig.wire.encodes == 2
    blobs = [rig.output.queues[m] for m in ("a", "b", "c")]
    assert all(len(q) == 1 for q in blobs)  # one joined bytes per turn per member
    assert blobs[0][0] is blobs[1][0] is blobs[2][0]
    assert rig.got("a") == [2, 3]


def test_routes_on_one_wire_and_envelope_share_an_encoding_other_envelopes_do_not(rig):
    rig.join("narrow", ["t"])
    rig.join("wide", [])
    rig.join("json", ["t"], envelope="json")
    rig.wire.encodes = 0
    rig.publish((b"t", b"1"))
    assert rig.wire.encodes == 2  # payload envelope once for two routes, json once
    other = FakeWire()
    rig.join("other wire", ["t"], wire=other)
    rig.wire.encodes = 0
    rig.publish((b"t", b"2"))
    assert (rig.wire.encodes, other.encodes) == (2, 1)


def test_flush_without_messages_encodes_nothing(rig):
    rig.join("a", ["t"])
    rig.wire.encodes = 0
    rig.hub.flush()
    rig.publish((b"u", b"not for a"))
    assert rig.wire.encodes == 0
    assert rig.got("a") == []


def test_an_encoder_exception_costs_its_route_this_turn_only(rig, caplog):
    broken = FakeWire(fail=1)
    rig.join("fine", ["t"])
    rig.join("broken", ["t"], wire=broken)
    with caplog.at_level(logging.ERROR, logger="zmqws"):
        first = rig.publish((b"t", b"1"))
    assert rig.stats.send_errors == 1
    assert rig.got("fine") == first
    assert rig.got("broken") == []
    assert all(not route.pending for route in rig.hub.router.routes())
    assert "cannot send" in caplog.text
    second = rig.publish((b"t", b"2"))
    assert rig.got("broken") == second and rig.got("fine") == second
    assert rig.stats.send_errors == 1


def test_a_turn_goes_to_those_routed_before_a_join_not_to_the_newcomer(rig):
    rig.join("old", ["t"])
    rig.hub.take(b"t", b"before")
    rig.join("new", ["t"])  # the join flushes what was pending first
    rig.hub.flush()
    after = rig.publish((b"t", b"after"))
    assert rig.got("old") == [after[0] - 1] + after
    assert rig.got("new") == after


def test_a_route_not_shared_delivers_the_batch_itself(rig):
    held = FakeWire(shared=False)
    rig.join("p1", ["t"], wire=held)
    rig.join("p2", ["t"], wire=held)
    ids = rig.publish((b"t", b"1"), (b"t", b"2"))
    assert held.delivered == [(["p1", "p2"], ids)]
    assert held.encodes == 0
    assert "p1" not in rig.output.queues


# -- upstream subscriptions and linger -------------------------------------------------------


def test_linger_delays_the_unsubscribe_until_its_timer():
    rig = Rig(linger=5.0)
    rig.join("a", ["t"])
    rig.hub.leave("a")
    assert rig.unsubscribed == []
    assert [d for d, _t in rig.timers.live()] == [5.0]
    assert sorted(rig.hub.upstream.subscribed) == [b"t"]
    rig.timers.fire()
    assert rig.unsubscribed == [b"t"]
    assert sorted(rig.hub.upstream.subscribed) == []


def test_wanted_again_during_the_linger_stays_subscribed():
    rig = Rig(linger=5.0)
    rig.join("a", ["t"])
    rig.hub.leave("a")
    rig.join("b", ["t"])
    rig.timers.fire()
    assert rig.unsubscribed == []
    assert rig.subscribed == [b"t"]  # never subscribed twice
    assert sorted(rig.hub.upstream.subscribed) == [b"t"]


def test_linger_counts_from_the_last_release():
    rig = Rig(linger=5.0)
    rig.join("a", ["t"])
    rig.hub.leave("a")
    (_d, first), = rig.timers.live()
    rig.join("b", ["t"])
    rig.hub.leave("b")
    assert first.cancelled
    assert len(rig.timers.live()) == 1
    rig.timers.fire()
    assert rig.unsubscribed == [b"t"]


def test_linger_zero_unsubscribes_at_once(rig):
    rig.join("a", ["t"])
    rig.join("b", ["t"])
    rig.hub.leave("a")
    assert rig.unsubscribed == []
    rig.hub.leave("b")
    assert rig.unsubscribed == [b"t"]
    assert rig.timers.made == []


def test_a_stopping_hub_unsubscribes_without_linger():
    rig = Rig(linger=5.0)
    rig.join("a", ["t"])
    rig.hub.stopping = True
    rig.hub.leave("a")
    assert rig.unsubscribed == [b"t"] and rig.timers.made == []


def test_want_everything_keeps_the_empty_prefix_subscribed(rig):
    rig.hub.want(b"")  # what subscribe_all does at start
    rig.join("a", ["t"])
    rig.join("b", [])  # everything: b"" is counted once more
    assert rig.subscribed == [b"", b"t"]
    rig.hub.leave("a")
    rig.hub.leave("b")
    assert rig.unsubscribed == [b"t"]
    assert sorted(rig.hub.upstream.subscribed) == [b""]


# -- topics: rights and caps ----------------------------------------------------------------------


def test_topics_for_refuses_what_the_rights_do_not_allow_with_403(rig):
    rights = Rights.of(read=["a."])
    assert rig.hub.topics_for(rights, ["a.x", "a."]) == [b"a.", b"a.x"]
    with pytest.raises(TopicRefused) as refused:
        rig.hub.topics_for(rights, ["a.x", "b"])
    assert refused.value.status == 403
    assert rig.stats.topics_refused == 1


def test_topics_for_without_topics_gives_all_the_rights_allow(rig):
    assert rig.hub.topics_for(ALL_RIGHTS, []) == [b""]
    assert rig.hub.topics_for(Rights.of(read=["b", "a"]), []) == [b"a", b"b"]
    with pytest.raises(TopicRefused) as refused:
        rig.hub.topics_for(Rights.of(read=[]), [])
    assert refused.value.status == 403
    assert rig.stats.topics_refused == 1


def test_topic_caps_are_400_and_counted():
    rig = Rig(max_topics=2, max_topic_length=4)
    assert rig.hub.topics_for(ALL_RIGHTS, ["a", "b", "a"]) == [b"a", b"b"]
    for topics in (["a", "b", "c"], ["abcde"]):
        with pytest.raises(TopicRefused) as refused:
            rig.hub.topics_for(ALL_RIGHTS, topics)
        assert refused.value.status == 400
    assert rig.stats.topics_refused == 2


def test_no_room_upstream_is_503_but_a_subscribed_prefix_is_fine():
    rig = Rig(max_upstream_prefixes=2)
    rig.join("a", ["a", "b"])
    assert rig.hub.topics_for(ALL_RIGHTS, ["a"]) == [b"a"]
    with pytest.raises(TopicRefused) as refused:
        rig.hub.topics_for(ALL_RIGHTS, ["c"])
    assert refused.value.status == 503
    with pytest.raises(TopicRefused):
        rig.hub.change_topics("a", "subscribe", ["c"])
    assert rig.stats.topics_refused == 2
    assert rig.hub.subscribers["a"].prefixes == [b"a", b"b"]


def test_the_first_subscribe_replaces_everything_then_subscribes_add(rig):
    rig.join("a", [])
    assert rig.hub.subscribers["a"].prefixes == [b""]
    assert rig.hub.change_topics("a", "subscribe", ["x"]) == [b"x"]
    assert rig.unsubscribed == [b""]  # everything released (linger 0)
    assert rig.hub.change_topics("a", "subscribe", ["y"]) == [b"x", b"y"]
    rig.output.queues.clear()
    ids = rig.publish((b"x", b"1"), (b"z", b"2"), (b"y", b"3"))
    assert rig.got("a") == [ids[0], ids[2]]


def test_the_first_subscribe_of_a_restricted_client_replaces_its_rights_set(rig):
    rights = Rights.of(read=["a", "b"])
    rig.join("c", [], rights=rights)
    assert rig.hub.subscribers["c"].prefixes == [b"a", b"b"]
    assert rig.hub.change_topics("c", "subscribe", ["a.1"]) == [b"a.1"]
    with pytest.raises(TopicRefused) as refused:
        rig.hub.change_topics("c", "subscribe", ["z"])
    assert refused.value.status == 403
    assert rig.hub.subscribers["c"].prefixes == [b"a.1"]


def test_a_client_that_named_everything_keeps_it_on_subscribe(rig):
    rig.join("a", [""])
    assert rig.hub.change_topics("a", "subscribe", ["x"]) == [b"", b"x"]


def test_subscribe_respects_the_per_client_cap():
    rig = Rig(max_topics=2)
    rig.join("a", ["a", "b"])
    with pytest.raises(TopicRefused) as refused:
        rig.hub.change_topics("a", "subscribe", ["c"])
    assert refused.value.status == 400
    assert rig.hub.subscribers["a"].prefixes == [b"a", b"b"]


def test_unsubscribe_of_everything_unroutes_and_pending_goes_out_first(rig):
    rig.join("a", ["x"])
    rig.output.queues.clear()
    rig.hub.take(b"x", b"pending")
    pending = rig.hub.last_id
    assert rig.hub.change_topics("a", "unsubscribe", ["x", "not there"]) == []
    assert rig.unsubscribed == [b"x"]
    rig.publish((b"x", b"after"))
    assert rig.got("a") == [pending]
    assert rig.hub.router.route_of("a") is None


# -- resume and gap notices -------------------------------------------------------------------------


def test_resume_replays_what_was_missed_then_live(rig):
    rig.join("keeper", [])
    ids = rig.publish(*[(b"t", b"%d" % i) for i in range(5)])
    rig.join("r", ["t"], since=ids[1])
    assert rig.got("r") == ids[2:]
    live = rig.publish((b"t", b"live"))
    assert rig.got("r") == live
    assert rig.stats.gaps == 0


def test_resume_filters_the_history_by_topic(rig):
    rig.join("keeper", [])  # marker 1: covered from there
    ids = rig.publish((b"a", b"1"), (b"b", b"2"), (None, b"a3"), (b"a", b"4"))
    rig.join("r", ["a"], since=1)
    assert rig.got("r") == [ids[0], ids[2], ids[3]]
    rig.join("s", ["a"], since=0)  # before the first subscription: blind up to its marker
    assert rig.got("s") == [{"gap": [1, 1]}, ids[0], ids[2], ids[3]]


def test_resume_past_the_history_starts_with_a_gap_notice():
    rig = Rig(history=3)
    rig.join("keeper", [])  # marker 1
    ids = rig.publish(*[(b"t", b"%d" % i) for i in range(6)])  # 2..7, history keeps 5..7
    assert rig.hub.history.first_missing == 4
    rig.join("r", [], since=2)
    assert rig.got("r") == [{"gap": [3, 4]}, 5, 6, 7]
    assert ids[-1] == 7
    assert rig.stats.gaps == 1


def test_resume_with_an_id_never_given_says_so(rig):
    rig.join("keeper", [])
    rig.publish((b"t", b"1"))
    last = rig.hub.last_id
    rig.join("r", [], since=last + 100)
    assert rig.got("r") == [{"gap": [last + 1, last + 100]}]
    assert rig.stats.gaps == 1
    live = rig.publish((b"t", b"live"))
    assert rig.got("r") == live


def test_resume_reports_the_ids_the_upstream_subscription_was_blind_for(rig):
    rig.join("a", ["t"])  # marker 1
    seen = rig.publish((b"t", b"1"), (b"t", b"2"))  # 2, 3
    rig.hub.leave("a")  # t unsubscribed after id 3
    rig.join("u", ["u"])  # marker 4
    rig.publish((b"u", b"5"))  # 5: t not subscribed
    rig.join("back", ["t"], since=seen[-1])  # marker 6: covered again from here
    assert rig.got("back") == [{"gap": [4, 6]}]
    rig.join("older", ["t"], since=1)
    assert rig.got("older") == [{"gap": [4, 6]}, 2, 3]
    assert rig.stats.gaps == 2


def test_missed_gives_the_notice_and_the_messages(rig):
    rig.join("keeper", [])
    ids = rig.publish((b"a", b"1"), (b"b", b"2"))
    notice, missed = rig.hub.missed([b"b"], 1)
    assert notice is None and [m.id for m in missed] == [ids[1]]
    notice, missed = rig.hub.missed([b"a"], ids[-1] + 5)
    assert notice == {"gap": [ids[-1] + 1, ids[-1] + 5]} and missed == []


def test_missed_with_a_limit_reads_the_history_no_further_than_its_last_message(monkeypatch):
    # A poll answers at most poll_max_messages: one with an old since must not make the hub
    # filter the whole history (20 000 messages here) for each request.
    rig = Rig(history=20_000)
    rig.join("keeper", [])  # marker 1
    rig.hub.take_payloads([b"t%d" % i for i in range(20_000)])  # 2..20001
    rig.hub.flush()
    matched = []
    monkeypatch.setattr("zmqws.hub.topic_matches", lambda topic, prefixes: matched.append(topic) or True)
    notice, missed = rig.hub.missed([b"t"], 1, 100)
    assert notice is None and [m.id for m in missed] == list(range(2, 102))
    assert len(matched) == 100
    # without a limit: every message after since, the same notice logic
    notice, missed = rig.hub.missed([b"t"], 19_990)
    assert notice is None and [m.id for m in missed] == list(range(19_991, 20_002))


def test_missed_past_the_history_names_the_evicted_ids():
    rig = Rig(history=2)
    rig.join("keeper", [])  # marker 1
    rig.publish(*[(b"t", b"%d" % i) for i in range(5)])  # 2..6, history keeps 5, 6
    notice, missed = rig.hub.missed([b"t"], 2)
    assert notice == {"gap": [3, 4]} and [m.id for m in missed] == [5, 6]
    held = FakeWire(shared=False)
    rig.join("p", ["t"], since=2, wire=held)
    (_member, items), = held.answered
    assert items[0] == {"gap": [3, 4]} and [m.id for m in items[1:]] == [5, 6]


def test_resume_on_a_wire_not_shared_is_answered_by_the_wire(rig):
    rig.join("keeper", [])
    ids = rig.publish((b"t", b"1"), (b"t", b"2"))
    held = FakeWire(shared=False)
    rig.join("p", ["t"], since=ids[0], wire=held)
    (member, items), = held.answered
    assert member == "p" and [m.id for m in items] == ids[1:]
    assert rig.hub.router.route_of("p") is None
    rig.join("q", ["t"], since=ids[-1], wire=held)  # nothing missed: routed, held
    assert len(held.answered) == 1
    assert rig.hub.router.route_of("q") is not None


# -- paced replay -------------------------------------------------------------------------------


def frame_size(msg_id: int, payload: bytes) -> int:
    return len(b"M%d:payload:%s\n" % (msg_id, payload))


def test_paced_replay_stops_at_max_queue_and_refills_in_order_once():
    size = frame_size(10, b"p")
    rig = Rig(max_queue=3 * size)
    rig.join("keeper", [])  # marker 1
    history = rig.publish(*[(b"t", b"p") for _ in range(8)])  # ids 2..9
    rig.output.queues.pop("keeper")
    rig.join("r", [], since=1)
    got = rig.got("r")
    assert got == history[:3]  # ids 2, 3, 4: three frames fill the queue
    assert rig.output.refill_flags == [("r", True)]
    assert rig.hub.router.route_of("r") is None
    live = rig.publish((b"t", b"p"), (b"t", b"p"))  # come during the replay: in the history
    rig.output.queues.pop("keeper")
    assert rig.got("r") == []
    while rig.hub.router.route_of("r") is None:
        rig.hub.refill("r")
        step = rig.got("r")
        assert step, "a refill made no progress"
        got += step
    assert got == history + live
    assert rig.output.refill_flags[-1] == ("r", False)
    after = rig.publish((b"t", b"p"))
    assert rig.got("r") == after


def test_paced_replay_puts_one_frame_into_an_empty_queue_even_over_max_queue():
    rig = Rig(max_queue=4)
    rig.join("keeper", [])
    history = rig.publish((b"t", b"p"), (b"t", b"p"))
    rig.join("r", [], since=1)
    got = rig.got("r")
    assert got == history[:1]
    rig.hub.refill("r")
    got += rig.got("r")
    assert got == history


def test_refill_of_a_member_not_replaying_does_nothing(rig):
    rig.join("a", [])
    rig.hub.refill("a")
    rig.hub.refill("nobody")
    assert rig.got("a") == [] and rig.output.refill_flags == []


def test_leaving_during_a_paced_replay_cancels_the_refill():
    rig = Rig(max_queue=frame_size(10, b"p"))
    rig.join("keeper", [])
    rig.publish((b"t", b"p"), (b"t", b"p"))
    rig.join("r", [], since=1)
    rig.hub.leave("r")
    assert rig.output.refill_flags == [("r", True), ("r", False)]
    rig.output.queues.clear()
    rig.hub.refill("r")
    assert rig.got("r") == []


# -- the drop policy -----------------------------------------------------------------------------


def test_drop_policy_notes_the_gap_and_tells_it_before_the_next_message():
    size = frame_size(10, b"p")
    rig = Rig(max_queue=3 * size, drop_slow=True, first_id=10)  # two-digit ids: frames of one size
    rig.join("slow", ["t"])
    rig.join("fast", ["t"])
    ids = []
    for _ in range(5):
        ids += rig.publish((b"t", b"p"))
        assert rig.got("fast") == ids[-1:]
    # the slow member's queue took three and refused the next two: noted, not told yet
    assert rig.output.queued_bytes("slow") == 3 * size
    assert rig.stats.gaps == 0
    assert rig.got("slow") == ids[:3]
    ids += rig.publish((b"t", b"p"))
    assert rig.got("slow") == [{"gap": [ids[3], ids[4]]}, ids[5]]
    assert rig.stats.gaps == 1
    assert rig.output.closed == []
    ids += rig.publish((b"t", b"p"))
    assert rig.got("slow") == ids[6:]  # told once
    assert rig.stats.gaps == 1


def test_a_gap_is_told_before_any_later_message_even_when_the_queue_is_nearly_full():
    size = frame_size(10, b"p")
    rig = Rig(max_queue=3 * size, drop_slow=True, first_id=10)
    rig.join("slow", ["t"])
    ids = []
    for _ in range(5):
        ids += rig.publish((b"t", b"p"))  # the queue takes three, the next two are dropped
    rig.output.queues["slow"].pop()  # room for one frame, not for a notice and a frame
    ids += rig.publish((b"t", b"p"))
    got = rig.got("slow")
    ids += rig.publish((b"t", b"p"))
    got += rig.got("slow")
    notice = next(i for i, item in enumerate(got) if isinstance(item, dict))
    first, last = got[notice]["gap"]
    assert first == ids[3] and last >= ids[4], got  # the batch that did not fit with it is in it too
    later = [i for i, item in enumerate(got) if isinstance(item, int) and item > ids[4]]
    assert later and notice < later[0], got
    assert all(i in got or first <= i <= last for i in ids[3:]), (ids, got)  # nothing lost untold


def test_drop_policy_on_a_wire_without_gap_notices_closes_the_member():
    size = frame_size(10, b"p")
    rig = Rig(max_queue=size, drop_slow=True)
    quiet = FakeWire(gap_notices=False)
    rig.join("slow", ["t"], wire=quiet)
    rig.publish((b"t", b"p"))
    rig.publish((b"t", b"p"))
    assert rig.output.closed == ["slow"]
    assert rig.stats.gaps == 0


def test_close_policy_notes_no_gap(rig):
    rig = Rig(max_queue=frame_size(10, b"p"), drop_slow=False)
    rig.join("slow", ["t"])
    rig.publish((b"t", b"p"))
    rig.publish((b"t", b"p"))
    rig.output.queues.clear()
    rig.publish((b"t", b"p"))
    assert rig.got("slow") == [rig.hub.last_id]
    assert rig.output.closed == []  # the server's close policy, not the hub's


# -- upstream ids: behind, catch up ------------------------------------------------------------------


def test_a_client_ahead_of_the_upstream_ids_waits_then_catches_up_without_gap():
    rig = Rig(upstream_ids=True, first_id=None)
    rig.join("a", [])
    rig.hub.skip_to(45)
    early = rig.publish(*[(None, b"m") for _ in range(4)])  # 45..48
    rig.join("r", [], since=50)
    assert [d for d, _t in rig.timers.live()] == [10.0]
    assert rig.hub.router.route_of("r") is None
    rig.hub.catch_up()  # 48 < 50: still waiting
    assert rig.hub.router.route_of("r") is None
    more = rig.publish(*[(None, b"m") for _ in range(4)])  # 49..52
    assert rig.got("r") == []
    rig.hub.catch_up()
    assert rig.got("r") == [51, 52]
    assert rig.got("a") == early + more
    live = rig.publish((None, b"m"))
    assert rig.got("r") == live
    rig.timers.fire()  # the timeout after the catch-up changes nothing
    assert rig.got("r") == []
    assert rig.stats.gaps == 0


def test_a_client_ahead_for_too_long_resumes_with_a_gap_notice():
    rig = Rig(upstream_ids=True, first_id=None, behind_timeout=3.0)
    rig.join("a", [])
    rig.hub.skip_to(10)
    rig.publish((None, b"m"), (None, b"m"))  # 10, 11
    rig.join("r", [], since=50)
    assert [d for d, _t in rig.timers.live()] == [3.0]
    rig.timers.fire()
    assert rig.got("r") == [{"gap": [12, 50]}]
    assert rig.publish((None, b"m")) == [12]
    assert rig.got("r") == [12]


def test_a_client_ahead_that_leaves_is_forgotten():
    rig = Rig(upstream_ids=True, first_id=None)
    rig.join("r", [], since=50)
    rig.hub.leave("r")
    rig.hub.skip_to(60)
    rig.publish((None, b"m"))
    rig.hub.catch_up()
    rig.timers.fire()
    assert rig.got("r") == []
    assert "r" not in rig.hub.subscribers


# -- move, leave ---------------------------------------------------------------------------------


def test_move_routes_the_new_member_on_the_new_wire(rig):
    rig.join("polling", ["t"])
    ws = FakeWire()
    rig.hub.move("polling", "ws", ws)
    live = rig.publish((b"t", b"live"))
    assert rig.got("ws") == live and ws.encodes == 1
    assert rig.got("polling") == []
    assert rig.hub.subscribers["ws"].wire is ws and "polling" not in rig.hub.subscribers
    rig.hub.move("nobody", "other", ws)
    assert "other" not in rig.hub.subscribers


def test_move_loses_nothing_taken_in_the_same_turn(rig):
    rig.join("polling", ["t"])
    rig.hub.take(b"t", b"pending")
    pending = rig.hub.last_id
    rig.hub.move("polling", "ws", FakeWire())
    rig.hub.flush()
    assert rig.got("polling") + rig.got("ws") == [pending]


def test_leave_releases_only_its_prefixes_and_returns_the_subscriber(rig):
    rig.join("a", ["a", "b"])
    rig.join("b", ["b"])
    left = rig.hub.leave("a")
    assert left is not None and left.prefixes == [b"a", b"b"]
    assert rig.unsubscribed == [b"a"]
    assert rig.hub.leave("a") is None
    assert rig.unsubscribed == [b"a"]
    rig.publish((b"b", b"1"))
    assert rig.got("a") == []


def test_a_member_gone_before_the_flush_gets_nothing(rig):
    rig.join("a", ["t"])
    rig.hub.take(b"t", b"1")
    rig.hub.leave("a")
    rig.hub.flush()
    assert rig.got("a") == []
    assert rig.stats.send_errors == 0


# -- rates ------------------------------------------------------------------------------------------


def test_rate_ok_is_a_token_bucket_one_second_deep(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("zmqws.hub.time", clock)
    rig = Rig(client_rate=3)
    rig.join("a")
    assert [rig.hub.rate_ok("a") for _ in range(4)] == [True, True, True, False]
    assert rig.stats.rate_limited == 1
    clock.now += 1 / 3 + 1e-6
    assert [rig.hub.rate_ok("a") for _ in range(2)] == [True, False]
    clock.now += 100  # idle for long: never more than one second's worth
    assert [rig.hub.rate_ok("a") for _ in range(4)] == [True, True, True, False]
    assert rig.stats.rate_limited == 3


def test_rate_zero_is_unlimited_and_unknown_members_pass():
    rig = Rig(client_rate=0)
    rig.join("a")
    assert all(rig.hub.rate_ok("a") for _ in range(1000))
    limited = Rig(client_rate=1)
    assert all(limited.hub.rate_ok("nobody") for _ in range(5))
    assert limited.stats.rate_limited == 0


def test_flush_interval_sends_the_first_message_at_once_and_coalesces_the_rest():
    rig = Rig(flush_interval_ms=30)
    after_turn = PacedFlush(rig.hub, rig.timers.call_later)
    rig.join("a")
    queue = rig.output.queues.setdefault("a", [])
    rig.hub.take(None, b"1")
    after_turn()  # quiet before: at once
    assert len(queue) == 1
    for payload in (b"2", b"3"):  # two later turns within the interval: they wait
        rig.hub.take(None, payload)
        after_turn()
    assert len(queue) == 1
    [(delay, _timer)] = rig.timers.live()  # one timer for the interval's end, not one per turn
    assert 0 < delay <= 0.03
    time.sleep(delay)
    assert rig.timers.fire() == 1
    after_turn()  # the turn the timer woke: both in one write
    assert len(queue) == 2 and queue[1].count(b"\n") == 2
    assert rig.output.payloads("a") == [b"1", b"2", b"3"]
    after_turn()  # nothing pending: no timer, nothing sent
    assert not rig.timers.live() and "a" not in rig.output.queues


@pytest.mark.parametrize("ms", [-1, 1001])
def test_flush_interval_is_bounded(ms):
    with pytest.raises(ValueError, match="flush_interval_ms"):
        HubConfig(flush_interval_ms=ms)
