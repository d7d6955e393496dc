"""The server's connections: their table, their events, their input, their end.

* Each admitted socket becomes a :class:`~zmqws.peer.Client`, its own handler
  in the loop; its events go to :meth:`Connections.handle_events`: one
  non-blocking step of the TLS handshake, a write when writable (the
  :mod:`zmqws.output` side), a read, and what is read goes to the parser of
  its phase (:mod:`zmqws.http_phase` for HTTP, the sans-I/O
  :class:`~zmqws.protocol.connection.WebSocketConnection` after the upgrade,
  whose events go to the :class:`~zmqws.app.App`).  An exception in one
  client's input ends that client only.
* The end of a connection: the closing handshake (RFC 6455 §7.1.2, a close
  frame then ``close_timeout`` to wait for the peer's), the server closing
  the TCP connection first once it is over (§7.1.1) with a lingering
  half-close, and :meth:`Connections.abort`.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Protocol, cast

from .app import App
from .config import ServerConfig
from .http_phase import HttpPhase
from .listener import Listener
from .loop import POLLIN, POLLOUT, Loop
from .output import OutputQueues, would_block_errors
from .peer import GONE, HTTP, LINGER, STREAM, TLS, WEBSOCKET, Client, address_text, peer_host
from .protocol.connection import CLOSED, OPEN, CloseReceived, ConnectionFailed, Message, Ping, Pong
from .protocol.frames import CLOSE_INTERNAL_ERROR
from .protocol.handshake import RequestParser
from .stats import Stats

if TYPE_CHECKING:  # ssl (and the OpenSSL libraries, megabytes of RSS) loads only with TLS
    import ssl

__all__ = ["Connections"]

log = logging.getLogger("zmqws")

RECV_SIZE = 262144  # bytes asked of one recv()


class Server(Protocol):
    """What the connections read of their server (:class:`zmqws.server.WebSocketServer`)."""

    app: App
    stopping: bool


class Connections:
    """Every connection of the server (``by_fd``), the open WebSocket ones (``websockets``, in
    connect order), their output queues (``output``) and HTTP phase (``http``).  Loop thread only."""

    loop: Loop  # set by the server's start()

    def __init__(self, server: Server, config: ServerConfig, stats: Stats, listener: Listener) -> None:
        self.app = server.app
        self.stats = stats
        self.listener = listener
        self.handshake_timeout = config.handshake_timeout
        self.close_timeout = config.close_timeout
        self.ssl_context = config.ssl_context
        self.max_header_size = config.max_header_size
        self.max_queue = config.max_queue
        self._would_block = would_block_errors(config.ssl_context is not None)
        self.by_fd: Dict[int, Client] = {}        # fd -> client
        self.websockets: Dict[Client, None] = {}  # open WebSocket clients, in connect order
        self._next_id = 1
        self.output = OutputQueues(config, stats, server.app, self)
        self.http = HttpPhase(server, config, stats, self.output, self, listener)
        # Output was queued on a client (Client.send calls it): the output side's own method.
        self.queued: Callable[[Client], None] = self.output.queued

    def admit(self, sock: socket.socket, address: Any, now: float) -> None:
        """A connection the listener accepted: a client, its own handler in the loop."""
        client = Client(self, sock, address, self._next_id, now)
        self._next_id += 1
        client.parser = RequestParser(self.max_header_size, body_limit=self.app.body_limit)
        if client.tls:
            client.phase = TLS
        self.by_fd[client.fd] = client
        self.stats.connections += 1
        self.loop.register(client.fd, POLLIN, client)  # the client is its own handler

    # -- events and input ---------------------------------------------------------------

    def handle_events(self, client: Client, revents: int) -> None:
        """The loop's poll events of one client."""
        if client.phase == TLS:
            self._tls_handshake(client)
            return
        if revents & POLLOUT:
            self.output.flush(client)
            if client.phase == GONE:
                return
        if revents & POLLIN or not revents & POLLOUT:
            self._read(client)

    def _tls_handshake(self, client: Client) -> None:
        """One non-blocking step of the TLS handshake; a stalled peer only waits for its deadline."""
        import ssl  # loaded already: the server has an SSL context
        sock = cast(ssl.SSLSocket, client.sock)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.output.want_write(client, False)
            return
        except ssl.SSLWantWriteError:
            self.output.want_write(client, True)
            return
        except (ssl.SSLError, OSError) as exc:
            self.stats.tls_errors += 1
            log.debug("client %s: TLS handshake failed: %s", client.id, exc)
            self.abort(client)
            return
        client.phase = HTTP
        self.output.want_write(client, False)
        if sock.pending():
            self._read(client)

    def _read(self, client: Client) -> None:
        sock = client.sock
        try:
            data = sock.recv(RECV_SIZE)
            if client.tls:
                # Bytes already decrypted inside the SSL object wake no poll: take them now.
                tls = cast("ssl.SSLSocket", sock)
                while tls.pending():
                    more = tls.recv(max(tls.pending(), RECV_SIZE))
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
        self.input(client, data)

    def input(self, client: Client, data: bytes) -> None:
        """Bytes from the client to its phase's parser; an exception ends this client only."""
        try:
            if client.phase == WEBSOCKET:
                self.ws_data(client, data)
            elif client.phase == HTTP and not client.parked:
                self.http.data(client, data)
            # LINGER, STREAM, a parked request: discard what arrives until EOF
        except Exception:
            log.exception("internal error on client %s", client.id)
            if client.phase == WEBSOCKET and client.ws is not None:
                self.close_client(client, CLOSE_INTERNAL_ERROR, "internal error")
            else:
                self.abort(client)

    def pause_reading(self, client: Client) -> None:
        """Pipelined requests: their responses fill more than ``max_queue`` bytes; read and
        parse no more until the peer has taken them (RFC 9112 §9.3.2 lets a server do so)."""
        if not client.paused:
            client.paused = True
            self.stats.pipeline_paused += 1
            self.output.poll_events(client)

    def resume_reading(self, client: Client) -> None:
        """The queue drained below ``max_queue``: answer the requests already read, then read on."""
        client.paused = False
        self.output.poll_events(client)
        parser = client.parser
        assert parser is not None
        self.input(client, parser.reset())
        if client.session.out and client.phase != GONE:
            self.output.want_write(client, True)  # flushed when writable, not after some later turn

    def ws_data(self, client: Client, data: bytes) -> None:
        """Bytes of a WebSocket client: its events to the app (RFC 6455 §5, §6.2)."""
        ws = client.ws
        assert ws is not None
        before = ws.out_bytes
        for event in ws.receive(data):
            if isinstance(event, Message):
                self.stats.messages_in += 1
                self.app.on_message(client, event)
            elif isinstance(event, Ping):
                self.app.on_ping(client)
            elif isinstance(event, Pong):
                client.ping_sent_at = 0.0
            elif isinstance(event, CloseReceived):
                log.debug("client %s: close received %s %r", client.id, event.code, event.reason)
            elif isinstance(event, ConnectionFailed):
                self.stats.protocol_errors += 1
                log.info("client %s: protocol error %s: %s", client.id, event.code, event.reason,
                         extra={"client": client.id, "code": event.code, "reason": event.reason})
        if ws.out_bytes != before:
            if ws.out_bytes > self.max_queue and ws.state == OPEN:
                # Pongs pile up for a peer that pings and does not read: the bound holds for them too.
                self.output.close_slow(client)
            self.queued(client)
        if ws.state == CLOSED and not client.close_after_flush:
            # Once only: bytes the peer keeps sending must not push the close deadline back.
            self._closing_done(client)

    # -- the end ------------------------------------------------------------------------

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Server-initiated close: a close frame, then wait ``close_timeout`` for the peer's."""
        self.app.on_closing(client)
        if client.phase == WEBSOCKET and client.ws is not None:
            if client.ws.state == OPEN:
                client.ws.close(code, reason)
                self.websockets.pop(client, None)
                client.deadline = time.monotonic() + self.close_timeout
                self.queued(client)
        elif client.phase in (HTTP, STREAM):
            self.abort(client)

    def _closing_done(self, client: Client) -> None:
        """The close handshake is over (or failed): flush, then close TCP first (§7.1.1)."""
        self.app.on_closing(client)
        self.websockets.pop(client, None)
        client.close_after_flush = True
        client.deadline = time.monotonic() + self.close_timeout
        self.queued(client)

    def linger(self, client: Client) -> None:
        """Everything is sent: half-close and read until the peer's FIN (or the deadline)."""
        if client.phase == LINGER or client.phase == GONE:
            return
        self.websockets.pop(client, None)
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
        self.websockets.pop(client, None)
        self.output.forget(client)
        if self.by_fd.pop(client.fd, None) is not None:
            self.loop.unregister(client.fd)
            self.listener.gone(peer_host(client.address))
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
