"""A WebSocket server (RFC 6455) on one poll loop, usable with or without ZeroMQ.

:class:`WebSocketServer` is the server's face: it is built from a
:class:`~zmqws.config.ServerConfig`, runs the loop on its thread (start, run,
graceful stop: 1001 Going Away to every client, RFC 6455 §7.4.1), keeps the
housekeeping timer (handshake and close deadlines, keepalive pings, §5.5.2)
and offers the public API.  The work is done by its parts:

* :mod:`zmqws.listener`: the listening socket, accepts, connection limits,
  the ``Host`` check;
* :mod:`zmqws.connections`: the connections' table, events, input and end
  (the closing handshake, §7);
* :mod:`zmqws.http_phase`: HTTP requests and answers (RFC 9112 §9.3), the
  opening handshake (§4.2);
* :mod:`zmqws.output`: the output queues, one ``sendmsg`` per client per turn,
  the slow-consumer policy.

It is the "standalone poll-based server": give it hooks and run it::

    server = WebSocketServer(9001, on_message=lambda client, data: client.send(data))
    server.run()

Hooks run on the loop thread and must not block.  The :class:`Gateway
<zmqws.gateway.Gateway>` subclass adds the ZeroMQ side and the fan-out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from .app import App, MessageHook
from .config import ServerConfig, server_config
from .connections import Connections
from .listener import Listener
from .loop import Loop, Timer
from .peer import GONE, HTTP, STREAM, TLS, WEBSOCKET, Client
from .protocol.connection import OPEN
from .protocol.frames import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, OP_BINARY, OP_TEXT, encode_frame
from .protocol.handshake import Request
from .stats import Stats

__all__ = ["WebSocketServer"]

log = logging.getLogger("zmqws")

HOUSEKEEPING_SLICES = 10  # a housekeeping round (every client once) is spread over this many ticks


class WebSocketServer:
    """A non-blocking WebSocket server on one ``zmq.Poller`` loop thread.

    Parameters (all keyword-only but ``port``):

    * ``port``, ``host``: where to listen (port 0 picks a free port; read
      ``server.port`` after :meth:`start`).
    * ``subprotocols``: the subprotocols the server speaks, preferred first.
    * ``max_message_size``: largest message accepted from a client (1009 beyond).
    * ``max_fragments``: most frames in one client message (1009 beyond; 0 = no limit).
    * ``max_header_size``: largest request head (431 beyond).
    * ``max_queue``: bytes queued for one client before the slow-consumer
      policy applies (``slow_client="close"``: close with 1008 and count it;
      ``"drop"``: drop messages for that client and count them).
    * ``ping_interval``, ``ping_timeout``: a ping after that many idle seconds;
      no answer within ``ping_timeout`` → close 1011.  0 disables.
    * ``handshake_timeout``: seconds to complete the HTTP request.
    * ``close_timeout``: seconds to wait for the peer's close frame / FIN.
    * ``deflate``: offer permessage-deflate (RFC 7692) to clients that ask;
      messages shorter than ``deflate_threshold`` go uncompressed;
      ``deflate_level``, ``deflate_mem_level`` and ``deflate_max_window_bits``
      tune zlib.  Outgoing messages are compressed without context takeover,
      so the fan-out compresses a message once for all clients.
    * ``reuse_port``: set ``SO_REUSEPORT`` so that several processes share the port.
    * ``ssl_context``: serve ``wss://``/``https://``; the TLS handshake runs
      non-blocking in the loop (see :func:`zmqws.tls.server_context`).
    * ``max_connections``: beyond it new connections get 503 and are closed;
      ``max_connections_per_address``: the same per client IP address (0 = no limit).
      Sessions that outlive their TCP connection (Engine.IO polling) count as
      connections too (:meth:`take_slot`).
    * ``max_requests_per_connection``: HTTP requests answered on one
      keep-alive connection; the last one's response says ``Connection:
      close`` (RFC 9112 §9.6).  Pipelined requests are read no further while
      the connection's responses fill more than ``max_queue`` bytes.
    * ``idle_timeout``: close (1000) a WebSocket client silent this long (0 = never).
    * ``allow_origins``: if given, a browser request (it has ``Origin``) from
      any other origin is refused with 403.
    * ``allow_hosts``: the ``Host`` values accepted (``NAME`` with any port,
      or ``NAME:PORT``); others get 403 on every request.  Listening on a
      loopback address, ``localhost``, ``127.0.0.1`` and ``[::1]`` are
      accepted too, and nothing else by default: a page of another site whose
      name was rebound to 127.0.0.1 (DNS rebinding) sends its own name.  (Any
      port: a browser sends another port only to another port, which a local
      proxy may forward here.)  Elsewhere no check by default.
    * ``authenticate(request)``: called for every upgrade and streaming request;
      return None (allowed, every topic), the topic prefixes the client may
      read and write, a :class:`~zmqws.rights.Rights` (read and write prefixes
      apart), or raise ``HTTPError(401 or 403, reason)``.
    * ``on_connect(client)``, ``on_message(client, data)``,
      ``on_disconnect(client)``: hooks, run on the loop thread.
    """

    def __init__(self, port: int = 8080, *, app: Optional[App] = None,
                 on_connect: Optional[Callable[[Client], Any]] = None,
                 on_message: Optional[MessageHook] = None,
                 on_disconnect: Optional[Callable[[Client], Any]] = None,
                 config: Optional[ServerConfig] = None, **options: Any) -> None:
        if config is None:
            config = server_config(dict(options, port=port))
        self.server_config = config
        self.app = app if app is not None else App(on_connect, on_message, on_disconnect)
        self.app.attach(self)
        # The options, as attributes (read-only: the parts took their copies).
        self.host, self.backlog, self.reuse_port = config.host, config.backlog, config.reuse_port
        self.ssl_context, self.authenticate = config.ssl_context, config.authenticate
        self.subprotocols = list(config.subprotocols)
        self.max_message_size, self.max_fragments = config.max_message_size, config.max_fragments
        self.max_header_size = config.max_header_size
        self.max_queue, self.slow_client = config.max_queue, config.slow_client
        self.ping_interval, self.ping_timeout = config.ping_interval, config.ping_timeout
        self.handshake_timeout, self.close_timeout = config.handshake_timeout, config.close_timeout
        self.idle_timeout = config.idle_timeout
        self.max_connections_per_address = config.max_connections_per_address
        self.max_requests_per_connection = config.max_requests_per_connection
        self.stats = Stats()
        self.stopping = False
        self.loop: Optional[Loop] = None
        self.listener = Listener(self, config, self.stats)
        self.connections = Connections(self, config, self.stats, self.listener)
        self.output = self.connections.output
        self.http_phase = self.connections.http
        self.deflate = self.http_phase.deflate
        self.allow_origins = self.http_phase.allow_origins
        self.allow_hosts = self.listener.allow_hosts
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()
        self._started = False
        self._housekeeping_timer: Optional[Timer] = None
        self._round: List[Client] = []  # housekeeping: the clients this round has still to see
        self._round_slice = 1

    # -- lifecycle ----------------------------------------------------------------

    @property
    def port(self) -> Optional[int]:
        """The port listened on (known after :meth:`start`)."""
        return self.listener.port

    @property
    def max_connections(self) -> int:
        """Connections at most (lowered at start to fit the descriptor limit)."""
        return self.listener.max_connections

    def start(self) -> "WebSocketServer":
        """Bind, then run the loop on its own thread; returns once the port is listening."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        self.loop = loop = Loop()
        self.connections.loop = self.output.loop = loop
        try:
            self.listener.open(loop, self.connections.admit)
            self.app.setup()
            self.listener.fit_fd_limit()  # after the app's sockets: they count as descriptors in use
        except BaseException:
            self.listener.close()  # do not leak the bound port
            self._teardown()
            raise
        loop.after_turn.append(self.output.flush_dirty)
        self._schedule_housekeeping()
        self._thread = threading.Thread(target=self._run_loop, name="zmqws-loop", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Start and block until :meth:`stop` (from another thread or a hook) or Ctrl-C."""
        if not self._started:
            self.start()
        try:
            while not self._stopped.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Graceful stop: refuse new connections, send 1001 to every client, wait up to
        ``timeout`` (default ``close_timeout``) for them to close, then close every socket
        and join the loop thread.  Safe to call more than once and from any thread."""
        if self.loop is None or self._thread is None:
            return
        wait = self.close_timeout if timeout is None else timeout
        if not self._stopped.is_set():
            self.loop.call_soon_threadsafe(lambda: self._begin_stop(wait))
        if self.loop.in_loop_thread():
            return  # called from a hook: the loop ends by itself
        self._thread.join()
        self._thread = None

    def __enter__(self) -> "WebSocketServer":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- public API -------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Open WebSocket connections."""
        return len(self.connections.websockets)

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the loop thread (from any thread)."""
        assert self.loop is not None, "server not started"
        self.loop.call_soon_threadsafe(callback)

    def broadcast(self, data: Union[str, bytes]) -> None:
        """Send one message to every open WebSocket client; thread-safe.

        The frame is encoded once and the same bytes are queued on every client.
        """
        if isinstance(data, str):
            frame = encode_frame(OP_TEXT, data.encode("utf-8"))
        else:
            frame = encode_frame(OP_BINARY, bytes(data))
        self.call_soon_threadsafe(lambda: self.fanout(frame, self.connections.websockets, 1))

    def connection_list(self) -> List[Client]:
        """Every connection, whatever its phase (loop thread)."""
        return list(self.connections.by_fd.values())

    def client_list(self) -> List[Client]:
        """The open WebSocket clients (loop thread)."""
        return list(self.connections.websockets)

    def call_hook(self, client: Client, hook: Callable[..., Any], *args: Any) -> None:
        """Run an application hook; an exception in it closes that client (1011), nobody else."""
        try:
            hook(*args)
        except Exception:
            log.exception("error in hook %r for client %s", hook, client.id)
            self.close_client(client, CLOSE_INTERNAL_ERROR, "internal error")

    # The connections' methods the app, the hub and the transports call (loop thread).

    def check_access(self, client: Client, request: Request) -> None:
        """``allow_origins`` and ``authenticate`` (:meth:`zmqws.http_phase.HttpPhase.check_access`)."""
        self.http_phase.check_access(client, request)

    def take_slot(self, host: Any) -> bool:
        """Count a session as a connection (:meth:`zmqws.listener.Listener.take_slot`)."""
        return self.listener.take_slot(host)

    def release_slot(self, host: Any) -> None:
        """Give back a slot of :meth:`take_slot`."""
        self.listener.release_slot(host)

    def http_reply(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """Queue a complete HTTP response (:meth:`zmqws.http_phase.HttpPhase.http_reply`)."""
        self.http_phase.http_reply(client, response, keep_alive)

    def reply_later(self, client: Client) -> None:
        """The response comes later (:meth:`zmqws.http_phase.HttpPhase.reply_later`)."""
        self.http_phase.reply_later(client)

    def reply_now(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """The response :meth:`reply_later` announced (:meth:`zmqws.http_phase.HttpPhase.reply_now`)."""
        self.http_phase.reply_now(client, response, keep_alive)

    def start_stream(self, client: Client, head: bytes, transport: str) -> None:
        """An endless response (:meth:`zmqws.http_phase.HttpPhase.start_stream`)."""
        self.http_phase.start_stream(client, head, transport)

    def park(self, client: Client, deadline: float, transport: str) -> None:
        """Hold the request until :meth:`answer` (:meth:`zmqws.http_phase.HttpPhase.park`)."""
        self.http_phase.park(client, deadline, transport)

    def answer(self, client: Client, status: int, body: bytes, content_type: str,
               headers: Sequence[Tuple[str, str]]) -> None:
        """The response to a held request (:meth:`zmqws.http_phase.HttpPhase.answer`)."""
        self.http_phase.answer(client, status, body, content_type, headers)

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Close frame, then wait for the peer's (:meth:`zmqws.connections.Connections.close_client`)."""
        self.connections.close_client(client, code, reason)

    def abort(self, client: Client) -> None:
        """Drop the TCP connection now and forget the client."""
        self.connections.abort(client)

    # -- the output queues, as the hub sees them (zmqws.hub.Output; see zmqws.output) ---

    @property
    def drop_slow(self) -> bool:
        """The slow-consumer policy drops messages (else it closes the client)."""
        return self.output.drop_slow

    def fanout(self, frames: bytes, clients: Iterable[Client], count: int) -> Optional[List[Client]]:
        """Queue the same ``frames`` on every client (:meth:`zmqws.output.OutputQueues.fanout`)."""
        return self.output.fanout(frames, clients, count)

    def queue(self, client: Client, data: bytes) -> None:
        """Queue encoded bytes on a client; flushed at the end of the turn (loop thread)."""
        self.output.queue(client, data)

    def queued(self, client: Client) -> None:
        """Output was queued on ``client``: write it at the end of the turn."""
        self.output.queued(client)

    def queued_bytes(self, client: Client) -> int:
        """Bytes queued on ``client`` and not written yet."""
        return self.output.queued_bytes(client)

    def write_now(self, client: Client) -> None:
        """Write a client's queue now, not with what the rest of the turn queues (loop thread)."""
        self.output.write_now(client)

    def refill_when_drained(self, client: Client, wanted: bool) -> None:
        """Call ``app.on_refill(client)`` once its queue drains below half of ``max_queue``."""
        self.output.refill_when_drained(client, wanted)

    def close_slow(self, client: Client) -> None:
        """Close a client as a slow consumer (1008), whatever the policy."""
        self.output.close_slow(client)

    # -- timers -------------------------------------------------------------------

    def _schedule_housekeeping(self) -> None:
        assert self.loop is not None
        period = 1.0
        if self.ping_interval:
            period = min(period, self.ping_interval / 2)
        self._housekeeping_timer = self.loop.call_later(period / HOUSEKEEPING_SLICES, self._housekeeping)

    def _housekeeping(self) -> None:
        """Every client once a second: handshake and close deadlines, keepalive pings (RFC 6455
        §5.5.2) and their timeout, idle clients, streams' heartbeats.  A round is spread over
        :data:`HOUSEKEEPING_SLICES` ticks, each taking its share of the clients, so that
        10 000 clients cost ten short pauses of the loop, not one long one."""
        now = time.monotonic()
        ping_interval = self.ping_interval
        ping_timeout = self.ping_timeout
        if not self._round:  # a new round: the clients of now, in slices
            self._round = list(self.connections.by_fd.values())
            self._round_slice = max(1, -(-len(self._round) // HOUSEKEEPING_SLICES))
        share = self._round[-self._round_slice:]
        del self._round[-self._round_slice:]
        for client in share:
            phase = client.phase
            if phase == GONE:  # closed since the round began
                continue
            ws = client.ws
            if phase == WEBSOCKET and ws is not None and ws.state == OPEN:
                if self.idle_timeout and now - client.last_seen >= self.idle_timeout:
                    self.stats.idle_closed += 1
                    self.close_client(client, 1000, "idle timeout")
                    continue
                if not ping_interval:
                    continue
                if client.ping_sent_at:
                    if now - client.ping_sent_at > ping_timeout:
                        log.info("client %s: no pong within %.0f s, closing", client.id, ping_timeout,
                                 extra={"client": client.id, "code": CLOSE_INTERNAL_ERROR,
                                        "reason": "keepalive ping timeout"})
                        self.stats.ping_timeouts += 1
                        self.close_client(client, CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                elif now - client.last_seen >= ping_interval:
                    client.ping_sent_at = now
                    ws.ping(b"zmqws")
                    self.queued(client)
            elif phase == STREAM:
                self.app.on_stream_tick(client, now)
            elif client.deadline and now >= client.deadline:
                self._deadline(client)
        if not self.stopping:
            self._schedule_housekeeping()

    def _deadline(self, client: Client) -> None:
        """A client's deadline passed: a held request's (the app's), handshake or keep-alive
        idle time, or the close wait."""
        if client.parked:
            self.app.on_deadline(client)
            return
        if client.phase in (HTTP, TLS) and not client.close_after_flush:
            self.stats.handshake_timeouts += 1
        self.abort(client)

    # -- stopping -----------------------------------------------------------------

    def _begin_stop(self, timeout: float) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.app.on_stop()
        self.listener.close()
        for client in list(self.connections.by_fd.values()):
            if client.phase == WEBSOCKET:
                self.close_client(client, CLOSE_GOING_AWAY, "server shutting down")
            elif client.phase in (HTTP, STREAM) and not client.close_after_flush:
                self.abort(client)
        self.output.flush_dirty()
        deadline = time.monotonic() + timeout
        self._wait_for_clients(deadline)

    def _wait_for_clients(self, deadline: float) -> None:
        assert self.loop is not None
        clients = self.connections.by_fd
        if not clients or time.monotonic() >= deadline:
            for client in list(clients.values()):
                self.abort(client)
            self.loop.stop()
            return
        for client in list(clients.values()):
            if client.deadline and time.monotonic() >= client.deadline:
                self.abort(client)
        self.loop.call_later(0.02, lambda: self._wait_for_clients(deadline))

    def _run_loop(self) -> None:
        assert self.loop is not None
        try:
            self.loop.run()
        except Exception:  # pragma: no cover - the loop itself failed
            log.exception("the loop failed")
        finally:
            for client in list(self.connections.by_fd.values()):
                self.abort(client)
            self.listener.close()
            self._teardown()
            self._stopped.set()

    def _teardown(self) -> None:
        """The app's teardown, then the server's own (loop stopped)."""
        self.app.teardown()
        self.listener.release_reserve()
        if self.loop is not None:
            self.loop.close()
