"""The listening socket and who may come in.

* Listening (``SO_REUSEADDR``, ``SO_REUSEPORT`` for ``--workers``) and
  non-blocking accepts, up to 256 a turn; TLS sockets are wrapped for a
  handshake the server then runs non-blocking in the loop.
* Connection limits: ``max_connections`` and ``max_connections_per_address``
  (sessions that outlive their TCP connection count too: :meth:`Listener.take_slot`);
  beyond them, and while stopping, a 503 response (RFC 9110 §15.6.4, with
  ``Retry-After``) and the connection is closed.  ``max_connections`` stays
  under the descriptor limit (``ulimit -n``) less a reserve; at the limit
  anyway, a reserve descriptor is given up to take one peer and refuse it,
  and the listener rests (no busy loop on a ready listening socket).
* The ``Host`` check (RFC 9110 §7.2) against DNS rebinding: ``allow_hosts``,
  and by default only loopback names when listening on a loopback address.
* Refusals and accept errors are logged at most once every ``LOG_INTERVAL``
  seconds per kind (:class:`zmqws.logs.LogLimiter`).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import time
from typing import Any, Callable, Dict, FrozenSet, Optional, Protocol

from .config import ServerConfig
from .loop import POLLIN, Loop
from .logs import LogLimiter
from .peer import peer_host
from .protocol import handshake
from .protocol.handshake import HTTPError, Request
from .stats import Stats

__all__ = ["Listener", "FD_RESERVE", "ACCEPT_PAUSE", "LOG_INTERVAL"]

log = logging.getLogger("zmqws")

FD_RESERVE = 16        # descriptors kept, beyond those in use at start, for files, threads and ZeroMQ
ACCEPT_PAUSE = 0.1     # seconds the listener rests after accept() hit the descriptor limit
LOG_INTERVAL = 5.0     # seconds between two log lines of one kind of refusal

Admit = Callable[[socket.socket, Any, float], None]  # (socket, peer address, now): a new connection


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


def _descriptors_in_use() -> int:
    """Open descriptors of this process (Linux: /proc/self/fd; elsewhere a fixed estimate)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - no /proc
        return 32


class Server(Protocol):
    """What the listener reads of its server (:class:`zmqws.server.WebSocketServer`)."""

    stopping: bool


class Listener:
    """The listening socket, the accept loop and the connection limits (see the module docstring).

    Every connection it admits is counted (per peer address too) until
    :meth:`gone`; ``admit`` (given to :meth:`open`) makes the connection.
    """

    loop: Loop  # set by open()

    def __init__(self, server: Server, config: ServerConfig, stats: Stats) -> None:
        self.server = server
        self.stats = stats
        self.host = config.host
        self.requested_port = config.port
        self.port: Optional[int] = None
        self.backlog = config.backlog
        self.reuse_port = config.reuse_port
        self.ssl_context = config.ssl_context
        self.max_connections = config.max_connections
        self.max_connections_per_address = config.max_connections_per_address
        self.allow_hosts = [h.strip().lower() for h in config.allow_hosts]
        self._hosts: Optional[FrozenSet[str]] = None     # accepted Host values (None: no check)
        self._any_port_hosts: FrozenSet[str] = frozenset()  # accepted names, whatever the port
        self._admit: Optional[Admit] = None
        self._open = 0  # connections admitted and not gone
        self._per_address: Dict[Any, int] = {}
        self._held_slots = 0  # connections counted for sessions without one (take_slot)
        self.sock: Optional[socket.socket] = None
        self.reserve_fd: Optional[int] = None  # given up to accept (and refuse) at the fd limit
        self.log = LogLimiter(log, LOG_INTERVAL)

    # -- listening --------------------------------------------------------------------

    def open(self, loop: Loop, admit: Admit) -> None:
        """Bind and listen; ``admit(sock, address, now)`` makes each admitted connection."""
        self.loop = loop
        self._admit = admit
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._configure(sock)
            sock.bind((self.host, self.requested_port))
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"cannot listen on {self.host}:{self.requested_port}: "
                                         "address already in use") from None
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.requested_port}: "
                                     f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self._allowed_hosts()
        loop.register(sock.fileno(), POLLIN, self._on_accept)

    def _configure(self, sock: socket.socket) -> None:
        """Socket options on the listening socket before bind: ``SO_REUSEPORT`` for workers."""
        if self.reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise OSError(0, "SO_REUSEPORT is not available on this system (needed by --workers)")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

    def close(self) -> None:
        """Stop listening."""
        if self.sock is not None:
            self.loop.unregister(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def release_reserve(self) -> None:
        """Close the reserve descriptor (the loop has stopped)."""
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None

    def fit_fd_limit(self) -> None:
        """Keep ``max_connections`` under the descriptor limit (``ulimit -n``) less the
        descriptors in use now (the listener, the app's ZeroMQ sockets) and a reserve, and
        hold one descriptor to give up when ``accept()`` hits the limit anyway."""
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):  # pragma: no cover - not a Unix
            soft = -1
        if soft != -1 and soft != getattr(resource, "RLIM_INFINITY", -1):
            usable = max(1, soft - _descriptors_in_use() - FD_RESERVE)
            if self.max_connections > usable:
                log.info("max_connections lowered from %d to %d: the file descriptor limit "
                         "(ulimit -n) is %d", self.max_connections, usable, soft)
                self.max_connections = usable
        self.reserve_fd = os.open(os.devnull, os.O_RDONLY)

    # -- accepting --------------------------------------------------------------------

    def _on_accept(self, _revents: int) -> None:
        listener = self.sock
        admit = self._admit
        if listener is None or admit is None:
            return
        now = time.monotonic()
        for _ in range(256):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ECONNABORTED...
                self.stats.accept_errors += 1
                self.log.log(logging.WARNING, "accept", "accept failed: %s", exc)
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
            self._open += 1
            self._per_address[host] = self._per_address.get(host, 0) + 1
            admit(sock, address, now)

    def _out_of_descriptors(self, listener: socket.socket) -> None:
        """``accept()`` hit the descriptor limit: the pending connection stays ready and the
        listener would wake the loop at once, forever.  Give up the reserve descriptor to take
        one peer and refuse it (503), and rest the listener for ``ACCEPT_PAUSE`` seconds."""
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None
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
        if self.reserve_fd is None:
            try:
                self.reserve_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass  # still at the limit: the next accept() failure only rests the listener
        if self.sock is not None and not self.server.stopping:
            self.loop.register(self.sock.fileno(), POLLIN, self._on_accept)

    def _refuse(self, sock: socket.socket, host: Any) -> None:
        """Over a connection limit (or stopping): 503, best effort, and close (no TLS is spoken)."""
        self.stats.refused += 1
        self.log.log(logging.INFO, "refuse", "refusing a connection from %s: connection limit", host,
                     extra={"addr": str(host), "code": 503, "reason": "connection limit"})
        try:
            if self.ssl_context is None:
                sock.send(handshake.error_response(HTTPError(
                    503, "too many connections", [("Retry-After", "5")])))
        except OSError:
            pass
        sock.close()

    # -- counting ---------------------------------------------------------------------

    def _over_limit(self, host: Any) -> bool:
        """One more connection from ``host`` would pass a connection limit (or we are stopping)."""
        return self.server.stopping or self._open + self._held_slots >= self.max_connections or bool(
            self.max_connections_per_address
            and self._per_address.get(host, 0) >= self.max_connections_per_address)

    def take_slot(self, host: Any) -> bool:
        """Count a session that outlives its TCP connection (an Engine.IO polling session) as
        one more connection from ``host`` (:func:`~zmqws.peer.peer_host`) until
        :meth:`release_slot`; False, counted in ``refused``, when that would pass
        ``max_connections`` or ``max_connections_per_address``."""
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

    def gone(self, host: Any) -> None:
        """An admitted connection from ``host`` is closed."""
        self._open -= 1
        self._address_gone(host)

    def _address_gone(self, host: Any) -> None:
        left = self._per_address.get(host, 1) - 1
        if left > 0:
            self._per_address[host] = left
        else:
            self._per_address.pop(host, None)

    # -- the Host check -----------------------------------------------------------------

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
