"""The transports: thin adapters between a client's protocol and the hub.

Each transport turns what its clients send into hub calls (join, change
topics, forward, leave) and owns its wire kind (:mod:`zmqws.wire`), the
encoder the hub uses to build a message's bytes once for all its clients:

* :mod:`.websocket`: RFC 6455 clients (``ws://host/?topic=...``), control
  messages ``{"subscribe": ...}``, messages forwarded upstream;
* :mod:`.sse`: Server-Sent Events (``GET /events``), heartbeats;
* :mod:`.poll`: long-polling (``GET /poll?since=ID``), one answer per request;
* :mod:`.socketio`: Engine.IO v4 / Socket.IO v5 sessions over polling and
  WebSocket.

A transport never repeats a policy of the hub: rights, topic caps, resume and
gap notices, rates are the hub's.  :class:`Context` is what every transport
is given.  A new transport is one new module here and one line in
:class:`zmqws.gateway.GatewayApp`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

from ..protocol.errors import HTTPError
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.utf8 import is_utf8
from ..rights import TopicRefused
from ..routing import MAX_ID_DIGITS, Stored, parse_id
from ..wire import Envelopes, WebSocketWire

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TransportConfig
    from ..hub import Hub
    from ..peer import Client
    from ..protocol.deflate import PerMessageDeflate
    from ..protocol.handshake import Request
    from ..rpc import Rpc
    from ..server import WebSocketServer
    from ..upstream import UpstreamSockets

__all__ = ["Context", "JoinQuery", "PollPacer", "cors_headers", "client_id_of"]

log = logging.getLogger("zmqws")

Gathered = TypeVar("Gathered")  # what a paced member's next answer holds so far


def cors_headers(request: "Request", origins: Sequence[str]) -> List[Tuple[str, str]]:
    """``Access-Control-Allow-Origin`` only for an ``Origin`` that ``origins`` names."""
    origin = request.header("origin")
    if not origin or not origins:
        return []
    if "*" in origins:
        return [("Access-Control-Allow-Origin", "*")]
    if origin in origins:
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    return []


def client_id_of(client: "Client") -> bytes:
    """The id a client is known by upstream and to the application: ``PID.N`` (ASCII, unique
    in this process, and across the processes of ``--workers``)."""
    return f"{os.getpid()}.{client.id}".encode("ascii")


class JoinQuery:
    """What a WebSocket, SSE or poll request asks for, checked: its topic prefixes (within its
    rights and the caps), its envelope (``?format=``) and its resume point (``?since=``, else
    ``Last-Event-ID``).  :class:`HTTPError` (400, 403, 503) for what cannot be served."""

    __slots__ = ("prefixes", "envelope", "since", "chose_topics")

    def __init__(self, context: "Context", client: "Client", request: "Request") -> None:
        config = context.config
        topics = request.query.get("topic", [])
        try:
            self.prefixes = context.hub.topics_for(client.rights, topics)
        except TopicRefused as exc:
            raise HTTPError(exc.status, exc.message) from None
        self.chose_topics = bool(topics)
        envelope = request.query_value("format")
        self.envelope = config.envelope if envelope is None else envelope
        if self.envelope not in ("payload", "topic", "json"):
            raise HTTPError(400, "format must be one of payload, topic, json")
        if config.require_topic and not any(topics):
            raise HTTPError(400, "name at least one topic (?topic=prefix)")
        self.since = self._since(request)

    @staticmethod
    def _since(request: "Request") -> Optional[int]:
        text = request.query_value("since")
        if text is None:
            text = request.header("last-event-id")
        if text is None:
            return None
        since = parse_id(text.strip())
        if since is None:
            log.info("refusing since=%.40r: not a message id", text)
            raise HTTPError(400, f"since must be a message id ({MAX_ID_DIGITS} digits at most)")
        return since


class Context:
    """What every transport is given: the server (connections and I/O), the hub, the
    upstream sockets, the two-way channel (None without ``rpc_endpoint``), its config, the
    CORS origins, the envelopes, and one WebSocket wire per deflate window."""

    __slots__ = ("server", "hub", "upstream", "rpc", "config", "cors_origins", "envelopes", "_ws_wires")

    def __init__(self, server: "WebSocketServer", hub: "Hub", upstream: "UpstreamSockets",
                 config: "TransportConfig", cors_origins: Sequence[str] = (), rpc: Optional["Rpc"] = None) -> None:
        self.server = server
        self.hub = hub
        self.upstream = upstream
        self.rpc = rpc
        self.config = config
        self.cors_origins = cors_origins  # pages of these origins may read the HTTP transports
        self.envelopes = Envelopes(config.separator)
        self._ws_wires: Dict[object, WebSocketWire] = {}

    def websocket_wire(self, deflate: Optional["PerMessageDeflate"]) -> WebSocketWire:
        """The wire of WebSocket clients with this negotiated compression (one per window size:
        server frames carry no context, so one encoding serves them all, RFC 7692 §7.2.1)."""
        key = None if deflate is None else deflate.out_key
        wire = self._ws_wires.get(key)
        if wire is None:
            wire = self._ws_wires[key] = WebSocketWire(self.envelopes, deflate)
        return wire

    def direct_message(self, topic: bytes, payload: bytes) -> Stored:
        """A message the application sends to one client (``send``): outside the numbered
        stream (no id, not in the history), text when it can be, as the hub decides."""
        text = self.hub.config.payload_mode != "binary" and is_utf8(payload)
        return Stored(None, topic, payload, OP_TEXT if text else OP_BINARY, True)  # type: ignore[arg-type]

    def send_direct(self, client: "Client", frame: bytes) -> None:
        """One encoded message to one client, under the slow-consumer policy like any other."""
        self.server.fanout(frame, (client,), 1)


class PollPacer(Generic[Gathered]):
    """``poll_coalesce_ms``, leading edge (as ``flush_interval_ms`` paces WebSocket writes,
    :class:`zmqws.hub.PacedFlush`), per member: a long-poll connection, a Socket.IO polling
    socket.  What a member is to be sent goes at once if its previous send (:meth:`sent`) was
    the interval or more ago, or it had none (:meth:`wait_until` says None); otherwise the
    transport gathers it (:meth:`gather`) until the interval after that send, when ``release``
    sends it.  Members sent together are due together and share one timer: at most one timer
    per waiting member, none per message.  What a timer releases counts as sent at the time
    it was due (:meth:`now`): its members stay due together, and the timer's lateness does not
    add up from one interval to the next (messages that come about once per interval would
    otherwise lag more and more, up to a whole interval).  Bookkeeping per live member,
    dropped by :meth:`forget`."""

    __slots__ = ("context", "interval", "release", "gathering", "_sent", "_due", "_releasing")

    def __init__(self, context: Context, release: Callable[[Any], None]) -> None:
        self.context = context
        self.interval = context.config.poll_coalesce_ms / 1000
        self.release = release  # sends what a member gathered (and pops it from ``gathering``)
        self.gathering: Dict[Any, Gathered] = {}  # waiting members: what they gathered so far
        self._sent: Dict[Any, float] = {}  # member -> when its previous send went (monotonic)
        self._due: Dict[float, List[Tuple[Any, Gathered]]] = {}  # a timer's time -> its members
        self._releasing: Optional[float] = None  # while a timer releases its members: its due time

    def now(self) -> float:
        """The time to give :meth:`sent`: the due time of the timer releasing, else the clock's."""
        return time.monotonic() if self._releasing is None else self._releasing

    def wait_until(self, member: Any, now: float) -> Optional[float]:
        """When a send to ``member`` may go: None for now, else the interval after its previous."""
        last = self._sent.get(member)
        if last is None or last + self.interval <= now:
            return None
        return last + self.interval

    def sent(self, members: Sequence[Any], now: float) -> None:
        """These members were sent something at ``now``."""
        stamps = self._sent
        for member in members:
            stamps[member] = now

    def gather(self, member: Any, gathered: Gathered, due: float) -> None:
        """``member`` waits until ``due`` (from :meth:`wait_until`), with ``gathered``."""
        self.gathering[member] = gathered
        group = self._due.get(due)
        if group is None:
            group = self._due[due] = []
            loop = self.context.server.loop
            assert loop is not None
            loop.call_later(max(0.0, due - time.monotonic()), lambda: self._released(due))
        group.append((member, gathered))

    def _released(self, due: float) -> None:
        """A timer's time: its members still gathering what they gathered then are released
        (not one answered meanwhile, full or at its deadline, and waiting again)."""
        gathering = self.gathering
        self._releasing = due
        try:
            for member, gathered in self._due.pop(due, []):
                if gathering.get(member) is gathered:
                    self.release(member)
        finally:
            self._releasing = None

    def forget(self, member: Any) -> None:
        """The member is gone: its bookkeeping too."""
        self._sent.pop(member, None)
        self.gathering.pop(member, None)
