"""The ZeroMQ → WebSocket gateway: a SUB socket in the server's poll loop, routing and fan-out.

:class:`Gateway` is a :class:`~zmqws.server.WebSocketServer` whose loop also
polls a ZeroMQ SUB socket.  Each turn drains the SUB socket up to a budget;
every message gets an id, goes into the history and onto the routes whose
topic prefixes match it (:mod:`zmqws.routing`).  After the turn, each route's
messages are encoded once for the route's envelope and wire format, joined
into one ``bytes`` and that same object is queued on every member; the
server then flushes each client with one ``sendmsg``.  Per client and per
turn the work is an append and an addition, whatever the number of messages.

Clients choose topics (``?topic=prefix``, repeatable; JSON control messages
``{"subscribe": "p"}``/``{"unsubscribe": "p"}``), the envelope
(``?format=payload|topic|json``) and resume point (``?since=ID``).  The SUB
socket subscribes upstream to the union of the clients' prefixes.
Client messages are forwarded upstream when a PUSH or PUB socket is set.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import zmq

from .protocol.connection import Message
from .protocol.frames import CLOSE_POLICY_VIOLATION, OP_BINARY, OP_TEXT, frame_header
from .protocol.handshake import HTTPError, Request, error_response, http_response
from .config import GatewayConfig
from .files import FileCache, StaticFile
from .monitor import RETRY_LOG_INTERVAL, UpstreamMonitor
from . import metrics as prometheus
from .protocol import sse
from .rights import (DEFAULT_MAX_TOPIC_LENGTH, DEFAULT_MAX_TOPICS, Rights, TopicRefused, check_count,
                     check_read, resolve_topics, topic_matches)
from .routing import MAX_ID_DIGITS, History, Route, Router, Stored, Upstream, parse_id
from .server import STREAM, Client, WebSocketServer
from .socketio import SIO_POLL_WIRE, SocketIOEndpoint
from .protocol.utf8 import is_utf8

__all__ = ["Gateway", "ENVELOPES", "EndpointError"]

log = logging.getLogger("zmqws")

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

PAYLOAD_MODES = ("auto", "text", "binary")
ENVELOPES = ("payload", "topic", "json")
SSE = "sse"    # route wire format of Server-Sent Events clients
POLL = "poll"  # route wire format of parked long-polling requests


GAP_SETTLE = 1.0  # seconds a catch-all subscription must have held before id jumps are gaps


class EndpointError(ValueError):
    """A ZeroMQ endpoint the gateway cannot bind or connect (``kind``: SUB, PUSH or PUB)."""

    def __init__(self, kind: str, endpoint: str, verb: str, reason: str) -> None:
        super().__init__(f"cannot {verb} {kind} socket to {endpoint!r}: {reason}")
        self.kind = kind
        self.endpoint = endpoint
        self.reason = reason


def _endpoint_reason(exc: zmq.ZMQError) -> str:
    """What is wrong with an endpoint libzmq refused, in words that say what to fix."""
    if exc.errno == errno.EINVAL:
        return "invalid endpoint (expected tcp://HOST:PORT, ipc://PATH, inproc://NAME...)"
    if exc.errno == errno.EPROTONOSUPPORT:
        return "unknown transport (expected tcp://, ipc://, inproc://...)"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.ENODEV:
        return "no such address or interface to bind"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


class _ClientState:
    """What the gateway keeps per WebSocket client."""

    __slots__ = ("prefixes", "envelope", "wire", "tokens", "tokens_at", "client_id", "chose_topics",
                 "replayed")

    def __init__(self, prefixes: List[bytes], envelope: str, wire: Any, rate: float, now: float,
                 client_id: Optional[bytes], chose_topics: bool = False) -> None:
        self.prefixes = prefixes
        self.envelope = envelope
        self.wire = wire
        self.tokens = rate
        self.tokens_at = now
        self.client_id = client_id  # None: "PID.CLIENT_ID", made when first needed
        self.chose_topics = chose_topics  # the request named topics (else: everything allowed)
        self.replayed = 0  # a paced resume: the last id the replay has dealt with


class Gateway(WebSocketServer):
    """Push messages from ZeroMQ publishers to WebSocket clients, by topic.

    ``Gateway(sub_endpoint, port, *, host="127.0.0.1", ...)``:

    * ``sub_endpoint``: a ZeroMQ endpoint or a list of them (``None`` for a
      gateway fed only by :meth:`publish`).  The SUB socket connects to each
      (``bind=True``: binds instead).
    * ``payload_mode``: ``"auto"`` (valid UTF-8 → text frame, else binary),
      ``"text"`` (the same: what is not UTF-8 cannot be text) or ``"binary"``.
      The payload is the last part of a multipart message.
    * ``envelope``: what a client receives by default: ``"payload"``,
      ``"topic"`` (topic, ``separator``, payload) or ``"json"``
      (``{"id", "topic", "data"}``); ``?format=`` overrides per connection.
    * ``require_topic``: refuse (400) a client that names no topic; else no
      topic means everything (it may read).
    * ``max_topics``, ``max_topic_length``: topic prefixes one client may
      have at most, and their length in bytes (400 / an error answer beyond);
      ``max_upstream_prefixes``: distinct prefixes the SUB socket may be
      subscribed to at once (503 / an error answer for a client that would
      add one more; 0 = no limit).
    * ``subscribe_all``: keep an upstream subscription to everything even
      with no client; ``linger``: seconds an unwanted upstream subscription
      is kept (so a client back after a blip misses nothing).
    * ``history``, ``history_bytes``: messages kept for ``?since=`` resume.
    * ``push_endpoint`` / ``pub_endpoint``: forward client messages upstream
      as ``[topic, client id, payload]`` on a PUSH / PUB socket (an XPUB with
      ``XPUB_NODROP``, so that a full subscriber is seen) (connects, or
      binds with ``bind=True``); ``upstream_topic``: the topic used when the
      client's message names none; ``client_rate``: messages per second a
      client may send (burst of the same size) before it is closed with 1008;
      ``upstream_hwm``: the upstream socket's send high-water mark (when it
      is full, messages are dropped and counted in ``stats.upstream_drops``).
    * ``upstream_ids``: message ids come from upstream: every message is
      ``[first part, 8-byte big-endian id, other parts...]`` as stamped by
      ``python -m zmqws.proxy --stamp`` (and by the ``--workers`` parent), so
      that several gateways agree on ids and a client may resume on any of them.
    * ``first_id``: the id of the first message (default: from the clock, so
      ids keep growing across restarts).
    * ``stats_dir``: write this process's counters there every second and
      sum every file found there at ``/metrics`` (set by ``--workers``).
    * ``static_dir``: serve its files too (never a dotfile, nothing outside
      it); files up to ``max_static_size`` bytes, kept in memory within
      ``static_cache_size`` bytes (see :mod:`zmqws.files`).
    * ``metrics``: serve ``GET /metrics``; ``metrics_token``: the token it
      then requires (Bearer header or ``?token=``, else 401); without one,
      ``/metrics`` asks what the ``authenticate`` hook asks of clients.
    * ``socketio``: serve Socket.IO (Engine.IO v4) clients under ``sio_path``;
      ``sio_event``: the event name of messages (``"topic"``: the topic);
      ``sio_ping_interval``/``sio_ping_timeout``: Engine.IO heartbeats.
    * ``ready_any``: ``GET /readyz`` answers 200 once any SUB endpoint is
      connected (default: once every one is); ``upstream_log_interval``:
      seconds between two "still not connected" lines of one endpoint;
      ``upstream_status_file``: the upstream endpoints' state as a forwarder
      in front of this gateway sees it (``{endpoint: connected}`` in JSON, kept
      by :class:`zmqws.proxy.Sequencer`; set by ``--workers``).
    * ``rcvhwm``: the SUB socket's receive high-water mark (messages).
    * ``drain_budget``: most messages taken from ZeroMQ per loop turn.
    * ``zmq_context``: a context to use (default: a new one, terminated on stop).
    * every :class:`WebSocketServer` option (limits, timeouts, hooks).

    ``run()`` blocks; ``start()``/``stop()`` run it on its own thread;
    ``publish()`` is thread-safe.  Counters: ``clients`` and ``stats``.
    """

    def __init__(self, sub_endpoint: Union[str, Sequence[str], None] = None, port: int = 8080, *,
                 host: str = "127.0.0.1", bind: bool = False, payload_mode: str = "auto",
                 envelope: str = "payload", separator: bytes = b" ", require_topic: bool = False,
                 max_topics: int = DEFAULT_MAX_TOPICS, max_topic_length: int = DEFAULT_MAX_TOPIC_LENGTH,
                 max_upstream_prefixes: int = 10_000,
                 subscribe_all: bool = False, linger: float = 10.0,
                 history: int = 1000, history_bytes: int = 16 << 20,
                 push_endpoint: Optional[str] = None, pub_endpoint: Optional[str] = None,
                 upstream_topic: bytes = b"ws", client_rate: float = 100.0,
                 upstream_hwm: int = 10_000,
                 rcvhwm: int = 100_000, drain_budget: int = 4096,
                 zmq_context: Optional[zmq.Context] = None, page: Optional[str] = "index.html",
                 static_dir: Optional[str] = None, max_static_size: int = 16 << 20,
                 static_cache_size: int = 64 << 20,
                 cors_origins: Sequence[str] = (), sse_heartbeat: float = 15.0,
                 poll_timeout: float = 25.0, poll_max_messages: int = 100,
                 poll_max_bytes: int = 1 << 20, metrics: bool = True,
                 metrics_token: Optional[str] = None, upstream_ids: bool = False,
                 stats_dir: Optional[str] = None, first_id: Optional[int] = None,
                 socketio: bool = True,
                 sio_path: str = "/socket.io/", sio_event: str = "message",
                 sio_ping_interval: float = 25.0, sio_ping_timeout: float = 20.0,
                 sio_recovery_seconds: float = 120.0, ready_any: bool = False, upstream_log_interval: float = RETRY_LOG_INTERVAL,
                 upstream_status_file: Optional[str] = None,
                 **server_options: Any) -> None:
        super().__init__(port, host=host, **server_options)
        if payload_mode not in PAYLOAD_MODES:
            raise ValueError(f"payload_mode must be one of {PAYLOAD_MODES}")
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}")
        if push_endpoint and pub_endpoint:
            raise ValueError("give push_endpoint or pub_endpoint, not both")
        if sub_endpoint is None:
            self.sub_endpoints: List[str] = []
        elif isinstance(sub_endpoint, str):
            self.sub_endpoints = [sub_endpoint]
        else:
            self.sub_endpoints = list(sub_endpoint)
        self.bind = bind
        self.payload_mode = payload_mode
        self.envelope = envelope
        self.separator = separator
        self.require_topic = require_topic
        self.max_topics = max_topics
        self.max_topic_length = max_topic_length
        self.max_upstream_prefixes = max_upstream_prefixes
        self.subscribe_all = subscribe_all
        self.linger = linger
        self.push_endpoint = push_endpoint
        self.pub_endpoint = pub_endpoint
        self.upstream_topic = upstream_topic
        self.client_rate = client_rate
        self.upstream_hwm = upstream_hwm
        self.rcvhwm = rcvhwm
        self.drain_budget = drain_budget
        self.page = page
        # Files are served from the user's folder first, then the package's (page, zmqws.js).
        self._files = FileCache([d for d in (static_dir, _STATIC) if d],
                                lambda callback: self.loop.call_soon_threadsafe(callback),
                                time.monotonic, max_file_size=max_static_size,
                                max_total=static_cache_size)
        self.max_static_size = max_static_size
        self.cors_origins = list(cors_origins)
        self.sse_heartbeat = sse_heartbeat
        self.poll_timeout = poll_timeout
        self.poll_max_messages = poll_max_messages
        self.poll_max_bytes = poll_max_bytes
        self.metrics = metrics
        self._metrics_auth = self.authenticate
        if metrics_token:
            from .auth import token_authenticator  # hmac loads OpenSSL's libcrypto: only when needed
            self._metrics_auth = token_authenticator(metrics_token)
        self.upstream_ids = upstream_ids
        self.sio = (SocketIOEndpoint(self, path=sio_path, event=sio_event,
                                     ping_interval=sio_ping_interval, ping_timeout=sio_ping_timeout,
                                     recovery_seconds=sio_recovery_seconds)
                    if socketio else None)
        self.stats_dir = stats_dir
        self.ready_any = ready_any
        self.upstream_log_interval = upstream_log_interval
        self.upstream_status_file = upstream_status_file
        self._monitor: Optional[UpstreamMonitor] = None
        self._catch_all_since: Optional[float] = None  # when b"" was subscribed (gap detection)
        self._gap_logged_at = float("-inf")
        self.history = History(history, history_bytes)
        self.router = Router()
        self.upstream = Upstream()
        self._own_context = zmq_context is None
        self._context = zmq_context
        self._sub: Optional[zmq.Socket] = None
        self._out: Optional[zmq.Socket] = None
        self._published: Deque[Tuple[Optional[bytes], bytes]] = deque()
        # Ids start from the clock (microseconds since the epoch, exact in a JavaScript
        # number), so a restarted gateway gives larger ids than before and a client
        # resuming with an id of the previous run is told of the gap, not confused.
        # With upstream_ids the ids come from the sequencer: start below any (0 = none taken yet).
        clock = 0 if upstream_ids else int(time.time() * 1_000_000)
        self._last_id = clock if first_id is None else first_id - 1
        self._active: List[Route] = []  # routes with messages this turn
        self._send_error_log_at = 0.0  # when a send error may be logged again
        # slow_client="drop": the ids dropped for a client, [first, last], until it is told
        self._gaps: Dict[Client, List[int]] = {}
        self._states: Dict[Client, _ClientState] = {}
        # upstream_ids: resuming clients waiting for this gateway to take the id they saw
        self._behind: Dict[Any, int] = {}
        self._deflaters: Dict[Any, Any] = {}  # wire key -> a PerMessageDeflate that encodes for it
        self._lingering: Dict[bytes, Any] = {}  # prefix -> the timer that will expire it

    @classmethod
    def from_config(cls, config: GatewayConfig, **objects: Any) -> "Gateway":
        """A gateway built from a :class:`~zmqws.config.GatewayConfig` (the command line's);
        ``objects``: what is not configuration (``zmq_context``, hooks)."""
        options = config.options()
        return cls(options.pop("sub_endpoints"), options.pop("port"), **options, **objects)

    # -- public API -------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The id of the last message taken in (ids start at 1 and only grow)."""
        return self._last_id

    def publish(self, payload: Union[bytes, str], topic: Union[bytes, str, None] = None) -> None:
        """Push a message of the embedding service's own to the clients; thread-safe.

        With a ``topic`` it is routed like a two-part ZeroMQ message
        ``[topic, payload]``; without, like a single-part one.
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if isinstance(topic, str):
            topic = topic.encode("utf-8")
        self._published.append((topic, bytes(payload)))
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._take_published)

    def upstream_status(self) -> Dict[str, bool]:
        """Each SUB endpoint: connected now (bound: at least one peer), from the socket monitor.

        With ``upstream_status_file``: each endpoint of the forwarder in front, connected
        when the forwarder is connected to it and this gateway to the forwarder."""
        own = (self._monitor.status() if self._monitor is not None
               else {endpoint: False for endpoint in self.sub_endpoints})
        if self.upstream_status_file is None:
            return own
        try:
            with open(self.upstream_status_file) as f:
                forwarder = json.load(f)
        except (OSError, ValueError):
            return own
        linked = all(own.values())
        return {endpoint: bool(connected) and linked for endpoint, connected in forwarder.items()}

    def subscriptions(self) -> List[bytes]:
        """The prefixes the SUB socket is subscribed to now (loop thread, or a snapshot)."""
        return sorted(self.upstream.subscribed)

    # -- setup / teardown ---------------------------------------------------------

    def _setup(self) -> None:
        if self._context is None:
            self._context = zmq.Context()
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        self._sub = sub
        # The monitor exists before the first connect or bind, so it sees every event.
        monitor = self._monitor = UpstreamMonitor(sub.get_monitor_socket(), self.bind,
                                                  self.loop.call_soon_threadsafe,
                                                  self.upstream_log_interval)
        for endpoint in self.sub_endpoints:
            self._attach(sub, endpoint, "SUB")
            monitor.add(endpoint, sub.getsockopt_string(zmq.LAST_ENDPOINT) if self.bind else endpoint)
        self.loop.register(monitor.socket, zmq.POLLIN, monitor.on_events)
        if self.push_endpoint or self.pub_endpoint:
            # --pub is an XPUB with XPUB_NODROP: to subscribers it is a PUB, but at the
            # high-water mark its send raises Again (a PUB drops silently), so a full
            # upstream is counted and a Socket.IO ack says so.
            out = self._context.socket(zmq.PUSH if self.push_endpoint else zmq.XPUB)
            out.setsockopt(zmq.LINGER, 0)
            out.setsockopt(zmq.SNDHWM, self.upstream_hwm)
            self._out = out
            if self.pub_endpoint:
                out.setsockopt(zmq.XPUB_NODROP, 1)
                self.loop.register(out, zmq.POLLIN, self._on_out)
            self._attach(out, self.push_endpoint or self.pub_endpoint,
                         "PUSH" if self.push_endpoint else "PUB")
        if self.subscribe_all:
            self._want(b"")
        self.loop.register(sub, zmq.POLLIN, self._on_sub)
        self.loop.after_turn.insert(0, self._send_batch)
        if self._published:
            self.loop.call_soon_threadsafe(self._take_published)
        if self.stats_dir:
            self.loop.call_later(0, self._write_snapshot)

    def _write_snapshot(self) -> None:
        """With workers: this process's counters for the others' /metrics, once a second."""
        try:
            prometheus.write_snapshot(self, self.stats_dir)
        except OSError as exc:
            log.warning("cannot write metrics snapshot: %s", exc)
        if not self._stopping:
            self.loop.call_later(1.0, self._write_snapshot)

    def _attach(self, sock: zmq.Socket, endpoint: str, kind: str) -> None:
        try:
            if self.bind:
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(kind, endpoint, "bind" if self.bind else "connect",
                                _endpoint_reason(exc)) from None

    def _teardown(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.close()
            if self.loop is not None:
                self.loop.unregister(monitor.socket)
            if self._sub is not None:
                self._sub.disable_monitor()
            monitor.socket.close(linger=0)
        for name in ("_sub", "_out"):
            sock = getattr(self, name)
            if sock is not None:
                if self.loop is not None:
                    self.loop.unregister(sock)  # a no-op for a socket never registered
                sock.close(linger=0)
                setattr(self, name, None)
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None
        self._files.close()
        super()._teardown()

    # -- upstream subscriptions -----------------------------------------------------

    def _want(self, prefix: bytes) -> None:
        if self.upstream_ids:
            # Ids come from upstream and cannot be reserved: coverage starts after the last one.
            if self.upstream.want(prefix, self._last_id):
                self._subscribe_upstream(prefix)
            return
        if self.upstream.want(prefix, self._last_id + 1):
            self._last_id += 1  # the coverage marker: no message carries this id
            self._subscribe_upstream(prefix)

    def _subscribe_upstream(self, prefix: bytes) -> None:
        self._sub.setsockopt(zmq.SUBSCRIBE, prefix)
        log.debug("upstream SUBSCRIBE %r", prefix)
        if not prefix:
            self._catch_all_since = time.monotonic()

    def _release(self, prefix: bytes) -> None:
        if self.upstream.release(prefix):
            if self.linger <= 0 or self._stopping:
                self._expire(prefix)
            else:
                # The linger counts from the last release: an earlier timer (the prefix
                # was released, wanted again and released again) must not cut it short.
                timer = self._lingering.pop(prefix, None)
                if timer is not None:
                    timer.cancel()
                self._lingering[prefix] = self.loop.call_later(self.linger,
                                                               lambda: self._linger_over(prefix))

    def _linger_over(self, prefix: bytes) -> None:
        self._lingering.pop(prefix, None)
        self._expire(prefix)

    def _expire(self, prefix: bytes) -> None:
        if self.upstream.expire(prefix, self._last_id) and self._sub is not None:
            self._sub.setsockopt(zmq.UNSUBSCRIBE, prefix)
            log.debug("upstream UNSUBSCRIBE %r", prefix)
            if not prefix:
                self._catch_all_since = None

    # -- messages in ------------------------------------------------------------------

    def _on_sub(self, _revents: int) -> None:
        # recv(copy=False) and Frame.more cost a third of recv_multipart() (no getsockopt
        # per part); the parts of a multipart message arrive together, so the rest never blocks.
        recv = self._sub.recv
        take = self._take
        NOBLOCK = zmq.NOBLOCK
        for _ in range(self.drain_budget):
            try:
                frame = recv(NOBLOCK, copy=False)
            except zmq.Again:
                break
            if not frame.more and not self.upstream_ids:
                take(None, frame.bytes)
                continue
            parts = [frame.bytes]
            while frame.more:
                frame = recv(copy=False)
                parts.append(frame.bytes)
            if self.upstream_ids:
                # [first, id, rest...] from a sequencer (zmqws.proxy --stamp, or --workers)
                if len(parts) < 2 or len(parts[1]) != 8:
                    self.stats.malformed += 1
                    continue
                msg_id = int.from_bytes(parts[1], "big")
                if msg_id <= self._last_id:
                    continue  # a duplicate (or a sequencer restart); never go back
                if not self._last_id:
                    self.history.first_missing = msg_id - 1  # the ids before: never seen here
                elif msg_id != self._last_id + 1 and self._catch_all_since is not None:
                    self._upstream_gap(msg_id)
                self._last_id = msg_id - 1
                del parts[1]
            if len(parts) > 1:
                take(parts[0], parts[-1])
            else:
                take(None, parts[0])
        if self._behind:
            self._catch_up()

    def _upstream_gap(self, msg_id: int) -> None:
        """upstream_ids: the ids between the last one and ``msg_id`` never came although every
        topic is subscribed (a jump under topic filtering is the publisher filtering, not a
        loss): messages lost upstream, at a high-water mark or in a reconnect. Counted; logged
        once per ``upstream_log_interval``."""
        now = time.monotonic()
        if now - self._catch_all_since < GAP_SETTLE:
            return  # the subscription may not have reached the publisher yet
        missed = msg_id - self._last_id - 1
        self.stats.upstream_gaps += 1
        self.stats.upstream_missed += missed
        if now - self._gap_logged_at >= self.upstream_log_interval:
            self._gap_logged_at = now
            log.warning("upstream message ids jump from %d to %d: %d messages lost upstream "
                        "(%d gaps, %d messages so far)", self._last_id, msg_id, missed,
                        self.stats.upstream_gaps, self.stats.upstream_missed)

    def _on_out(self, _revents: int) -> None:
        """The --pub XPUB's subscription messages: not needed (the XPUB filters by itself),
        read and dropped so that subscribers cannot make them pile up."""
        recv = self._out.recv
        for _ in range(self.drain_budget):
            try:
                recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    def _take_published(self) -> None:
        published = self._published
        while published:
            topic, payload = published.popleft()
            self._take(topic, payload)

    def _take(self, topic: Optional[bytes], payload: bytes) -> None:
        """One message in: an id, the history, and the routes that get it."""
        self._last_id += 1
        self.stats.zmq_messages += 1
        # "text" is text when it can be: a payload that is not UTF-8 cannot be a text frame
        # (RFC 6455 §5.6), a JSON string or a Socket.IO string, so it goes out as binary.
        opcode = OP_TEXT if self.payload_mode != "binary" and is_utf8(payload) else OP_BINARY
        multipart = topic is not None
        stored = Stored(self._last_id, topic if multipart else b"", payload, opcode, multipart)
        self.history.add(stored)
        active = self._active
        for route in self.router.match(topic if multipart else payload):
            if not route.pending:
                active.append(route)
            route.pending.append(stored)

    # -- messages out -----------------------------------------------------------------

    def _send_batch(self) -> None:
        """After each turn: per route, one joined ``bytes`` queued on every member.

        Each route is on its own: an exception in one route's work is logged (at most
        once a minute), counted in ``stats.send_errors`` and costs that route this
        turn's messages, never another route's nor a later turn's.
        """
        active = self._active
        if not active:
            return
        self._active = []
        cache: Optional[Dict[Tuple[int, str, Any], bytes]] = {} if len(active) > 1 else None
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
        if wire == POLL:
            for client in list(route.members):
                self._answer_poll(client, batch)
            return
        if wire == SIO_POLL_WIRE:
            self.sio.deliver_polling(list(route.members), batch)
            return
        if cache is None:
            frames = [self._encode(m, envelope, wire) for m in batch]
        else:
            frames = []
            for m in batch:
                key = (m.id, envelope, wire)
                frame = cache.get(key)
                if frame is None:
                    frame = cache[key] = self._encode(m, envelope, wire)
                frames.append(frame)
        blob = frames[0] if len(frames) == 1 else b"".join(frames)
        if self._gaps:
            self._tell_gaps(route.members, len(blob))
        over = self.fanout(blob, route.members, len(frames))
        if over and self.slow_client == "drop":
            self._note_drops(over, batch[0].id, batch[-1].id)

    def _note_drops(self, clients: List[Client], first: int, last: int) -> None:
        """``slow_client="drop"``: remember the ids each client lost (ids ``first``..``last``
        of its topics), to tell it before the next message it gets (:meth:`_tell_gaps`)."""
        gaps = self._gaps
        for client in clients:
            state = self._states.get(client)
            if state is None:
                continue
            if state.envelope == "sio":
                # Socket.IO has no gap notice: the session ends, the client recovers from the history.
                self._slow_client(client, 0, force_close=True)
                continue
            gap = gaps.get(client)
            gaps[client] = [gap[0] if gap is not None else first, last]

    def _tell_gaps(self, members: Dict[Client, None], size: int) -> None:
        """Queue a gap notice ``{"gap": [first, last]}`` (the ids dropped) on each member that
        lost messages, when it and the next ``size`` bytes fit in the member's queue."""
        gaps = self._gaps
        limit = self.max_queue
        told = [c for c in (gaps if len(gaps) < len(members) else members) if c in gaps and c in members]
        for client in told:
            session = client.session
            notice = self._encode_notice(self._states[client], {"gap": gaps[client]})
            if session.out_bytes + len(notice) + size <= limit or not session.out_bytes:
                session.queue(notice)
                del gaps[client]
                self.stats.gaps += 1

    def _encode(self, m: Stored, envelope: str, wire: Any) -> bytes:
        """One message on the wire: a WebSocket frame (plain, or compressed for a deflate
        window size), a Server-Sent Event, or Socket.IO frames."""
        opcode, body = self._envelope(m, envelope) if envelope != "sio" else (0, b"")
        if wire is None:
            return frame_header(opcode, len(body)) + body
        if wire == SSE:
            return sse.encode_event(body, m.id, binary=opcode == OP_BINARY)
        if wire.__class__ is tuple:  # ("sio", deflate key or None): Socket.IO over WebSocket
            return self.sio.encode_ws(m, wire[1])
        return self._deflaters[wire].encode_message(opcode, body)

    def _envelope(self, m: Stored, envelope: str) -> Tuple[int, bytes]:
        if envelope == "payload":
            return m.opcode, m.payload
        if envelope == "topic":
            if not m.multipart:
                return m.opcode, m.payload
            body = m.topic + self.separator + m.payload
            return (OP_TEXT if m.opcode == OP_TEXT and is_utf8(m.topic + self.separator) else OP_BINARY), body
        return OP_TEXT, json.dumps(self._json_doc(m), separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _json_doc(m: Stored) -> Dict[str, Any]:
        """The ``json`` envelope: ``{"id", "topic", "data"}``, binary data as base64 with ``"binary": true``."""
        doc: Dict[str, Any] = {"id": m.id, "topic": m.topic.decode("utf-8", "replace")}
        if m.opcode == OP_TEXT:
            doc["data"] = m.payload.decode("utf-8")
        else:
            doc["data"] = base64.b64encode(m.payload).decode("ascii")
            doc["binary"] = True
        return doc

    def _encode_notice(self, state: "_ClientState", notice: Dict[str, Any]) -> bytes:
        """A gateway notice (a gap) for a client's envelope and transport."""
        text = json.dumps(notice, separators=(",", ":"))
        if state.wire == SSE:
            return sse.encode_event(text.encode("utf-8"), event=next(iter(notice)))
        if state.envelope == "topic":
            text = "$gap" + self.separator.decode("utf-8", "replace") + text
        body = text.encode("utf-8")
        if state.wire is None:
            return frame_header(OP_TEXT, len(body)) + body
        return self._deflaters[state.wire].encode_message(OP_TEXT, body)

    # -- clients --------------------------------------------------------------------

    def _check_query(self, client: Client, request: Request) -> None:
        """``topic``, ``format`` and ``since`` as every transport takes them; topics must be
        within the client's read rights (403) and the caps (400, 503: :meth:`topics_for`)."""
        try:
            self.topics_for(client.rights, request.query.get("topic", []))
        except TopicRefused as exc:
            raise HTTPError(exc.status, exc.message) from None
        envelope = request.query_value("format", self.envelope)
        if envelope not in ENVELOPES:
            raise HTTPError(400, f"format must be one of {', '.join(ENVELOPES)}")
        if self.require_topic and not any(request.query.get("topic", [])):
            raise HTTPError(400, "name at least one topic (?topic=prefix)")
        self._since(request)

    @staticmethod
    def _since(request: Request) -> Optional[int]:
        """``?since=ID``, else the ``Last-Event-ID`` header an EventSource sends when it
        reconnects; 400 when it is not a message id (:func:`~zmqws.routing.parse_id`)."""
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

    def accept_websocket(self, client: Client, request: Request) -> None:
        """Check the query before the 101: ``topic``, ``format``, ``since`` (or Engine.IO's)."""
        if self.sio is not None and self.sio.matches(request):
            self.sio.check_upgrade(client, request)
        else:
            self._check_query(client, request)
        super().accept_websocket(client, request)

    def _on_open(self, client: Client) -> None:
        if self.sio is not None and self.sio.matches(client.request):
            self.sio.on_ws_open(client)
            WebSocketServer._on_open(self, client)
            return
        deflate = client.ws.deflate
        wire = None if deflate is None else deflate.out_key
        if wire is not None and wire not in self._deflaters:
            self._deflaters[wire] = deflate
        self._join(client, client.request.query_value("format", self.envelope), wire)
        super()._on_open(client)

    def _prefixes(self, client: Client, request: Request) -> List[bytes]:
        """The topics a client asked for (checked by :meth:`_check_query`); none = all it may read."""
        return resolve_topics(request.query.get("topic", []), client.rights, self.max_topics,
                              self.max_topic_length)

    # -- topics: rights and caps, the one check for every transport -----------------------

    def topics_for(self, rights: Rights, requested: Iterable[Union[str, bytes]]) -> List[bytes]:
        """The prefixes a joining client is routed with; :class:`TopicRefused` (counted) when
        it asks for a topic it may not read, too many or too long, or one more than the
        gateway subscribes upstream (``max_upstream_prefixes``)."""
        try:
            prefixes = resolve_topics(requested, rights, self.max_topics, self.max_topic_length)
            self._check_upstream_room(prefixes)
        except TopicRefused:
            self.stats.topics_refused += 1
            raise
        return prefixes

    def changed_topics(self, rights: Rights, current: Sequence[bytes], everything: bool, action: str,
                       topics: Sequence[Union[str, bytes]]) -> List[bytes]:
        """A client's prefixes after ``subscribe``/``unsubscribe`` of ``topics`` (any transport).

        ``everything``: the client named no topic when it joined, so the first explicit
        subscription replaces "all it may read".  Refusals as :meth:`topics_for`.
        """
        wanted = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in topics]
        if action != "subscribe":
            drop = set(wanted)
            return [p for p in current if p not in drop]
        try:
            check_count(wanted, 0, self.max_topic_length)
            check_read(wanted, rights)
            prefixes = dict.fromkeys(() if everything else current)
            prefixes.update(dict.fromkeys(wanted))
            check_count(prefixes, self.max_topics, self.max_topic_length)
            self._check_upstream_room(prefixes)
        except TopicRefused:
            self.stats.topics_refused += 1
            raise
        return sorted(prefixes)

    def _check_upstream_room(self, prefixes: Iterable[bytes]) -> None:
        """Refuse (503) prefixes that would take the SUB socket past ``max_upstream_prefixes``."""
        if not self.max_upstream_prefixes:
            return
        subscribed = self.upstream.subscribed
        new = sum(1 for p in prefixes if p not in subscribed)
        if new and len(subscribed) + new > self.max_upstream_prefixes:
            raise TopicRefused("too many distinct topics on this gateway", 503)

    def _new_state(self, member: Any, prefixes: List[bytes], envelope: str, client_id: Optional[bytes],
                   wire: Any = None, chose_topics: bool = False) -> "_ClientState":
        """What the gateway keeps for a routed member (a client, or a Socket.IO polling session)."""
        state = _ClientState(prefixes, envelope, wire, self.client_rate, time.monotonic(), client_id,
                             chose_topics)
        self._states[member] = state
        return state

    def _subscribe(self, prefixes: List[bytes]) -> None:
        for prefix in prefixes:
            self._want(prefix)

    def _unsubscribe(self, prefixes: List[bytes]) -> None:
        for prefix in prefixes:
            self._release(prefix)

    def _move_member(self, old: Any, new: Any, wire: Any) -> None:
        """Route ``new`` where ``old`` was (a Socket.IO session moving to WebSocket)."""
        state = self._states.pop(old, None)
        self.router.remove(old)
        if state is None:
            return
        self._send_batch()
        state.wire = wire
        self._states[new] = state
        self.router.add(new, state.prefixes, state.envelope, wire)

    def _join(self, client: Client, envelope: str, wire: Any, since: Optional[int] = None) -> None:
        """Subscribe a client (any transport) to its topics, replay what it missed, route it.

        ``since``: for a parked poll (which resumes before it parks), the id it waits after;
        other transports take it from the request.
        """
        request = client.request
        prefixes = self._prefixes(client, request)
        state = self._new_state(client, prefixes, envelope, None, wire, bool(request.query.get("topic")))
        self._send_batch()  # this turn's messages go to those already there, not to the newcomer
        self._subscribe(prefixes)
        if wire != POLL:
            since = self._since(request)
        if since is not None and self.upstream_ids and since > self._last_id:
            # The client saw ids this gateway has not taken yet (a gateway or worker that has
            # just started, or one a little behind the one the client came from): it waits off
            # the routes until the gateway has, then resumes (no duplicate, no silent gap).
            self._behind[client] = since
            self.loop.call_later(self.handshake_timeout, lambda: self._behind_too_long(client))
            return
        self._resume(client, state, since)

    def _resume(self, client: Client, state: "_ClientState", since: Optional[int]) -> None:
        """Replay what a joining client missed after ``since`` (a gap notice first), then route it."""
        if since is None:
            self.router.add(client, state.prefixes, state.envelope, state.wire)
            return
        if state.wire == POLL:
            notice, missed = self._missed(state, since)
            if notice is not None or missed:
                self._answer_poll(client, ([notice] if notice else []) + missed)
                return
            self.router.add(client, state.prefixes, state.envelope, state.wire)
            return
        notice = self._gap_notice(state, since)
        if notice is not None:
            client.session.queue(self._encode_notice(state, notice))
            since = max(since, self.history.first_missing)  # the evicted ids are in the notice
        self._replay(client, state, since)

    def _replay(self, client: Client, state: "_ClientState", after: int) -> None:
        """Paced resume: the messages after id ``after`` for the client's topics, as many as
        fit in its queue (``max_queue``; at least one into an empty queue).

        When they do not all fit, the client stays off the routes and the replay goes
        on from where it stopped once its queue drains below half of ``max_queue``
        (:meth:`_refill_client`); what arrives meanwhile is in the history, so it comes
        in order and once.  When the replay has caught up, the client is routed.  Ids
        evicted from the history before the client read them are named in a gap notice.
        """
        self._send_batch()  # this turn's messages are in the history: the replay sends them
        history = self.history
        session = client.session
        if after < history.first_missing:
            self.stats.gaps += 1
            session.queue(self._encode_notice(state, {"gap": [after + 1, history.first_missing]}))
            after = history.first_missing
        limit = self.max_queue
        envelope, wire, prefixes = state.envelope, state.wire, state.prefixes
        stats = self.stats
        self._queued(client)
        for m in history.after(after):
            if topic_matches(m.topic if m.multipart else m.payload, prefixes):
                frame = self._encode(m, envelope, wire)
                if session.out_bytes + len(frame) > limit and session.out_bytes:
                    self._refill[client] = None
                    state.replayed = after
                    return
                session.queue(frame)
                stats.messages_out += 1
                stats.bytes_out += len(frame)
            after = m.id
        self._refill.pop(client, None)
        self.router.add(client, prefixes, envelope, wire)

    def _refill_client(self, client: Client) -> None:
        """A client's queue drained during a paced replay: go on with it."""
        state = self._states.get(client)
        if state is None:
            self._refill.pop(client, None)
        else:
            self._replay(client, state, state.replayed)

    def _behind_too_long(self, client: Client) -> None:
        """upstream_ids: the id a client saw did not come within ``handshake_timeout``: resume it
        from the last id with a gap notice (see ``_missed``) rather than let it wait for ever."""
        since = self._behind.pop(client, None)
        state = self._states.get(client)
        if since is not None and state is not None:
            self._send_batch()
            self._resume(client, state, since)

    def _catch_up(self) -> None:
        """upstream_ids: resume the clients that waited for the gateway to take the id they saw."""
        ready = [client for client, since in self._behind.items() if self._last_id >= since]
        if not ready:
            return
        self._send_batch()  # this turn's messages go to those already routed
        for client in ready:
            since = self._behind.pop(client)
            state = self._states.get(client)
            if state is not None:
                self._resume(client, state, since)

    def _missed(self, state: "_ClientState", since: int) -> Tuple[Optional[Dict[str, Any]], List[Stored]]:
        """Resume: a gap notice if the ids after ``since`` are not all known, and the
        messages in the history after ``since`` for the client's topics."""
        notice = self._gap_notice(state, since)
        missed = [m for m in self.history.after(since)
                  if topic_matches(m.topic if m.multipart else m.payload, state.prefixes)]
        return notice, missed

    def _gap_notice(self, state: "_ClientState", since: int) -> Optional[Dict[str, Any]]:
        """Resume: a gap notice naming the ids after ``since`` the gateway cannot vouch for
        (evicted from the history, or not subscribed upstream meanwhile), or None."""
        ranges = []
        if since > self._last_id:
            # Ids this gateway never gave (another run's, or a gateway far ahead): resume from
            # the last one, and say which ids are unknown here.
            ranges.append((self._last_id + 1, since))
            since = self._last_id
        if since < self.history.first_missing:
            ranges.append((since + 1, self.history.first_missing))  # evicted from the history
        for prefix in state.prefixes:
            blind = self.upstream.gap(prefix, since)  # not subscribed upstream for a while
            if blind is not None:
                ranges.append(blind)
        if not ranges:
            return None
        self.stats.gaps += 1
        return {"gap": [min(r[0] for r in ranges), max(r[1] for r in ranges)]}

    def _forget(self, member: Any) -> None:
        state = self._states.pop(member, None)
        self._behind.pop(member, None)
        self._refill.pop(member, None)
        self._gaps.pop(member, None)
        self.router.remove(member)
        if state is not None:
            self._unsubscribe(state.prefixes)

    def _gone(self, client: Client) -> None:
        """A client stops receiving: unroute it (and end its Socket.IO session, if any)."""
        if self.sio is not None and client.transport == "socketio":
            session = client.data.get("eio_poll")
            if session is not None and session.poll_client is client:
                session.poll_client = None  # the held poll's connection went away
            self.sio.on_ws_gone(client)
        self._forget(client)

    def _on_close(self, client: Client) -> None:
        self._gone(client)
        super()._on_close(client)

    def _close_client(self, client: Client, code: int, reason: str) -> None:
        self._gone(client)
        super()._close_client(client, code, reason)

    def _closing_done(self, client: Client) -> None:
        self._gone(client)
        super()._closing_done(client)

    # -- messages from clients ------------------------------------------------------

    def _on_message(self, client: Client, message: Message) -> None:
        if client.transport == "socketio":
            data = message.data if message.binary else message.data.decode("utf-8")
            self.sio.on_ws_message(client, data)
            return
        state = self._states.get(client)
        if state is None:
            return
        if not self._rate_ok(state):
            log.info("client %s: over %s messages/s, closing with 1008", client.id, self.client_rate,
                     extra={"client": client.id, "code": CLOSE_POLICY_VIOLATION,
                            "reason": "message rate limit"})
            self._close_client(client, CLOSE_POLICY_VIOLATION, "message rate limit")
            return
        try:
            if not message.binary and message.data[:1] == b"{" and self._control(client, state, message.data):
                return
            topic, data = self._upstream_parts(state, message)
        except (RecursionError, UnicodeError) as exc:
            # JSON nested past the parser's depth, or a topic with lone surrogates (\ud800)
            self.stats.protocol_errors += 1
            reason = "JSON nested too deeply" if isinstance(exc, RecursionError) else "topic is not UTF-8"
            log.info("client %s: %s, closing with 1008", client.id, reason)
            self._close_client(client, CLOSE_POLICY_VIOLATION, reason)
            return
        if not client.rights.may_write(topic):
            self.stats.writes_refused += 1
            client.send(json.dumps({"error": "topic not allowed for writing",
                                    "topic": topic.decode("utf-8", "replace")}, separators=(",", ":")))
            return
        if state.client_id is None:
            state.client_id = f"{os.getpid()}.{client.id}".encode()
        self._forward(topic, state.client_id, data)
        super()._on_message(client, message)

    def _upstream_parts(self, state: _ClientState, message: Message) -> Tuple[bytes, bytes]:
        """The topic and payload a client message goes upstream with: ``{"topic", "data"}``
        from a ``json``-envelope client, else ``upstream_topic`` and the message as it is."""
        if state.envelope == "json" and not message.binary:
            try:
                doc = json.loads(message.data)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("topic"), str) and "data" in doc:
                value = doc["data"]
                data = value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode()
                return doc["topic"].encode("utf-8"), data
        return self.upstream_topic, message.data

    def _on_ping(self, client: Client) -> None:
        """A ping counts against ``client_rate`` like a message: a ping flood is a flood."""
        state = self._states.get(client)
        if state is not None and not self._rate_ok(state):
            log.info("client %s: over %s messages/s (pings), closing with 1008", client.id,
                     self.client_rate, extra={"client": client.id, "code": CLOSE_POLICY_VIOLATION,
                                              "reason": "message rate limit"})
            self._close_client(client, CLOSE_POLICY_VIOLATION, "message rate limit")

    def _rate_ok(self, state: _ClientState) -> bool:
        """The flood limit: a token bucket of ``client_rate`` per second, one second deep."""
        if not self.client_rate:
            return True
        now = time.monotonic()
        state.tokens = min(self.client_rate, state.tokens + (now - state.tokens_at) * self.client_rate)
        state.tokens_at = now
        if state.tokens < 1:
            self.stats.rate_limited += 1
            return False
        state.tokens -= 1
        return True

    def _forward(self, topic: bytes, client_id: bytes, data: bytes) -> bool:
        """A client message upstream as ``[topic, client id, payload]``; False if not sent."""
        if self._out is None:
            return False
        try:
            self._out.send_multipart([topic, client_id, data], zmq.NOBLOCK)
        except zmq.Again:
            self.stats.upstream_drops += 1  # the upstream socket is full (or PUSH has no peer)
            return False
        self.stats.upstream_messages += 1
        return True

    def _control(self, client: Client, state: _ClientState, data: bytes) -> bool:
        """``{"subscribe": "p"}`` / ``{"unsubscribe": "p"}``: change topics, answer with an ack."""
        try:
            doc = json.loads(data)
        except ValueError:
            return False
        if not isinstance(doc, dict) or len(doc) != 1:
            return False
        action, prefix = next(iter(doc.items()))
        if action not in ("subscribe", "unsubscribe") or not isinstance(prefix, str):
            return False
        everything = not state.chose_topics and state.prefixes == client.rights.everything()
        try:
            prefixes = self.changed_topics(client.rights, state.prefixes, everything, action, [prefix])
        except TopicRefused as exc:
            client.send(json.dumps({"error": exc.reason, "topic": prefix}, separators=(",", ":")))
            return True
        self._set_prefixes(client, state, prefixes)
        shown = [p.decode("utf-8", "replace") for p in state.prefixes]
        client.send(json.dumps({"ack": action, "topic": prefix, "topics": shown},
                               separators=(",", ":")))
        return True

    def _set_prefixes(self, client: Client, state: _ClientState, prefixes: List[bytes]) -> None:
        self._send_batch()  # what is pending was routed under the old topics: send it first
        old = state.prefixes
        for prefix in prefixes:
            if prefix not in old:
                self._want(prefix)
        state.prefixes = prefixes
        if client in self._behind or client in self._refill:
            pass  # waiting to resume (upstream_ids) or resuming: routed with these prefixes after
        elif prefixes:
            self.router.add(client, prefixes, state.envelope, state.wire)
        else:
            self.router.remove(client)
        for prefix in old:
            if prefix not in prefixes:
                self._release(prefix)

    # -- HTTP: the page, static files, Server-Sent Events, long-polling ----------------

    def handle_http(self, client: Client, request: Request) -> Optional[bytes]:
        """``GET /`` the live page, ``/zmqws.js`` the client, ``/events`` SSE, ``/poll``
        long-polling, other files from the static folders; else 404 (405 for other methods)."""
        if self.sio is not None and self.sio.matches(request):
            return self.sio.handle_http(client, request)
        cors = self._cors_headers(request)
        if request.method == "OPTIONS" and cors:
            return http_response(204, headers=cors + [("Access-Control-Allow-Methods", "GET, HEAD"),
                                                      ("Access-Control-Allow-Headers", "Last-Event-ID"),
                                                      ("Access-Control-Max-Age", "600")])
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed", [("Allow", "GET, HEAD")])
        path = request.path
        if path == "/healthz":
            return http_response(200, b"ok\n", keep_alive=False)
        if path == "/readyz":
            return self._readyz()
        if path == "/metrics" and self.metrics:
            self._check_metrics_access(request)
            return http_response(200, prometheus.render(self, self.stats_dir), prometheus.CONTENT_TYPE)
        if path == "/events":
            self._start_sse(client, request, cors)
            return None
        if path == "/poll":
            self._start_poll(client, request, cors)
            return None
        if path in ("/", "/index.html") and not self.page:
            raise HTTPError(404, "not found")
        relative = self._files.relative("/" + self.page if path == "/" else path)
        if relative is None:
            raise HTTPError(404, "not found")
        found = self._files.get(relative)
        if found is not None:
            self.http_reply(client, self._file_response(request, found, cors), keep_alive=True)
            return None
        self.reply_later(client)  # read off the loop, then _file_loaded
        self._files.load(relative, lambda found: self._file_loaded(client, request, found, cors))
        return None

    def _file_loaded(self, client: Client, request: Request, found: Optional[StaticFile],
                     cors: List[Tuple[str, str]]) -> None:
        if found is None:
            self.stats.http_errors += 1
            self.reply_now(client, error_response(HTTPError(404, "not found")))
        else:
            self.reply_now(client, self._file_response(request, found, cors), keep_alive=True)

    @staticmethod
    def _file_response(request: Request, found: StaticFile, cors: List[Tuple[str, str]]) -> bytes:
        return http_response(200, found.body, found.content_type, [("Cache-Control", "no-cache")] + cors,
                             keep_alive=request.keep_alive)

    def body_limit(self, request: Request) -> int:
        """Only Engine.IO's POST carries a body (packets, up to ``max_message_size``)."""
        if request.method == "POST" and self.sio is not None and self.sio.matches(request):
            return self.max_message_size
        return super().body_limit(request)

    def _check_metrics_access(self, request: Request) -> None:
        """``/metrics`` needs ``metrics_token`` if set, else what clients need (401/403)."""
        if self._metrics_auth is not None:
            try:
                self._metrics_auth(request)
            except HTTPError:
                self.stats.forbidden += 1
                raise

    def _readyz(self) -> bytes:
        """``GET /readyz``: 200 once the SUB endpoints are connected (every one; any one with
        ``ready_any``; a gateway without any is ready), else 503 naming those that are not."""
        status = self.upstream_status()
        down = [endpoint for endpoint, connected in status.items() if not connected]
        if not down or (self.ready_any and len(down) < len(status)):
            return http_response(200, b"ready\n", keep_alive=False)
        body = "not ready: not connected: " + " ".join(down) + "\n"
        return http_response(503, body.encode("utf-8"), headers=[("Retry-After", "1")],
                             keep_alive=False)

    def _cors_headers(self, request: Request) -> List[Tuple[str, str]]:
        """``Access-Control-Allow-Origin`` only for an ``Origin`` that ``cors_origins`` names."""
        origin = request.header("origin")
        if not origin or not self.cors_origins:
            return []
        if "*" in self.cors_origins:
            return [("Access-Control-Allow-Origin", "*")]
        if origin in self.cors_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    def _start_sse(self, client: Client, request: Request, cors: List[Tuple[str, str]]) -> None:
        """``GET /events``: the response becomes an endless event stream (phase STREAM)."""
        self.check_access(client, request)
        self._check_query(client, request)
        if request.method == "HEAD":  # the head says keep-alive: honour it (no body follows)
            self.http_reply(client, sse.response_head(cors), keep_alive=True)
            return
        client.session.queue(sse.response_head(cors))
        client.phase = STREAM
        client.transport = SSE
        client.deadline = 0.0
        client.ping_sent_at = time.monotonic()  # the last heartbeat
        self.stats.sse_connections += 1
        self._join(client, request.query_value("format", self.envelope), SSE)
        self._queued(client)

    def _stream_tick(self, client: Client, now: float) -> None:
        """A comment line every ``sse_heartbeat`` seconds keeps idle proxies from closing streams."""
        if self.sse_heartbeat and now - client.ping_sent_at >= self.sse_heartbeat:
            client.ping_sent_at = now
            if not client.session.out:
                client.session.queue(sse.HEARTBEAT)
                self._queued(client)

    def _start_poll(self, client: Client, request: Request, cors: List[Tuple[str, str]]) -> None:
        """``GET /poll?since=ID``: the messages after ID at once, or held until one comes."""
        self.check_access(client, request)
        self._check_query(client, request)
        client.data["cors"] = cors
        since = self._since(request)
        prefixes_state = _ClientState(self._prefixes(client, request), "json", POLL, 0, 0.0, b"")
        # Every poll wants its topics upstream, as a joining client does, even one answered at
        # once from the history: the linger restarts, so the subscription lasts as long as the
        # client keeps polling, and the resume below sees a subscription that (re)starts now
        # and reports the ids the gateway may have been blind for.
        for prefix in prefixes_state.prefixes:
            self._want(prefix)
        behind = since is not None and self.upstream_ids and since > self._last_id
        try:
            if since is not None and not behind:
                notice, missed = self._missed(prefixes_state, since)
                if notice is not None or missed:
                    self._poll_response(client, ([notice] if notice else []) + missed)
                    return
            # Nothing yet: hold the request, routed like any client, until a message or the timeout.
            self.stats.polls_held += 1
            client.parked = True
            client.transport = POLL
            client.deadline = time.monotonic() + self.poll_timeout
            self._join(client, "json", POLL, since if behind else None)
        finally:
            for prefix in prefixes_state.prefixes:
                self._release(prefix)

    def _answer_poll(self, client: Client, batch: List[Stored]) -> None:
        self._forget(client)
        self._poll_response(client, batch)

    def _poll_response(self, client: Client, items: List[Any]) -> None:
        """A JSON array of messages (a gap notice first), bounded in count and bytes.

        ``X-Zmqws-Last-Id`` carries the last id the gateway has given, so that a
        client whose first poll comes back empty can ask ``since`` it next time."""
        docs: List[str] = []
        size = 2
        for item in items:
            doc = json.dumps(item if isinstance(item, dict) else self._json_doc(item),
                             separators=(",", ":"))
            if docs and (len(docs) >= self.poll_max_messages or size + len(doc) > self.poll_max_bytes):
                break  # the rest on the next poll, which asks for what follows the last id
            docs.append(doc)
            size += len(doc) + 1
        delivered = sum(1 for item in items[:len(docs)] if not isinstance(item, dict))
        self.stats.messages_out += delivered
        body = ("[" + ",".join(docs) + "]").encode("utf-8")
        self.stats.bytes_out += len(body)
        client.transport = None
        cors = client.data.get("cors", [])
        headers = [("Cache-Control", "no-cache"), ("X-Zmqws-Last-Id", str(self._last_id))] + cors
        if cors:
            headers.append(("Access-Control-Expose-Headers", "X-Zmqws-Last-Id"))
        self.http_reply(client, http_response(200, body, "application/json", headers,
                                              keep_alive=client.request.keep_alive),
                        keep_alive=True)

    def _deadline(self, client: Client) -> None:
        if client.parked and "eio_poll" in client.data:
            self.sio.poll_deadline(client)
        elif client.parked:
            self._answer_poll(client, [])  # the poll timed out: an empty array, the client asks again
        else:
            super()._deadline(client)
