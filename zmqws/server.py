"""A WebSocket server (RFC 6455) on one poll loop, usable with or without ZeroMQ.

:class:`WebSocketServer` owns the listening socket and the client sockets:
non-blocking accepts, reads and writes; the HTTP phase (request parsing with
limits, the opening handshake, plain HTTP answers); the WebSocket phase
(frames in through the sans-I/O :class:`~zmqws.protocol.connection.WebSocketConnection`,
queued output flushed with one ``sendmsg`` per client per turn); keepalive
pings; timeouts; the closing handshake (§7) and its lingering TCP close.

It is the "standalone poll-based server": give it hooks and run it::

    server = WebSocketServer(9001, on_message=lambda client, data: client.send(data))
    server.run()

Hooks run on the loop thread and must not block.  The :class:`Gateway
<zmqws.gateway.Gateway>` subclass adds the ZeroMQ side and the fan-out.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .protocol import handshake
from .protocol.deflate import DeflateConfig
from .protocol.connection import (
    CLOSED, OPEN, CloseReceived, ConnectionFailed, Message, Ping, Pong, WebSocketConnection,
)
from .protocol.frames import (
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION, OP_BINARY, OP_TEXT, encode_frame,
)
from .protocol.handshake import HTTPError, Request, RequestParser
from .loop import POLLIN, POLLOUT, Loop
from .app import App, MessageHook
from .config import ServerConfig, server_config
from .peer import GONE, HTTP, LINGER, STREAM, TLS, WEBSOCKET, Client, address_text, peer_host
from .rights import ALL_RIGHTS, rights_from_hook
from .stats import Stats

if TYPE_CHECKING:  # ssl (and the OpenSSL libraries, megabytes of RSS) loads only with TLS
    pass

__all__ = ["WebSocketServer", "Client", "peer_host"]  # Client and peer_host: from zmqws.peer

log = logging.getLogger("zmqws")

_IOV_MAX = 1024
FD_RESERVE = 32        # descriptors kept for the rest (ZeroMQ, the poller, files) under the fd limit
ACCEPT_PAUSE = 0.1     # seconds the listener rests after accept() hit the descriptor limit
LOG_INTERVAL = 5.0     # seconds between two log lines of one kind of refusal
_RECV_SIZE = 262144


def _is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name part of a ``Host`` value (RFC 9110 §7.2: ``uri-host [ ":" port ]``)."""
    if value.startswith("["):
        return value[:value.find("]") + 1]
    return value.partition(":")[0]


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
        host, port = config.host, config.port
        subprotocols, max_message_size = config.subprotocols, config.max_message_size
        max_fragments, max_header_size = config.max_fragments, config.max_header_size
        max_queue, slow_client = config.max_queue, config.slow_client
        ping_interval, ping_timeout = config.ping_interval, config.ping_timeout
        handshake_timeout, close_timeout = config.handshake_timeout, config.close_timeout
        backlog, reuse_port, ssl_context = config.backlog, config.reuse_port, config.ssl_context
        max_connections = config.max_connections
        max_connections_per_address = config.max_connections_per_address
        max_requests_per_connection = config.max_requests_per_connection
        idle_timeout, allow_origins, allow_hosts = config.idle_timeout, config.allow_origins, config.allow_hosts
        authenticate = config.authenticate
        deflate = config.deflate
        self.host = host
        self._requested_port = port
        self.port: Optional[int] = None
        self.subprotocols = list(subprotocols)
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self.max_header_size = max_header_size
        self.max_queue = max_queue
        self.slow_client = slow_client
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.backlog = backlog
        self.deflate = (DeflateConfig(threshold=config.deflate_threshold, level=config.deflate_level,
                                      mem_level=config.deflate_mem_level,
                                      max_window_bits=config.deflate_max_window_bits)
                        if deflate else None)
        self.reuse_port = reuse_port
        self.ssl_context = ssl_context
        # What a non-blocking read or write raises when it would block (start() adds TLS's own).
        self._would_block: tuple = (BlockingIOError, InterruptedError)
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.max_requests_per_connection = max_requests_per_connection
        self.idle_timeout = idle_timeout
        self.allow_origins = list(allow_origins)
        self.allow_hosts = [h.strip().lower() for h in allow_hosts]
        self._hosts: Optional[frozenset] = None      # accepted Host values (None: no check)
        self._any_port_hosts: frozenset = frozenset()  # accepted names, whatever the port
        self.authenticate = authenticate
        self._per_address: Dict[Any, int] = {}
        self._held_slots = 0  # connections counted for sessions without one (take_slot)
        self.stats = Stats()
        self.loop: Optional[Loop] = None
        self._listener: Optional[socket.socket] = None
        self._clients: Dict[int, Client] = {}        # fd -> client
        self._ws_clients: Dict[Client, None] = {}    # open WebSocket clients, in connect order
        self._dirty: Dict[Client, None] = {}         # clients with output queued this turn
        self._refill: Dict[Client, None] = {}        # clients to refill when their queue drains
        self._next_id = 1
        self._thread: Optional[threading.Thread] = None
        self.stopping = False
        self._stopped = threading.Event()
        self._started = False
        self._housekeeping_timer = None
        self._reserve_fd: Optional[int] = None  # given up to accept (and refuse) at the fd limit
        self._log_marks: Dict[str, Tuple[float, int]] = {}  # kind -> (last line, lines held back)

    # -- public API -------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Open WebSocket connections."""
        return len(self._ws_clients)

    def start(self) -> "WebSocketServer":
        """Bind, then run the loop on its own thread; returns once the port is listening."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        if self.ssl_context is not None:
            import ssl
            self._would_block = (BlockingIOError, InterruptedError,
                                 ssl.SSLWantReadError, ssl.SSLWantWriteError)
        self.loop = Loop()
        try:
            self._listen()
            self._fit_fd_limit()
            self.app.setup()
        except BaseException:
            if self._listener is not None:  # do not leak the bound port
                self._listener.close()
                self._listener = None
            self._teardown()
            raise
        self.loop.after_turn.append(self._flush_dirty)
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
        if timeout is None:
            timeout = self.close_timeout
        if not self._stopped.is_set():
            self.loop.call_soon_threadsafe(lambda: self._begin_stop(timeout))
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
        self.call_soon_threadsafe(lambda: self.fanout(frame, self._ws_clients, 1))

    def connection_list(self) -> List[Client]:
        """Every connection, whatever its phase (loop thread)."""
        return list(self._clients.values())

    def client_list(self) -> List[Client]:
        """The open WebSocket clients (loop thread)."""
        return list(self._ws_clients)

    # -- access -------------------------------------------------------------------

    def check_access(self, client: Client, request: Request) -> None:
        """``allow_origins`` and the ``authenticate`` hook, for upgrades and streaming requests.

        What the hook returns becomes ``client.rights`` (:func:`zmqws.rights.rights_from_hook`:
        None = every topic; prefixes = read and write only there; or a :class:`Rights`).
        """
        origin = request.header("origin")
        if self.allow_origins and origin is not None and origin not in self.allow_origins:
            self.stats.forbidden += 1
            raise HTTPError(403, "origin not allowed")
        rights = ALL_RIGHTS
        if self.authenticate is not None:
            try:
                rights = rights_from_hook(self.authenticate(request))
            except HTTPError:
                self.stats.forbidden += 1
                raise
        client.rights = rights

    def negotiate_extensions(self, offers: list) -> Optional[tuple]:
        """Extension negotiation (§9): permessage-deflate when enabled; None declines every offer."""
        if self.deflate is None:
            return None
        return self.deflate.negotiate(offers)

    def _teardown(self) -> None:
        """The app's teardown, then the server's own (loop stopped)."""
        self.app.teardown()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        if self.loop is not None:
            self.loop.close()

    # -- listening and accepting --------------------------------------------------

    def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._configure_listener(sock)
            sock.bind((self.host, self._requested_port))
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"cannot listen on {self.host}:{self._requested_port}: "
                                         "address already in use") from None
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self._requested_port}: "
                                     f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._allowed_hosts()
        self.loop.register(sock.fileno(), POLLIN, self._on_accept)

    def _allowed_hosts(self) -> None:
        """The ``Host`` values to accept (see ``allow_hosts``), once the port is known."""
        exact = {h for h in self.allow_hosts if _host_name(h) != h}
        any_port = {h for h in self.allow_hosts if _host_name(h) == h}
        if _is_loopback(self.host):
            any_port.update(("localhost", "127.0.0.1", "[::1]",
                             f"[{self.host}]" if ":" in self.host else self.host.lower()))
        if exact or any_port:
            self._hosts = frozenset(exact)
            self._any_port_hosts = frozenset(any_port)

    def check_host(self, request: Request) -> None:
        """403 for a ``Host`` the server does not answer to (DNS rebinding; see ``allow_hosts``)."""
        if self._hosts is None:
            return
        value = request.header("host")
        if value is None:
            return  # browsers always send Host; a request without one is no rebinding
        value = value.strip().lower()
        if value in self._hosts or _host_name(value) in self._any_port_hosts:
            return
        self.stats.host_refused += 1
        raise HTTPError(403, "host not allowed")

    def _fit_fd_limit(self) -> None:
        """Keep ``max_connections`` under the descriptor limit (``ulimit -n``) less a reserve,
        and hold one descriptor to give up when ``accept()`` hits the limit anyway."""
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):  # pragma: no cover - not a Unix
            soft = -1
        if soft != -1 and soft != getattr(resource, "RLIM_INFINITY", -1):
            usable = max(1, soft - FD_RESERVE)
            if self.max_connections > usable:
                log.info("max_connections lowered from %d to %d: the file descriptor limit "
                         "(ulimit -n) is %d", self.max_connections, usable, soft)
                self.max_connections = usable
        self._reserve_fd = os.open(os.devnull, os.O_RDONLY)

    def _log_limited(self, level: int, kind: str, message: str, *args: Any,
                     extra: Optional[Dict[str, Any]] = None) -> None:
        """At most one line of a ``kind`` every ``LOG_INTERVAL`` seconds, saying how many it held back."""
        now = time.monotonic()
        last, held = self._log_marks.get(kind, (-LOG_INTERVAL, 0))
        if now - last < LOG_INTERVAL:
            self._log_marks[kind] = (last, held + 1)
            return
        self._log_marks[kind] = (now, 0)
        if held:
            message += " (and %d more like it since the last line)"
            args += (held,)
        log.log(level, message, *args, extra=extra)

    def _configure_listener(self, sock: socket.socket) -> None:
        """Socket options on the listening socket before bind: ``SO_REUSEPORT`` for workers."""
        if self.reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise OSError(0, "SO_REUSEPORT is not available on this system (needed by --workers)")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    def _on_accept(self, _revents: int) -> None:
        listener = self._listener
        if listener is None:
            return
        now = time.monotonic()
        for _ in range(256):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ECONNABORTED...
                self.stats.accept_errors += 1
                self._log_limited(logging.WARNING, "accept", "accept failed: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._out_of_descriptors(listener)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
            if isinstance(address, tuple):
                # One string per peer address, shared by its connections (10 000 clients from
                # one proxy would otherwise hold 10 000 copies of it).
                host = sys.intern(address[0])
                address = (host, address[1])
            else:
                host = address
            if self._over_limit(host):
                self._refuse(sock, host)
                continue
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                        do_handshake_on_connect=False)
                except (OSError, ValueError):
                    self.stats.tls_errors += 1
                    sock.close()
                    continue
            client = Client(self, sock, address, self._next_id, now)
            self._next_id += 1
            client.parser = RequestParser(self.max_header_size, body_limit=self.app.body_limit)
            if client.tls:
                client.phase = TLS
            self._per_address[host] = self._per_address.get(host, 0) + 1
            self._clients[client.fd] = client
            self.stats.connections += 1
            self.loop.register(client.fd, POLLIN, client)  # the client is its own handler

    def _out_of_descriptors(self, listener: socket.socket) -> None:
        """``accept()`` hit the descriptor limit: the pending connection stays ready and the
        listener would wake the loop at once, forever.  Give up the reserve descriptor to take
        one peer and refuse it (503), and rest the listener for ``ACCEPT_PAUSE`` seconds."""
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, address = listener.accept()
            except OSError:
                pass
            else:
                self._refuse(sock, peer_host(address))
        self.loop.unregister(listener.fileno())
        self.loop.call_later(ACCEPT_PAUSE, self._accept_again)

    def _accept_again(self) -> None:
        """The listener's rest is over: take the reserve descriptor back, then accept again."""
        if self._reserve_fd is None:
            try:
                self._reserve_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass  # still at the limit: the next accept() failure only rests the listener
        if self._listener is not None and not self.stopping:
            self.loop.register(self._listener.fileno(), POLLIN, self._on_accept)

    def _over_limit(self, host: Any) -> bool:
        """One more connection from ``host`` would pass a connection limit (or we are stopping)."""
        return self.stopping or len(self._clients) + self._held_slots >= self.max_connections or bool(
            self.max_connections_per_address
            and self._per_address.get(host, 0) >= self.max_connections_per_address)

    def take_slot(self, host: Any) -> bool:
        """Count a session that outlives its TCP connection (an Engine.IO polling session) as
        one more connection from ``host`` (:func:`peer_host`) until :meth:`release_slot`;
        False, counted in ``refused``, when that would pass ``max_connections`` or
        ``max_connections_per_address``."""
        if self._over_limit(host):
            self.stats.refused += 1
            return False
        self._held_slots += 1
        self._per_address[host] = self._per_address.get(host, 0) + 1
        return True

    def release_slot(self, host: Any) -> None:
        """Give back a slot of :meth:`take_slot`."""
        self._held_slots -= 1
        self._address_gone(host)

    def _address_gone(self, host: Any) -> None:
        left = self._per_address.get(host, 1) - 1
        if left > 0:
            self._per_address[host] = left
        else:
            self._per_address.pop(host, None)

    def _refuse(self, sock: socket.socket, host: Any) -> None:
        """Over a connection limit (or stopping): 503, best effort, and close (no TLS is spoken)."""
        self.stats.refused += 1
        self._log_limited(logging.INFO, "refuse", "refusing a connection from %s: connection limit", host,
                          extra={"addr": str(host), "code": 503, "reason": "connection limit"})
        try:
            if self.ssl_context is None:
                sock.send(handshake.error_response(HTTPError(
                    503, "too many connections", [("Retry-After", "5")])))
        except OSError:
            pass
        sock.close()

    # -- reading ----------------------------------------------------------------

    def handle_events(self, client: Client, revents: int) -> None:
        if client.phase == TLS:
            self._tls_handshake(client)
            return
        if revents & POLLOUT:
            self._flush(client)
            if client.phase == GONE:
                return
        if revents & POLLIN or not revents & POLLOUT:
            self._read(client)

    def _tls_handshake(self, client: Client) -> None:
        """One non-blocking step of the TLS handshake; a stalled peer only waits for its deadline."""
        import ssl  # loaded already: the server has an SSL context
        try:
            client.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(client, False)
            return
        except ssl.SSLWantWriteError:
            self._want_write(client, True)
            return
        except (ssl.SSLError, OSError) as exc:
            self.stats.tls_errors += 1
            log.debug("client %s: TLS handshake failed: %s", client.id, exc)
            self.abort(client)
            return
        client.phase = HTTP
        self._want_write(client, False)
        if client.sock.pending():
            self._read(client)

    def _want_write(self, client: Client, want: bool) -> None:
        if client.want_write != want:
            client.want_write = want
            self._poll_events(client)

    def _poll_events(self, client: Client) -> None:
        """Poll for input unless reading is paused, for output while some is pending."""
        reading = not (client.paused or client.waiting)
        self.loop.modify(client.fd, (POLLIN if reading else 0) | (POLLOUT if client.want_write else 0))

    def _read(self, client: Client) -> None:
        sock = client.sock
        try:
            data = sock.recv(_RECV_SIZE)
            if client.tls:
                # Bytes already decrypted inside the SSL object wake no poll: take them now.
                while sock.pending():
                    more = sock.recv(max(sock.pending(), _RECV_SIZE))
                    if not more:
                        break
                    data += more
        except self._would_block:
            return
        except OSError:
            self.abort(client)
            return
        if not data:
            self.abort(client)
            return
        client.last_seen = time.monotonic()
        self.stats.bytes_in += len(data)
        self._input(client, data)

    def _input(self, client: Client, data: bytes) -> None:
        """Bytes from the client to its phase's parser; an exception ends this client only."""
        try:
            if client.phase == WEBSOCKET:
                self._ws_data(client, data)
            elif client.phase == HTTP and not client.parked:
                self._http_data(client, data)
            # LINGER, STREAM, a parked request: discard what arrives until EOF
        except Exception:
            log.exception("internal error on client %s", client.id)
            if client.phase == WEBSOCKET and client.ws is not None:
                self.close_client(client, CLOSE_INTERNAL_ERROR, "internal error")
            else:
                self.abort(client)

    def _http_data(self, client: Client, data: bytes) -> None:
        if client.close_after_flush:
            return  # an answer is on its way; ignore the rest
        if client.paused or client.waiting:
            client.parser.rest += data  # read with a hang-up: parsed after what came before it
            return
        try:
            request = client.parser.feed(data)
            while request is not None:
                request.peer = client.address
                client.request = request
                client.path = request.path
                self.check_host(request)
                if handshake.is_websocket_upgrade(request):
                    self._upgrade(client, request)
                    return
                self.stats.http_requests += 1
                client.requests += 1
                if client.requests >= self.max_requests_per_connection > 0:
                    request.last = True  # its response says "Connection: close"
                    self.stats.requests_capped += 1
                response = self.app.handle_http(client, request)
                if response is not None:
                    self.http_reply(client, response)
                if client.phase != HTTP or client.parked or client.close_after_flush or client.waiting:
                    return
                if client.session.out_bytes > self.max_queue:
                    self._pause_reading(client)  # the rest waits in the parser (see _sent)
                    return
                request = client.parser.feed(client.parser.reset())
        except HTTPError as exc:
            self.stats.http_errors += 1
            if exc.status == 413:
                self.stats.bodies_refused += 1
            log.debug("client %s: HTTP %s %s", client.id, exc.status, exc.reason)
            response = handshake.error_response(exc)
            self.http_reply(client, response)

    def _pause_reading(self, client: Client) -> None:
        """Pipelined requests: their responses fill more than ``max_queue`` bytes; read and
        parse no more until the peer has taken them (RFC 9112 §9.3.2 lets a server do so)."""
        if not client.paused:
            client.paused = True
            self.stats.pipeline_paused += 1
            self._poll_events(client)

    def _resume_reading(self, client: Client) -> None:
        """The queue drained below ``max_queue``: answer the requests already read, then read on."""
        client.paused = False
        self._poll_events(client)
        self._input(client, client.parser.reset())
        if client.session.out and client.phase != GONE:
            self._want_write(client, True)  # flushed when writable, not after some later turn

    def reply_later(self, client: Client) -> None:
        """From ``handle_http``: the response to this request comes later (from another thread's
        work); the client's further requests wait, unread, for :meth:`reply_now` (loop thread)."""
        client.waiting = True
        self._poll_events(client)

    def reply_now(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """The response :meth:`reply_later` announced (see :meth:`http_reply`); then the next requests."""
        if client.phase != HTTP or not client.waiting:
            return  # gone meanwhile
        client.waiting = False
        self.http_reply(client, response, keep_alive)
        if client.session.out_bytes > self.max_queue:
            self._pause_reading(client)
        else:
            self._resume_reading(client)

    @staticmethod
    def _head_length(response: bytes) -> int:
        end = response.find(b"\r\n\r\n")
        return len(response) if end < 0 else end + 4

    def http_reply(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """Queue a complete HTTP response (loop thread).  A HEAD request gets the head only.

        With ``keep_alive`` the connection then waits for the next request
        (RFC 9112 §9.3); else it is closed once the response is written.
        """
        request = client.request
        if request is not None and request.method == "HEAD":
            response = response[:self._head_length(response)]  # RFC 9110 §9.3.2: no body
        client.session.queue(response)
        client.parked = False
        if keep_alive and request is not None and request.keep_alive and not self.stopping:
            client.deadline = time.monotonic() + self.handshake_timeout
        else:
            client.close_after_flush = True
        self.queued(client)

    def start_stream(self, client: Client, head: bytes, transport: str) -> None:
        """The response to ``client.request`` becomes an endless stream (Server-Sent Events):
        ``head`` now, then what is queued; what the client sends is discarded."""
        client.phase = STREAM
        client.transport = transport
        client.deadline = 0.0
        client.ping_sent_at = time.monotonic()  # the last heartbeat
        self.queue(client, head)

    def park(self, client: Client, deadline: float, transport: str) -> None:
        """Hold ``client.request`` unanswered until :meth:`answer` (or the app's
        ``on_deadline`` at ``deadline``): long-polling."""
        client.parked = True
        client.transport = transport
        client.deadline = deadline

    def answer(self, client: Client, status: int, body: bytes, content_type: str,
               headers: Sequence[Tuple[str, str]]) -> None:
        """The response to a held request; the connection stays open as its request asked."""
        request = client.request
        client.transport = None
        self.http_reply(client, handshake.http_response(status, body, content_type, headers,
                                                        keep_alive=request is not None and request.keep_alive),
                        keep_alive=True)

    def _upgrade(self, client: Client, request: Request) -> None:
        self.check_access(client, request)
        self.app.accept_websocket(client, request)
        response, subprotocol, extension = handshake.websocket_accept(
            request, self.subprotocols, self.negotiate_extensions)
        ws = WebSocketConnection(max_message_size=self.max_message_size,
                                 max_fragments=self.max_fragments, deflate=extension)
        ws.queue(response)
        client.ws = ws
        client.session = ws  # the 101 response is its first bytes
        client.subprotocol = subprotocol
        client.phase = WEBSOCKET
        client.deadline = 0.0
        rest = client.parser.rest
        client.parser = None
        self._ws_clients[client] = None
        client.transport = "websocket"
        self.stats.ws_connections += 1
        address = address_text(client.address)
        log.info("connect client=%s addr=%s transport=websocket path=%s", client.id, address,
                 request.path, extra={"client": client.id, "addr": address,
                                      "transport": "websocket", "path": request.path})
        self.queued(client)
        self.app.on_open(client)
        client.request = None  # answered: its headers are a kilobyte and more per connection
        if rest and client.phase == WEBSOCKET:
            self._ws_data(client, rest)

    def call_hook(self, client: Client, hook: Callable[..., Any], *args: Any) -> None:
        """Run an application hook; an exception in it closes that client (1011), nobody else."""
        try:
            hook(*args)
        except Exception:
            log.exception("error in hook %r for client %s", hook, client.id)
            self.close_client(client, CLOSE_INTERNAL_ERROR, "internal error")

    def _ws_data(self, client: Client, data: bytes) -> None:
        ws = client.ws
        before = ws.out_bytes
        for event in ws.receive(data):
            cls = event.__class__
            if cls is Message:
                self.stats.messages_in += 1
                self.app.on_message(client, event)
            elif cls is Ping:
                self.app.on_ping(client)
            elif cls is Pong:
                client.ping_sent_at = 0.0
            elif cls is CloseReceived:
                log.debug("client %s: close received %s %r", client.id, event.code, event.reason)
            elif cls is ConnectionFailed:
                self.stats.protocol_errors += 1
                log.info("client %s: protocol error %s: %s", client.id, event.code, event.reason,
                         extra={"client": client.id, "code": event.code, "reason": event.reason})
        if ws.out_bytes != before:
            if ws.out_bytes > self.max_queue and ws.state == OPEN:
                # Pongs pile up for a peer that pings and does not read: the bound holds for them too.
                self._slow_client(client, 0, force_close=True)
            self.queued(client)
        if ws.state == CLOSED and not client.close_after_flush:
            # Once only: bytes the peer keeps sending must not push the close deadline back.
            self._closing_done(client)

    # -- writing ----------------------------------------------------------------

    def queued(self, client: Client) -> None:
        self._dirty[client] = None

    def _flush_dirty(self) -> None:
        """After each turn: one write per client with new output (not those waiting for POLLOUT)."""
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for client in dirty:
                if not client.want_write and client.phase != GONE:
                    self._flush(client)

    def fanout(self, frames: bytes, clients: Iterable[Client], count: int) -> Optional[List[Client]]:
        """Queue the same encoded ``frames`` (``count`` messages) on every client (loop thread).

        This is the hot path: per client, an append and an addition; the
        slow-consumer policy applies past ``max_queue``; the output is flushed
        at the end of the turn.  Returns the clients the frames did not fit
        (the policy applied to them), or None.
        """
        size = len(frames)
        limit = self.max_queue
        dirty = self._dirty
        over = None
        sent = 0
        for client in clients:
            session = client.session
            if session.out_bytes + size > limit and session.out_bytes:
                if over is None:
                    over = []
                over.append(client)
                continue
            session.out.append(frames)
            session.out_bytes += size
            dirty[client] = None
            sent += 1
        stats = self.stats
        stats.messages_out += sent * count
        stats.bytes_out += sent * size
        if over:
            for client in over:
                self._slow_client(client, count)
        return over

    def _slow_client(self, client: Client, count: int, force_close: bool = False) -> None:
        """The slow-consumer policy (its queue would pass ``max_queue``); ``force_close``:
        close whatever the policy (what is queued is not droppable, e.g. pongs)."""
        self.stats.drops += count
        if self.slow_client == "drop" and not force_close:
            self.stats.dropped_slow += count
            return
        self.stats.slow_closed += 1
        session = client.session
        out = session.out
        head = out[0] if out and isinstance(out[0], memoryview) else None
        session.discard_output(head)
        log.info("client %s: slow consumer (over %d bytes queued), closing with 1008",
                 client.id, self.max_queue,
                 extra={"client": client.id, "code": CLOSE_POLICY_VIOLATION, "reason": "slow consumer"})
        self.close_client(client, CLOSE_POLICY_VIOLATION, "slow consumer")

    def _flush(self, client: Client) -> None:
        """One ``sendmsg`` of the client's queue; POLLOUT stays registered only while output remains."""
        out = client.session.out
        sent = 0
        if out:
            try:
                if client.tls:
                    # SSL sockets have no sendmsg: one record-sized batch per write.
                    sent = client.sock.send(out[0] if len(out) == 1 else b"".join(out[:64]))
                else:
                    sent = client.sock.sendmsg(out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
            except self._would_block:
                pass
            except OSError:
                self.abort(client)
                return
        self._sent(client, sent)

    def _sent(self, client: Client, sent: int) -> None:
        """Trim ``sent`` bytes off the client's queue; wait for POLLOUT while some remain."""
        session = client.session
        out = session.out
        if sent:
            session.out_bytes -= sent
            i = 0
            while sent >= len(out[i]):
                sent -= len(out[i])
                i += 1
                if i == len(out):
                    break
            else:
                out[i] = memoryview(out[i])[sent:]
            del out[:i]
        if client.paused and session.out_bytes <= self.max_queue and client.phase == HTTP and not client.waiting:
            self._resume_reading(client)
            if client.phase == GONE:
                return
            out = client.session.out
        if client in self._refill and session.out_bytes <= self.max_queue >> 1:
            self._refill.pop(client, None)
            self.app.on_refill(client)
        if out:
            self._want_write(client, True)
            return
        self._want_write(client, False)
        if client.close_after_flush:
            self._linger(client)

    # -- the output queues, as the hub sees them (zmqws.hub.Output) ---------------

    @property
    def drop_slow(self) -> bool:
        """The slow-consumer policy drops messages (else it closes the client)."""
        return self.slow_client == "drop"

    def queue(self, client: Client, data: bytes) -> None:
        """Queue encoded bytes on a client; flushed at the end of the turn (loop thread)."""
        client.session.queue(data)
        self._dirty[client] = None

    def write_now(self, client: Client) -> None:
        """Write a client's queue now, not with what the rest of the turn queues (loop thread)."""
        if self._dirty.pop(client, 0) is None and not client.want_write and client.phase != GONE:
            self._flush(client)

    @staticmethod
    def queued_bytes(client: Client) -> int:
        return client.session.out_bytes

    def refill_when_drained(self, client: Client, wanted: bool) -> None:
        """Call ``app.on_refill(client)`` once its queue drains below half of ``max_queue``."""
        if wanted:
            self._refill[client] = None
        else:
            self._refill.pop(client, None)

    def close_slow(self, client: Client) -> None:
        """Close a client as a slow consumer (1008), whatever the policy."""
        self._slow_client(client, 0, force_close=True)

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Server-initiated close: a close frame, then wait ``close_timeout`` for the peer's."""
        self.app.on_closing(client)
        if client.phase == WEBSOCKET and client.ws is not None:
            if client.ws.state == OPEN:
                client.ws.close(code, reason)
                self._ws_clients.pop(client, None)
                client.deadline = time.monotonic() + self.close_timeout
                self.queued(client)
        elif client.phase in (HTTP, STREAM):
            self.abort(client)

    def _closing_done(self, client: Client) -> None:
        """The close handshake is over (or failed): flush, then close TCP first (§7.1.1)."""
        self.app.on_closing(client)
        self._ws_clients.pop(client, None)
        client.close_after_flush = True
        client.deadline = time.monotonic() + self.close_timeout
        self.queued(client)

    def _linger(self, client: Client) -> None:
        """Everything is sent: half-close and read until the peer's FIN (or the deadline)."""
        if client.phase == LINGER or client.phase == GONE:
            return
        self._ws_clients.pop(client, None)
        client.phase = LINGER
        client.deadline = time.monotonic() + self.close_timeout
        try:
            # Under TLS this drops the SSL object too; what still arrives is discarded raw.
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort(client)

    def abort(self, client: Client) -> None:
        """Drop the TCP connection now and forget the client."""
        if client.phase == GONE:
            return
        had_transport = client.transport is not None
        client.phase = GONE
        self._ws_clients.pop(client, None)
        self._dirty.pop(client, None)
        if self._clients.pop(client.fd, None) is not None:
            if self.loop is not None:
                self.loop.unregister(client.fd)
            self._address_gone(peer_host(client.address))
        try:
            client.sock.close()
        except OSError:  # pragma: no cover
            pass
        if had_transport:
            ws = client.ws
            if ws is not None:
                code = ws.close_code if ws.close_code is not None else 1006
                self.stats.count_close(code)
                address = address_text(client.address)
                log.info("disconnect client=%s addr=%s code=%s reason=%r", client.id, address,
                         code, ws.close_reason,
                         extra={"client": client.id, "addr": address, "transport": client.transport,
                                "code": code, "reason": ws.close_reason})
            self.app.on_close(client)

    # -- timers -------------------------------------------------------------------

    def _schedule_housekeeping(self) -> None:
        period = 1.0
        if self.ping_interval:
            period = min(period, self.ping_interval / 2)
        self._housekeeping_timer = self.loop.call_later(period, self._housekeeping)

    def _housekeeping(self) -> None:
        """Once a second: handshake and close deadlines, keepalive pings and their timeout."""
        now = time.monotonic()
        ping_interval = self.ping_interval
        ping_timeout = self.ping_timeout
        for client in list(self._clients.values()):
            phase = client.phase
            if phase == WEBSOCKET and client.ws.state == OPEN:
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
                    client.ws.ping(b"zmqws")
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
        if self._listener is not None:
            self.loop.unregister(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for client in list(self._clients.values()):
            if client.phase == WEBSOCKET:
                self.close_client(client, CLOSE_GOING_AWAY, "server shutting down")
            elif client.phase in (HTTP, STREAM) and not client.close_after_flush:
                self.abort(client)
        self._flush_dirty()
        deadline = time.monotonic() + timeout
        self._wait_for_clients(deadline)

    def _wait_for_clients(self, deadline: float) -> None:
        if not self._clients or time.monotonic() >= deadline:
            for client in list(self._clients.values()):
                self.abort(client)
            self.loop.stop()
            return
        for client in list(self._clients.values()):
            if client.deadline and time.monotonic() >= client.deadline:
                self.abort(client)
        self.loop.call_later(0.02, lambda: self._wait_for_clients(deadline))

    def _run_loop(self) -> None:
        try:
            self.loop.run()
        except Exception:  # pragma: no cover - the loop itself failed
            log.exception("the loop failed")
        finally:
            for client in list(self._clients.values()):
                self.abort(client)
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._teardown()
            self._stopped.set()
