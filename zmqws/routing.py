"""Who gets which message: topic prefixes, routes, upstream subscriptions and history. Sans-I/O.

* A client subscribes to topic prefixes (ZeroMQ's rule: a message matches a
  subscription when its topic starts with it; ``b""`` matches everything).
* Clients with the same prefixes, envelope and wire format share one
  :class:`Route`.  A message is matched against the prefixes of its topic
  (one dictionary look-up per prefix length in use), giving the routes that
  get it; the fan-out then queues one joined ``bytes`` per route per loop
  turn on every member.  Routing a message costs time proportional to the
  routes (at most the clients) that get it, not to all clients or topics.
* :class:`Upstream` keeps the union of what clients want as reference counts
  per prefix and says when to SUBSCRIBE or UNSUBSCRIBE upstream; a prefix no
  client wants lingers for a while before it is dropped.  It also remembers
  since which message id each prefix has been subscribed without a break, so
  that a resuming client can be told of the ids it may have missed.
* :class:`History`: the last messages, bounded by count and bytes, for resume.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Deque, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

__all__ = ["Route", "Router", "Upstream", "History", "Stored", "parse_id", "MAX_ID_DIGITS"]

MAX_ID_DIGITS = 20  # 2**64 - 1, the largest id an upstream sequencer stamps, has 20 digits


def parse_id(text: str) -> Optional[int]:
    """A message id a client sent (``?since=``, ``Last-Event-ID``, a Socket.IO recovery
    offset): 1 to :data:`MAX_ID_DIGITS` ASCII digits, else None (the caller refuses it).

    Checked before ``int()``, which takes "²" and other Unicode digits for ``str.isdigit()``
    but refuses them, and refuses strings over 4300 digits (``sys.int_info``'s limit)."""
    if 0 < len(text) <= MAX_ID_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


class Route:
    """Clients that receive exactly the same bytes: same prefixes, envelope and wire format."""

    __slots__ = ("key", "prefixes", "envelope", "wire", "members", "pending")

    def __init__(self, key: Tuple[Any, ...], prefixes: FrozenSet[bytes], envelope: str, wire: Any) -> None:
        self.key = key
        self.prefixes = prefixes
        self.envelope = envelope
        self.wire = wire
        self.members: Dict[Any, None] = {}
        self.pending: List[Any] = []  # this turn's messages for the route


class Router:
    """Maps topics to routes by prefix."""

    __slots__ = ("_routes", "_by_prefix", "_lengths", "_length_counts", "_of")

    def __init__(self) -> None:
        self._routes: Dict[Tuple[Any, ...], Route] = {}
        self._by_prefix: Dict[bytes, Dict[Route, None]] = {}
        self._lengths: List[int] = []  # distinct prefix lengths in use, sorted
        self._length_counts: Dict[int, int] = {}  # prefix length -> prefixes of that length
        self._of: Dict[Any, Route] = {}  # client -> its route

    def __len__(self) -> int:
        return len(self._routes)

    def route_of(self, client: Any) -> Optional[Route]:
        return self._of.get(client)

    def add(self, client: Any, prefixes: Iterable[bytes], envelope: str, wire: Any) -> Route:
        """Put ``client`` on the route for (prefixes, envelope, wire); returns it."""
        self.remove(client)
        frozen = frozenset(prefixes)
        key = (frozen, envelope, wire)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = Route(key, frozen, envelope, wire)
            for prefix in frozen:
                routes = self._by_prefix.get(prefix)
                if routes is None:
                    routes = self._by_prefix[prefix] = {}
                    self._count_length(len(prefix), 1)
                routes[route] = None
        route.members[client] = None
        self._of[client] = route
        return route

    def remove(self, client: Any) -> Optional[Route]:
        """Take ``client`` off its route; a route left empty is forgotten."""
        route = self._of.pop(client, None)
        if route is None:
            return None
        route.members.pop(client, None)
        if not route.members:
            del self._routes[route.key]
            for prefix in route.prefixes:
                routes = self._by_prefix[prefix]
                del routes[route]
                if not routes:
                    del self._by_prefix[prefix]
                    self._count_length(len(prefix), -1)
        return route

    def _count_length(self, length: int, delta: int) -> None:
        """Keep ``_lengths`` up to date in O(1) per prefix, re-sorting only when the set changes."""
        counts = self._length_counts
        count = counts.get(length, 0) + delta
        if count:
            counts[length] = count
            if count == 1 and delta > 0:
                self._lengths = sorted(counts)
        else:
            del counts[length]
            self._lengths = sorted(counts)

    def match(self, topic: bytes) -> Iterable[Route]:
        """The routes whose prefixes match ``topic``, each once (one dictionary lookup per
        distinct prefix length, whatever the number of prefixes)."""
        lengths = self._lengths
        if len(lengths) == 1:  # the common case: no generator, the routes' own dict
            length = lengths[0]
            return self._by_prefix.get(topic[:length], ()) if length <= len(topic) else ()
        return self._match_lengths(topic)

    def _match_lengths(self, topic: bytes) -> Iterator[Route]:
        """:meth:`match` when the prefixes have several lengths."""
        by_prefix = self._by_prefix
        n = len(topic)
        lengths = self._lengths
        seen: Optional[Set[Route]] = None
        for length in lengths:
            if length > n:
                break
            routes = by_prefix.get(topic[:length])
            if routes:
                for route in routes:
                    if len(route.prefixes) == 1:
                        yield route  # a route with one prefix can match only once
                    else:
                        if seen is None:
                            seen = set()
                        if route not in seen:
                            seen.add(route)
                            yield route

    def routes(self) -> List[Route]:
        return list(self._routes.values())


class Upstream:
    """Reference counts of the prefixes clients want, and the SUB socket's subscriptions.

    ``want(prefix, next_id)``/``release(prefix)`` are called as clients come,
    go and change topics, and say what to do upstream: ``want`` returns True
    when the prefix must be SUBSCRIBEd now; ``release`` returns True when the
    last client let go (the caller then lingers and calls ``expire``, which
    returns True when the prefix must be UNSUBSCRIBEd because nobody wanted
    it back meanwhile).

    Coverage, for resume: a new subscription is given a fresh message id
    (``next_id``, a marker no message will carry); every message for the
    prefix received after it has a larger id.  An expired subscription
    remembers the last id before it was dropped.  So a client that saw
    messages up to id X and comes back learns from :meth:`gap` which ids
    the gateway may have been blind for: after the last drop and up to the
    marker of the subscription now in force.
    """

    __slots__ = ("counts", "subscribed", "since", "dropped")

    def __init__(self) -> None:
        self.counts: Dict[bytes, int] = {}
        self.subscribed: Set[bytes] = set()
        self.since: Dict[bytes, int] = {}
        self.dropped: Dict[bytes, int] = {}

    def want(self, prefix: bytes, next_id: int) -> bool:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        if prefix in self.subscribed:
            return False
        self.subscribed.add(prefix)
        self.since[prefix] = next_id
        return True

    def release(self, prefix: bytes) -> bool:
        count = self.counts.get(prefix, 0) - 1
        if count > 0:
            self.counts[prefix] = count
            return False
        self.counts.pop(prefix, None)
        return prefix in self.subscribed

    def expire(self, prefix: bytes, last_id: int) -> bool:
        if self.counts.get(prefix) or prefix not in self.subscribed:
            return False
        self.subscribed.discard(prefix)
        del self.since[prefix]
        self.dropped[prefix] = last_id
        if len(self.dropped) > 4 * len(self.subscribed) + 1024:
            # Keep the most recent drops; an older one only widens a reported gap.
            recent = sorted(self.dropped.items(), key=lambda kv: kv[1])[len(self.dropped) // 2:]
            self.dropped = dict(recent)
        return True

    def gap(self, prefix: bytes, seen: int) -> Optional[Tuple[int, int]]:
        """Ids (first, last) in which messages for ``prefix`` may have been missed after ``seen``."""
        since = self.since
        if seen >= since.get(prefix, seen + 1):
            return None  # the common case (a poll that keeps up): covered since before ``seen``
        # The subscriptions covering ``prefix`` are its leading substrings: O(len(prefix)) look-ups,
        # not a walk over every subscription.
        covering = [prefix[:i] for i in range(len(prefix) + 1)]
        starts = [since[q] for q in covering if q in since]
        if not starts:
            return None
        start = min(starts)
        if seen >= start:
            return None
        dropped = self.dropped
        drops = [dropped[q] for q in covering if q in dropped and dropped[q] < start]
        low = max(seen, max(drops)) if drops else seen
        return (low + 1, start) if low < start else None


class Stored:
    """One message as kept in the history.

    ``json``: its ``json`` envelope document, encoded once by the first client that needs it
    (:func:`zmqws.wire.json_bytes`) and shared by every later one; it lives and goes with the
    message (at most one encoding per message held in the history)."""

    __slots__ = ("id", "topic", "payload", "opcode", "multipart", "json")

    def __init__(self, msg_id: int, topic: bytes, payload: bytes, opcode: int, multipart: bool) -> None:
        self.id = msg_id
        self.topic = topic
        self.payload = payload
        self.opcode = opcode
        self.multipart = multipart
        self.json: Optional[bytes] = None


class History:
    """The last messages, at most ``max_count`` of them and ``max_bytes`` of payload."""

    __slots__ = ("max_count", "max_bytes", "_items", "_bytes", "first_missing")

    def __init__(self, max_count: int = 1000, max_bytes: int = 16 << 20) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: Deque[Stored] = deque(maxlen=max_count or None)
        self._bytes = 0
        self.first_missing = 0  # every id <= this has been evicted (or never stored)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Stored) -> None:
        if not self.max_count:
            self.first_missing = item.id
            return
        items = self._items
        if len(items) == self.max_count:  # full: the deque's maxlen drops the oldest
            old = items[0]
            self._bytes -= len(old.payload) + len(old.topic)
            self.first_missing = old.id
        items.append(item)
        self._bytes += len(item.payload) + len(item.topic)
        if self._bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Drop the oldest messages until the bytes bound holds again (the newest one stays)."""
        items = self._items
        while self._bytes > self.max_bytes and len(items) > 1:
            old = items.popleft()
            self._bytes -= len(old.payload) + len(old.topic)
            self.first_missing = old.id

    def after(self, since: int) -> Iterator[Stored]:
        """Messages with an id greater than ``since``, oldest first, as they are read (a caller
        that needs a few of them reads no further; the history must not change meanwhile)."""
        items = self._items
        if not items or items[-1].id <= since:
            return iter(())
        # ids grow by one per message, but an evicted or unstored one leaves no trace: search.
        lo, hi = 0, len(items)
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid].id <= since:
                lo = mid + 1
            else:
                hi = mid
        return islice(items, lo, None)
