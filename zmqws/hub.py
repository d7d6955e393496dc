"""The hub: who gets which message, and every policy about it, for every transport. No I/O.

One object keeps, whatever the transport of a client:

* **ids and history**: each message taken in gets the next id and goes into
  the history (for resume);
* **routes**: subscribers with the same prefixes, envelope and wire kind
  share a route; after each loop turn a route's messages are encoded once
  (:mod:`zmqws.wire`) and the same bytes are queued on every member;
* **upstream subscription counts**: the SUB socket subscribes to the union of
  what subscribers want (a prefix nobody wants lingers ``linger`` seconds);
* **rights and topic caps**: the one check of what a client may read
  (:func:`zmqws.rights.resolve_topics`) and of the caps;
* **resume and gap notices**: a joining client gets what it missed after
  ``since`` (paced by its queue, never past ``max_queue``), with a notice
  naming the ids nobody can give it; a client that lost messages to the
  ``drop`` policy is told which;
* **rates**: the token bucket of what a client may send.

Transports call :meth:`Hub.join`, :meth:`Hub.change_topics`,
:meth:`Hub.rate_ok`, :meth:`Hub.leave`; the upstream side calls
:meth:`Hub.take`; the server implements :class:`Output`.
"""

from __future__ import annotations

import logging
import time
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

from .protocol.frames import OP_BINARY, OP_TEXT
from .protocol.utf8 import is_utf8
from .rights import Rights, TopicPolicy, topic_matches
from .routing import History, Route, Router, Stored, Upstream

if TYPE_CHECKING:  # pragma: no cover
    from .config import HubConfig
    from .loop import Timer
    from .stats import Stats
    from .wire import Wire

__all__ = ["Hub", "PacedFlush", "Subscriber", "Output"]

log = logging.getLogger("zmqws")

Notice = Dict[str, Any]


class Output(Protocol):
    """What the hub needs of the server's output queues (members are its clients)."""

    max_queue: int

    @property
    def drop_slow(self) -> bool:
        """The slow-consumer policy drops (else it closes)."""

    def fanout(self, data: bytes, members: Iterable[Any], count: int, /) -> Optional[List[Any]]: ...

    def queue(self, member: Any, data: bytes, /) -> None: ...

    def queued_bytes(self, member: Any, /) -> int: ...

    def refill_when_drained(self, member: Any, wanted: bool, /) -> None: ...

    def close_slow(self, member: Any, /) -> None: ...


class Subscriber:
    """What the hub keeps per subscriber (a client, or a Socket.IO session)."""

    __slots__ = ("prefixes", "envelope", "wire", "rights", "tokens", "tokens_at", "client_id",
                 "chose_topics", "replayed")

    def __init__(self, prefixes: List[bytes], envelope: str, wire: "Wire", rights: Rights, rate: float,
                 now: float, client_id: Optional[bytes], chose_topics: bool) -> None:
        self.prefixes = prefixes
        self.envelope = envelope
        self.wire = wire
        self.rights = rights
        self.tokens = rate
        self.tokens_at = now
        self.client_id = client_id  # the id its messages go upstream with (None: made when needed)
        self.chose_topics = chose_topics  # it named topics (else: everything it may read)
        self.replayed = 0  # a paced resume: the last id the replay has dealt with


class LostIds:
    """The ``drop`` policy's bookkeeping: the ids each member lost, told in-band (a gap
    notice) before the next message it gets."""

    __slots__ = ("hub", "gaps")

    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.gaps: Dict[Any, List[int]] = {}  # member -> [first, last] id lost, until told

    def note(self, members: List[Any], first: int, last: int) -> None:
        """The drop policy: remember the ids each member lost, to tell it before the next
        message it gets (:meth:`tell`); a wire without gap notices is closed instead
        (its client recovers from the history)."""
        gaps = self.gaps
        for member in members:
            subscriber = self.hub.subscribers.get(member)
            if subscriber is None:
                continue
            if not subscriber.wire.gap_notices:
                self.hub.output.close_slow(member)
                continue
            gap = gaps.get(member)
            gaps[member] = [gap[0] if gap is not None else first, last]

    def tell(self, members: Dict[Any, None], size: int, count: int) -> List[Any]:
        """Queue ``{"gap": [first, last]}`` on each member that lost messages, when it and the
        next ``size`` bytes (``count`` messages) fit in the member's queue; the members for
        which they do not: they lose these messages too (counted as the slow-consumer policy
        drops, told with the rest), so that no message comes before the notice of an earlier
        loss."""
        gaps = self.gaps
        hub = self.hub
        output = hub.output
        untold = []
        for member in [m for m in (gaps if len(gaps) < len(members) else members) if m in gaps and m in members]:
            subscriber = hub.subscribers[member]
            notice = subscriber.wire.encode_notice({"gap": gaps[member]}, subscriber.envelope)
            queued = output.queued_bytes(member)
            if queued + len(notice) + size <= output.max_queue or not queued:
                output.queue(member, notice)
                del gaps[member]
                hub.stats.gaps += 1
            else:
                untold.append(member)
        hub.stats.drops += count * len(untold)
        hub.stats.dropped_slow += count * len(untold)
        return untold


class PacedFlush:
    """The loop's after-turn hook with ``flush_interval_ms``: :meth:`Hub.flush` at most once
    per interval.  The first messages after a quiet interval go at once, later ones wait for
    the interval's end (a timer wakes the loop for them), so that a busy interval's messages
    reach each client in one write."""

    __slots__ = ("hub", "interval", "call_later", "_at", "_timer")

    def __init__(self, hub: "Hub", call_later: Callable[[float, Callable[[], None]], "Timer"]) -> None:
        self.hub = hub
        self.interval = hub.config.flush_interval_ms / 1000
        self.call_later = call_later
        self._at = 0.0  # the next flush is not before this time
        self._timer: Optional["Timer"] = None

    def __call__(self) -> None:
        if not self.hub.pending:
            return
        now = time.monotonic()
        if now >= self._at:
            self._at = now + self.interval
            self.hub.flush()
        elif self._timer is None:
            self._timer = self.call_later(self._at - now, self._due)

    def _due(self) -> None:
        """The interval's end: timers run before the after-turn hooks, so this turn flushes."""
        self._timer = None


class Hub:
    """See the module docstring.  ``subscribe(prefix)``/``unsubscribe(prefix)``: the SUB
    socket's; ``call_later(delay, callback)``: the loop's timers."""

    def __init__(self, config: "HubConfig", stats: "Stats", output: Output,
                 subscribe: Callable[[bytes], None], unsubscribe: Callable[[bytes], None],
                 call_later: Callable[[float, Callable[[], None]], "Timer"],
                 behind_timeout: float = 10.0) -> None:
        self.config = config
        self.stats = stats
        self.output = output
        self._subscribe_upstream = subscribe
        self._unsubscribe_upstream = unsubscribe
        self._call_later = call_later
        self.behind_timeout = behind_timeout
        self.history = History(config.history, config.history_bytes)
        self.router = Router()
        self.upstream = Upstream()
        self.topics = TopicPolicy(config.max_topics, config.max_topic_length, config.max_upstream_prefixes,
                                  self.upstream.subscribed, self._topic_refused)
        self.subscribers: Dict[Any, Subscriber] = {}
        self.stopping = False
        # Ids start from the clock (microseconds since the epoch, exact in a JavaScript
        # number), so a restarted gateway gives larger ids than before and a client
        # resuming with an id of the previous run is told of the gap, not confused.
        # With upstream ids they come from the sequencer: start below any (0 = none taken yet).
        clock = 0 if config.upstream_ids else int(time.time() * 1_000_000)
        self.last_id = clock if config.first_id is None else config.first_id - 1
        self._text_ok = config.payload_mode != "binary"
        self._active: List[Route] = []  # routes with messages this turn
        self._flushed_id = self.last_id  # the last id taken when the last turn was flushed
        self._send_error_log_at = 0.0
        self.lost = LostIds(self)
        self._behind: Dict[Any, int] = {}  # upstream ids: joined with an id not taken yet
        self._refilling: Dict[Any, None] = {}  # a paced replay goes on when the queue drains
        self._lingering: Dict[bytes, "Timer"] = {}

    # -- messages in -------------------------------------------------------------------

    def take(self, topic: Optional[bytes], payload: bytes) -> None:
        """One message in (``topic``: a multipart message's first frame, None: single-part)."""
        if topic is None:
            self.take_payloads((payload,))
            return
        self.last_id = msg_id = self.last_id + 1
        self.stats.zmq_messages += 1
        opcode = OP_TEXT if self._text_ok and (payload.isascii() or is_utf8(payload)) else OP_BINARY
        stored = Stored(msg_id, topic, payload, opcode, True)
        self.history.add(stored)
        active = self._active
        for route in self.router.match(topic):
            if not route.pending:
                active.append(route)
            route.pending.append(stored)

    def take_payloads(self, payloads: Sequence[bytes]) -> None:
        """Single-part messages in, in order: :meth:`take` of each, in one loop (the hot path)."""
        # Text when it can be: what is not UTF-8 cannot be a text frame (RFC 6455 §5.6),
        # a JSON string or a Socket.IO string, so it goes out as binary.
        text_ok = self._text_ok
        match = self.router.match
        add = self.history.add
        active = self._active
        msg_id = self.last_id
        for payload in payloads:
            msg_id += 1
            opcode = OP_TEXT if text_ok and (payload.isascii() or is_utf8(payload)) else OP_BINARY
            stored = Stored(msg_id, b"", payload, opcode, False)
            add(stored)
            for route in match(payload):
                if not route.pending:
                    active.append(route)
                route.pending.append(stored)
        self.last_id = msg_id
        self.stats.zmq_messages += len(payloads)

    def skip_to(self, msg_id: int) -> None:
        """Upstream ids: the next message taken is ``msg_id`` (the ids between never came here)."""
        if not self.last_id:
            self.history.first_missing = msg_id - 1  # the ids before: never seen here
        self.last_id = msg_id - 1

    # -- messages out ------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Messages taken and not flushed yet."""
        return bool(self._active)

    def flush(self) -> None:
        """After each turn: per route, one joined ``bytes`` queued on every member.

        Each route is on its own: an exception in one route's work is logged (at most
        once a minute), counted in ``stats.send_errors`` and costs that route this
        turn's messages, never another route's nor a later turn's.
        """
        active = self._active
        taken, self._flushed_id = self.last_id - self._flushed_id, self.last_id
        if not active:
            return
        self._active = []
        # Encodings are shared between routes only when a message went to more than one.
        shared = len(active) > 1 and sum(len(route.pending) for route in active) > taken
        cache: Optional[Dict[Tuple[int, str, Any], bytes]] = {} if shared else None
        for route in active:
            batch = route.pending
            route.pending = []
            if not route.members:
                continue
            try:
                self._send_route(route, batch, cache)
            except Exception:
                self.stats.send_errors += 1
                now = time.monotonic()
                if now >= self._send_error_log_at:
                    self._send_error_log_at = now + 60.0
                    log.exception("cannot send %d message(s) to route %s (%d client(s)); "
                                  "further errors are counted in send_errors, logged once a minute",
                                  len(batch), route.key[1:], len(route.members))

    def _send_route(self, route: Route, batch: List[Stored],
                    cache: Optional[Dict[Tuple[int, str, Any], bytes]]) -> None:
        """One route's messages of this turn, encoded once, queued on every member."""
        envelope, wire = route.envelope, route.wire
        if not wire.shared:
            wire.deliver(list(route.members), batch)
            return
        if cache is None:
            blob = wire.encode_batch(batch, envelope)
        else:
            encode = wire.encode
            frames = []
            for m in batch:
                key = (m.id, envelope, wire)
                frame = cache.get(key)
                if frame is None:
                    frame = cache[key] = encode(m, envelope)
                frames.append(frame)
            blob = frames[0] if len(frames) == 1 else b"".join(frames)
        count = len(batch)
        untold = self.lost.tell(route.members, len(blob), count) if self.lost.gaps else []
        members = [m for m in route.members if m not in untold] if untold else route.members
        over = self.output.fanout(blob, members, count)
        if untold or (over and self.output.drop_slow):
            self.lost.note(untold + (over or []), batch[0].id, batch[-1].id)

    # -- topics: rights and caps, the one check for every transport --------------------

    def topics_for(self, rights: Rights, requested: Iterable[Union[str, bytes]]) -> List[bytes]:
        """The prefixes a joining client is routed with (:meth:`zmqws.rights.TopicPolicy.join`)."""
        return self.topics.join(rights, requested)

    def change_topics(self, member: Any, action: str, topics: Sequence[Union[str, bytes]]) -> List[bytes]:
        """``subscribe``/``unsubscribe`` of ``topics`` for a subscriber (any transport): its
        prefixes after the change.  Refusals (:class:`TopicRefused`) as :meth:`topics_for`;
        the first explicit subscription of a client that named no topic replaces "all it
        may read"."""
        subscriber = self.subscribers[member]
        wanted = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in topics]
        if action != "subscribe":
            drop = set(wanted)
            prefixes = [p for p in subscriber.prefixes if p not in drop]
        else:
            everything = not subscriber.chose_topics and subscriber.prefixes == subscriber.rights.everything()
            prefixes = self.topics.subscribe(subscriber.rights, () if everything else subscriber.prefixes, wanted)
            subscriber.chose_topics = True
        self._set_prefixes(member, subscriber, prefixes)
        return subscriber.prefixes

    def _topic_refused(self) -> None:
        self.stats.topics_refused += 1

    def _set_prefixes(self, member: Any, subscriber: Subscriber, prefixes: List[bytes]) -> None:
        self.flush()  # what is pending was routed under the old topics: send it first
        old = subscriber.prefixes
        for prefix in prefixes:
            if prefix not in old:
                self.want(prefix)
        subscriber.prefixes = prefixes
        if member in self._behind or member in self._refilling:
            pass  # waiting to resume (upstream ids) or resuming: routed with these prefixes after
        elif prefixes:
            self.router.add(member, prefixes, subscriber.envelope, subscriber.wire)
        else:
            self.router.remove(member)
        for prefix in old:
            if prefix not in prefixes:
                self.release(prefix)

    # -- upstream subscriptions ---------------------------------------------------------

    def want(self, prefix: bytes) -> None:
        """One more subscriber wants ``prefix``: SUBSCRIBE upstream when it is the first."""
        if self.config.upstream_ids:
            # Ids come from upstream and cannot be reserved: coverage starts after the last one.
            if self.upstream.want(prefix, self.last_id):
                self._subscribe_upstream(prefix)
            return
        if self.upstream.want(prefix, self.last_id + 1):
            self.last_id += 1  # the coverage marker: no message carries this id
            self._subscribe_upstream(prefix)

    def release(self, prefix: bytes) -> None:
        """One subscriber less wants ``prefix``: UNSUBSCRIBE after ``linger`` if none is left."""
        if not self.upstream.release(prefix):
            return
        if self.config.linger <= 0 or self.stopping:
            self._expire(prefix)
            return
        # The linger counts from the last release: an earlier timer (the prefix was
        # released, wanted again and released again) must not cut it short.
        timer = self._lingering.pop(prefix, None)
        if timer is not None:
            timer.cancel()
        self._lingering[prefix] = self._call_later(self.config.linger, lambda: self._linger_over(prefix))

    def _linger_over(self, prefix: bytes) -> None:
        self._lingering.pop(prefix, None)
        self._expire(prefix)

    def _expire(self, prefix: bytes) -> None:
        if self.upstream.expire(prefix, self.last_id):
            self._unsubscribe_upstream(prefix)

    # -- subscribers ----------------------------------------------------------------------

    def join(self, member: Any, prefixes: List[bytes], envelope: str, wire: "Wire", rights: Rights,
             since: Optional[int] = None, client_id: Optional[bytes] = None,
             chose_topics: bool = False) -> Subscriber:
        """A subscriber (any transport) on ``prefixes`` (from :meth:`topics_for`): subscribed
        upstream, what it missed after ``since`` replayed (a gap notice first), then routed."""
        subscriber = Subscriber(prefixes, envelope, wire, rights, self.config.client_rate, time.monotonic(),
                                client_id, chose_topics)
        self.subscribers[member] = subscriber
        self.flush()  # this turn's messages go to those already there, not to the newcomer
        for prefix in prefixes:
            self.want(prefix)
        if since is not None and self.config.upstream_ids and since > self.last_id:
            # The client saw ids this gateway has not taken yet (a gateway or worker that has
            # just started, or one a little behind the one the client came from): it waits off
            # the routes until the gateway has, then resumes (no duplicate, no silent gap).
            self._behind[member] = since
            self._call_later(self.behind_timeout, lambda: self._behind_too_long(member))
            return subscriber
        self._resume(member, subscriber, since)
        return subscriber

    def _resume(self, member: Any, subscriber: Subscriber, since: Optional[int]) -> None:
        if since is None:
            self.router.add(member, subscriber.prefixes, subscriber.envelope, subscriber.wire)
            return
        wire = subscriber.wire
        if not wire.shared:
            notice, missed = self.missed(subscriber.prefixes, since)
            if (notice is not None or missed) and wire.answer(member, ([notice] if notice else []) + missed):
                return
            self.router.add(member, subscriber.prefixes, subscriber.envelope, wire)
            return
        notice = self._gap_notice(subscriber.prefixes, since)
        if notice is not None:
            self.output.queue(member, wire.encode_notice(notice, subscriber.envelope))
            since = max(since, self.history.first_missing)  # the evicted ids are in the notice
        self._replay(member, subscriber, since)

    def _replay(self, member: Any, subscriber: Subscriber, after: int) -> None:
        """Paced resume: the messages after id ``after`` for the subscriber's topics, as many
        as fit in its queue (``max_queue``; at least one into an empty queue).

        When they do not all fit, it stays off the routes and the replay goes on from
        where it stopped once its queue drains below half of ``max_queue``
        (:meth:`refill`); what arrives meanwhile is in the history, so it comes in order
        and once.  When the replay has caught up, it is routed.  Ids evicted from the
        history before it read them are named in a gap notice.
        """
        self.flush()  # this turn's messages are in the history: the replay sends them
        history = self.history
        output = self.output
        wire, envelope, prefixes = subscriber.wire, subscriber.envelope, subscriber.prefixes
        if after < history.first_missing:
            self.stats.gaps += 1
            output.queue(member, wire.encode_notice({"gap": [after + 1, history.first_missing]}, envelope))
            after = history.first_missing
        limit = output.max_queue
        stats = self.stats
        queued = output.queued_bytes(member)
        for m in history.after(after):
            if topic_matches(m.topic if m.multipart else m.payload, prefixes):
                frame = wire.encode(m, envelope)
                if queued + len(frame) > limit and queued:
                    self._refilling[member] = None
                    output.refill_when_drained(member, True)
                    subscriber.replayed = after
                    return
                output.queue(member, frame)
                queued += len(frame)
                stats.messages_out += 1
                stats.bytes_out += len(frame)
            after = m.id
        if self._refilling.pop(member, 0) is None:
            output.refill_when_drained(member, False)
        self.router.add(member, prefixes, envelope, wire)

    def refill(self, member: Any) -> None:
        """A member's queue drained during a paced replay: go on with it."""
        subscriber = self.subscribers.get(member)
        if subscriber is not None and member in self._refilling:
            self._replay(member, subscriber, subscriber.replayed)

    def _behind_too_long(self, member: Any) -> None:
        """Upstream ids: the id a subscriber saw did not come within ``behind_timeout``: resume
        it from the last id with a gap notice rather than let it wait for ever."""
        since = self._behind.pop(member, None)
        subscriber = self.subscribers.get(member)
        if since is not None and subscriber is not None:
            self.flush()
            self._resume(member, subscriber, since)

    def catch_up(self) -> None:
        """Upstream ids: resume the subscribers that waited for the id they saw."""
        if not self._behind:
            return
        ready = [member for member, since in self._behind.items() if self.last_id >= since]
        if not ready:
            return
        self.flush()  # this turn's messages go to those already routed
        for member in ready:
            since = self._behind.pop(member)
            subscriber = self.subscribers.get(member)
            if subscriber is not None:
                self._resume(member, subscriber, since)

    def missed(self, prefixes: Sequence[bytes], since: int,
               limit: Optional[int] = None) -> Tuple[Optional[Notice], List[Stored]]:
        """Resume: a gap notice if the ids after ``since`` are not all known, and the
        messages in the history after ``since`` for ``prefixes``: the first ``limit`` of them
        (None: all), the history read no further than the last one (a poll answers at most
        ``poll_max_messages``: one with an old ``since`` must not cost the whole history)."""
        notice = self._gap_notice(prefixes, since)
        matching = (m for m in self.history.after(since)
                    if topic_matches(m.topic if m.multipart else m.payload, prefixes))
        return notice, list(islice(matching, limit))

    def _gap_notice(self, prefixes: Sequence[bytes], since: int) -> Optional[Notice]:
        """A gap notice naming the ids after ``since`` the gateway cannot vouch for (never
        given here, evicted from the history, or not subscribed upstream meanwhile), or None."""
        ranges = []
        if since > self.last_id:
            # Ids this gateway never gave (another run's, or a gateway far ahead): resume from
            # the last one, and say which ids are unknown here.
            ranges.append((self.last_id + 1, since))
            since = self.last_id
        if since < self.history.first_missing:
            ranges.append((since + 1, self.history.first_missing))  # evicted from the history
        for prefix in prefixes:
            blind = self.upstream.gap(prefix, since)  # not subscribed upstream for a while
            if blind is not None:
                ranges.append(blind)
        if not ranges:
            return None
        self.stats.gaps += 1
        return {"gap": [min(r[0] for r in ranges), max(r[1] for r in ranges)]}

    def move(self, old: Any, new: Any, wire: "Wire") -> None:
        """Route ``new`` where ``old`` was, on ``wire`` (a Socket.IO session moving to WebSocket)."""
        self.flush()  # this turn's messages go to the old member, on its route, first
        subscriber = self.subscribers.pop(old, None)
        self.router.remove(old)
        if subscriber is None:
            return
        subscriber.wire = wire
        self.subscribers[new] = subscriber
        self.router.add(new, subscriber.prefixes, subscriber.envelope, wire)

    def leave(self, member: Any) -> Optional[Subscriber]:
        """A subscriber is gone: unrouted, its upstream subscriptions released; what it had."""
        subscriber = self.subscribers.pop(member, None)
        self._behind.pop(member, None)
        if self._refilling.pop(member, 0) is None:
            self.output.refill_when_drained(member, False)
        self.lost.gaps.pop(member, None)
        self.router.remove(member)
        if subscriber is not None:
            for prefix in subscriber.prefixes:
                self.release(prefix)
        return subscriber

    def rate_ok(self, member: Any) -> bool:
        """The flood limit: a token bucket of ``client_rate`` per second, one second deep."""
        rate = self.config.client_rate
        subscriber = self.subscribers.get(member)
        if not rate or subscriber is None:
            return True
        now = time.monotonic()
        subscriber.tokens = min(rate, subscriber.tokens + (now - subscriber.tokens_at) * rate)
        subscriber.tokens_at = now
        if subscriber.tokens < 1:
            self.stats.rate_limited += 1
            return False
        subscriber.tokens -= 1
        return True
