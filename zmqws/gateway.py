"""The gateway: wiring.  It builds the rooms from one config and keeps the public API.

::

    ZeroMQ SUB ──► upstream.py ──► hub.py ──► wire.py ──► output.py (output queues, sendmsg)
                  (drain, ids)    (routes,     (one encoding    (one write per client
                                   history)     per wire kind)   per loop turn)

* :class:`~zmqws.upstream.UpstreamSockets`: the ZeroMQ sockets;
* :class:`~zmqws.rpc.Rpc`: the two-way channel (``rpc_endpoint``): requests,
  messages and client events to the application, its replies, sends and closes;
* :class:`~zmqws.hub.Hub`: ids, history, routes, upstream subscription counts,
  rights and topic caps, resume and gap notices, rates;
* the transports (:mod:`zmqws.transports`): WebSocket, SSE, long-poll,
  Socket.IO, each a thin adapter between its clients and the hub;
* :class:`~zmqws.httpapp.HttpApp`: files, ``/metrics``, ``/healthz``, ``/readyz``;
* :class:`GatewayApp`: what the server asks of the application, handed to the
  transport of each client.

:class:`Gateway` is a :class:`~zmqws.server.WebSocketServer` (it has its
lifecycle, ``port``, ``stats``...) whose app is a :class:`GatewayApp`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional, Sequence, Tuple, Union

import zmq

from . import metrics as prometheus
from .app import App, MessageHook
from .config import ENVELOPES, GatewayConfig
from .httpapp import HttpApp
from .hub import Hub, PacedFlush
from .peer import Client
from .rpc import Rpc
from .server import WebSocketServer
from .transports import Context, client_id_of
from .transports.http import HttpRpcTransport
from .transports.poll import PollTransport
from .transports.engineio import EngineIOTransport
from .transports.socketio import SocketIOLayer
from .transports.sse import SseTransport
from .transports.websocket import WebSocketTransport
from .upstream import EndpointError, UpstreamSockets

__all__ = ["Gateway", "GatewayApp", "ENVELOPES", "EndpointError"]

log = logging.getLogger("zmqws")

if TYPE_CHECKING:  # pragma: no cover
    from .protocol.connection import Message
    from .protocol.handshake import Request


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
      ``sio_ping_interval``/``sio_ping_timeout``: Engine.IO heartbeats;
      ``sio_namespaces``: namespaces served besides ``/`` (topics under ``NAME/``);
      ``sio_recovery``: connection state recovery (a ``pid``, offsets after events).
    * ``ready_any``: ``GET /readyz`` answers 200 once any SUB endpoint is
      connected (default: once every one is); ``upstream_log_interval``:
      seconds between two "still not connected" lines of one endpoint;
      ``upstream_status_file``: the upstream endpoints' state as a forwarder
      in front of this gateway sees it (``{endpoint: connected}`` in JSON, kept
      by :class:`zmqws.proxy.Sequencer`; set by ``--workers``).
    * ``rpc_endpoint``: the two-way channel (:mod:`zmqws.rpc`, docs/two-way.md): a
      DEALER (connects, or binds with ``bind=True``) to the application's ROUTER:
      client requests (``{"rpc": ID, ...}`` over WebSocket, ``POST /rpc``),
      messages (without ``push_endpoint``/``pub_endpoint``), connect and
      disconnect events; the application's replies, sends and closes.
      ``rpc_max_inflight`` requests per client at most, ``rpc_timeout`` seconds
      each; ``upstream_hwm`` is the DEALER's send high-water mark too.
    * ``rcvhwm``: the SUB socket's receive high-water mark (messages).
    * ``drain_budget``: most messages taken from ZeroMQ per loop turn.
    * ``zmq_context``: a context to use (default: a new one, terminated on stop).
    * every :class:`WebSocketServer` option (limits, timeouts, hooks).
    * ``config``: a whole :class:`~zmqws.config.GatewayConfig` instead of the
      options (what the command line builds; see :meth:`from_config`).

    ``run()`` blocks; ``start()``/``stop()`` run it on its own thread;
    ``publish()`` is thread-safe.  Counters: ``clients`` and ``stats``.
    """

    def __init__(self, sub_endpoint: Union[str, Sequence[str], None] = None, port: int = 8080, *,
                 config: Optional[GatewayConfig] = None, zmq_context: Optional[zmq.Context[Any]] = None,
                 on_connect: Optional[Callable[[Client], Any]] = None, on_message: Optional[MessageHook] = None,
                 on_disconnect: Optional[Callable[[Client], Any]] = None, **options: Any) -> None:
        if config is None:
            config = GatewayConfig.of(sub_endpoint, port, **options)
        elif options or sub_endpoint is not None:
            raise TypeError("give a config or options, not both")
        self.config = config
        app = GatewayApp(self, on_connect, on_message, on_disconnect)
        super().__init__(app=app, config=config.server)
        self.upstream = UpstreamSockets(config.upstream, self.stats, zmq_context)
        self.hub = Hub(config.hub, self.stats, self.output, self.upstream.subscribe, self.upstream.unsubscribe,
                       self._call_later, behind_timeout=config.server.handshake_timeout)
        self.upstream.hub = self.hub
        self.rpc = (Rpc(config.upstream, self.stats, self.upstream.send_rpc, self._call_later)
                    if config.upstream.rpc_endpoint else None)
        self.upstream.rpc = self.rpc
        context = Context(self, self.hub, self.upstream, config.transports, config.http.cors_origins, self.rpc)
        self.websocket = WebSocketTransport(context)
        self.sse = SseTransport(context)
        self.poll = PollTransport(context)
        self.http_rpc = HttpRpcTransport(context) if self.rpc is not None else None
        self.socketio = SocketIOLayer(context) if config.transports.socketio else None
        self.http = HttpApp(self, config.http, config.server.authenticate, config.upstream.ready_any,
                            {"/events": self.sse.start, "/poll": self.poll.start})
        status_file = config.upstream.upstream_status_file
        self.snapshots = (prometheus.WorkerSnapshots(config.http.stats_dir, status_file, self.call_soon_threadsafe)
                          if config.http.stats_dir or status_file else None)
        self._published: Deque[Tuple[Optional[bytes], bytes]] = deque()

    @classmethod
    def from_config(cls, config: GatewayConfig, **objects: Any) -> "Gateway":
        """A gateway built from a :class:`~zmqws.config.GatewayConfig` (the command line's);
        ``objects``: what is not configuration (``zmq_context``, hooks)."""
        return cls(config=config, **objects)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        assert self.loop is not None
        return self.loop.call_later(delay, callback)

    @property
    def sio(self) -> Optional[EngineIOTransport]:
        """The Engine.IO sessions (None without Socket.IO)."""
        return self.socketio.engine if self.socketio is not None else None

    # -- public API -------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The id of the last message taken in (ids only grow)."""
        return self.hub.last_id

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

    def _take_published(self) -> None:
        published = self._published
        while published:
            topic, payload = published.popleft()
            self.hub.take(topic, payload)

    def subscriptions(self):  # type: ignore[no-untyped-def]
        """The prefixes the SUB socket is subscribed to now (loop thread, or a snapshot)."""
        return sorted(self.hub.upstream.subscribed)

    def upstream_status(self) -> Dict[str, bool]:
        """Each SUB endpoint: connected now (see :meth:`zmqws.upstream.UpstreamSockets.status`)."""
        forwarder = self.snapshots.forwarder_status if self.snapshots is not None else None
        return self.upstream.status(forwarder)

    def gauges(self) -> Tuple[Dict[str, int], int]:
        """Clients by transport and the bytes queued for them (loop thread, for ``/metrics``)."""
        by_transport: Dict[str, int] = {"websocket": 0, "sse": 0, "poll": 0, "http": 0}
        queued = 0
        sio = self.sio
        for client in self.connection_list():
            queued += client.session.out_bytes
            if sio is not None and sio.holds_poll(client):
                continue  # a held Socket.IO poll: its session counts once, under "socketio-polling"
            transport = client.transport or "http"
            by_transport[transport] = by_transport.get(transport, 0) + 1
        if sio is not None:
            by_transport.update(sio.counts())
        return by_transport, queued


class GatewayApp(App):
    """What the server asks of the gateway, handed to the hub and the transport of each client."""

    def __init__(self, gateway: Gateway, on_connect: Optional[Callable[[Client], Any]],
                 on_message: Optional[MessageHook], on_disconnect: Optional[Callable[[Client], Any]]) -> None:
        super().__init__(on_connect, on_message, on_disconnect)
        self.gateway = gateway

    def _sio_for(self, request: Optional["Request"]) -> Optional[EngineIOTransport]:
        """The Engine.IO sessions when ``request`` is theirs (under ``sio_path``)."""
        sio = self.gateway.sio
        return sio if sio is not None and request is not None and sio.matches(request) else None

    def setup(self) -> None:
        gateway = self.gateway
        loop = gateway.loop
        assert loop is not None
        gateway.upstream.open(loop)
        hub = gateway.hub
        loop.after_turn.insert(0, PacedFlush(hub, loop.call_later) if hub.config.flush_interval_ms else hub.flush)
        if gateway.config.hub.subscribe_all:
            gateway.hub.want(b"")
        if gateway.snapshots is not None:
            loop.call_later(0, self._snapshot)
        loop.call_soon_threadsafe(gateway._take_published)

    def _snapshot(self) -> None:
        """With workers: this process's counters for the others' /metrics, once a second."""
        gateway = self.gateway
        assert gateway.snapshots is not None and gateway.loop is not None
        gateway.snapshots.publish(prometheus.snapshot(gateway))
        if not gateway.stopping:
            gateway.loop.call_later(1.0, self._snapshot)

    def teardown(self) -> None:
        self.gateway.upstream.close()
        self.gateway.http.close()
        if self.gateway.snapshots is not None:
            self.gateway.snapshots.close()

    def _rpc_for(self, request: "Request") -> Optional[HttpRpcTransport]:
        """``POST /rpc`` when ``request`` is for it (with ``rpc_endpoint``)."""
        http_rpc = self.gateway.http_rpc
        return http_rpc if http_rpc is not None and request.path == http_rpc.path else None

    def handle_http(self, client: Client, request: "Request") -> Optional[bytes]:
        sio = self._sio_for(request)
        if sio is not None:
            sio.handle_http(client, request)
            return None
        http_rpc = self._rpc_for(request)
        if http_rpc is not None:
            return http_rpc.handle(client, request)
        return self.gateway.http.handle(client, request)

    def body_limit(self, request: "Request") -> int:
        """Only Engine.IO's POST (packets) and ``POST /rpc`` carry a body, up to ``max_message_size``."""
        if request.method == "POST" and (self._sio_for(request) is not None or self._rpc_for(request) is not None):
            return self.gateway.max_message_size
        return 0

    def accept_websocket(self, client: Client, request: "Request") -> None:
        sio = self._sio_for(request)
        if sio is not None:
            sio.check_upgrade(request)
        else:
            self.gateway.websocket.accept(client, request)

    def on_open(self, client: Client) -> None:
        sio = self._sio_for(client.request)
        if sio is not None:
            sio.on_open(client)
        else:
            self.gateway.websocket.on_open(client)
        super().on_open(client)

    def on_message(self, client: Client, message: "Message") -> None:
        sio = self.gateway.sio
        if sio is not None and client.transport == sio.name:
            sio.on_message(client, message.data if message.binary else message.data.decode("utf-8"))
        elif self.gateway.websocket.on_message(client, message):
            super().on_message(client, message)

    def on_ping(self, client: Client) -> None:
        self.gateway.websocket.on_ping(client)

    def on_stop(self) -> None:
        self.gateway.hub.stopping = True

    def on_closing(self, client: Client) -> None:
        self._gone(client)

    def on_close(self, client: Client) -> None:
        self._gone(client)
        rpc = self.gateway.rpc
        if rpc is not None:
            ws = client.ws
            reason = "closed" if ws is None else f"{ws.close_code or 1006} {ws.close_reason}".rstrip()
            rpc.disconnected(client_id_of(client), reason)
        super().on_close(client)

    def _gone(self, client: Client) -> None:
        """A client stops receiving: it leaves the hub (and its transport's bookkeeping)."""
        gateway = self.gateway
        if gateway.sio is not None:
            gateway.sio.gone(client)
        gateway.poll.gone(client)
        gateway.hub.leave(client)

    def on_deadline(self, client: Client) -> None:
        sio = self.gateway.sio
        if sio is not None and sio.holds_poll(client):
            sio.poll_deadline(client)
        elif client.transport == "poll":
            self.gateway.poll.answer(client, [])  # the poll timed out: an empty array, the client asks again
        else:
            self.gateway.abort(client)

    def on_stream_tick(self, client: Client, now: float) -> None:
        self.gateway.sse.tick(client, now)

    def on_refill(self, client: Client) -> None:
        self.gateway.hub.refill(client)
