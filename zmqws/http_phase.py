"""The HTTP phase of a connection: requests in, responses out, the upgrade to WebSocket.

* Requests are parsed with limits by the sans-I/O
  :class:`~zmqws.protocol.handshake.RequestParser` and answered in order
  (RFC 9112 §9.3, persistent connections).  Pipelined requests are read no
  further while their responses fill more than ``max_queue`` bytes (RFC 9112
  §9.3.2 lets a server do so); ``max_requests_per_connection`` caps the
  requests of one connection (the last response says ``Connection: close``,
  RFC 9112 §9.6).
* The application answers each request (:meth:`zmqws.app.App.handle_http`):
  at once (:meth:`HttpPhase.http_reply`), later (:meth:`HttpPhase.reply_later`
  / :meth:`HttpPhase.reply_now`), held open for long-polling
  (:meth:`HttpPhase.park` / :meth:`HttpPhase.answer`) or as an endless stream
  (:meth:`HttpPhase.start_stream`).  A HEAD request gets the head only (RFC
  9110 §9.3.2).
* The opening handshake (RFC 6455 §4.2): access (``allow_origins``, the
  ``authenticate`` hook), extension negotiation (RFC 6455 §9, RFC 7692), the
  101 response, then the connection is a WebSocket one.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Protocol, Sequence, Tuple, cast

from .app import App
from .config import ServerConfig
from .listener import Listener
from .output import OutputQueues
from .peer import HTTP, STREAM, WEBSOCKET, Client, address_text
from .protocol import handshake
from .protocol.connection import WebSocketConnection
from .protocol.deflate import DeflateConfig, Offers, PerMessageDeflate
from .protocol.handshake import HTTPError, Request
from .rights import ALL_RIGHTS, rights_from_hook
from .stats import Stats

__all__ = ["HttpPhase"]

log = logging.getLogger("zmqws")


class Server(Protocol):
    """What the HTTP phase reads of its server (:class:`zmqws.server.WebSocketServer`)."""

    app: App
    stopping: bool


class Connections(Protocol):
    """What the HTTP phase needs of the connections (:class:`zmqws.connections.Connections`)."""

    websockets: Dict[Client, None]

    def pause_reading(self, client: Client) -> None: ...

    def resume_reading(self, client: Client) -> None: ...

    def ws_data(self, client: Client, data: bytes) -> None: ...


class HttpPhase:
    """Requests of the connections in the HTTP phase, their answers, and the upgrade."""

    def __init__(self, server: Server, config: ServerConfig, stats: Stats, output: OutputQueues,
                 connections: Connections, listener: Listener) -> None:
        self.server = server
        self.app = server.app
        self.stats = stats
        self.output = output
        self.connections = connections
        self.listener = listener
        self.max_queue = config.max_queue
        self.max_requests_per_connection = config.max_requests_per_connection
        self.handshake_timeout = config.handshake_timeout
        self.subprotocols = list(config.subprotocols)
        self.max_message_size = config.max_message_size
        self.max_fragments = config.max_fragments
        self.allow_origins = list(config.allow_origins)
        self.authenticate = config.authenticate
        self.deflate = (DeflateConfig(threshold=config.deflate_threshold, level=config.deflate_level,
                                      mem_level=config.deflate_mem_level,
                                      max_window_bits=config.deflate_max_window_bits)
                        if config.deflate else None)

    # -- requests -------------------------------------------------------------------

    def data(self, client: Client, data: bytes) -> None:
        """Bytes of a connection in the HTTP phase: answer each whole request in turn."""
        if client.close_after_flush:
            return  # an answer is on its way; ignore the rest
        parser = client.parser
        assert parser is not None
        if client.paused or client.waiting:
            parser.rest += data  # read with a hang-up: parsed after what came before it
            return
        try:
            request = parser.feed(data)
            while request is not None:
                request.peer = client.address
                client.request = request
                client.path = request.path
                self.listener.check_host(request)
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
                    self.connections.pause_reading(client)  # the rest waits in the parser
                    return
                request = parser.feed(parser.reset())
        except HTTPError as exc:
            self.stats.http_errors += 1
            if exc.status == 413:
                self.stats.bodies_refused += 1
            log.debug("client %s: HTTP %s %s", client.id, exc.status, exc.reason)
            self.http_reply(client, handshake.error_response(exc))

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

    # -- answers --------------------------------------------------------------------

    def http_reply(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """Queue a complete HTTP response (loop thread).  A HEAD request gets the head only.

        With ``keep_alive`` the connection then waits for the next request
        (RFC 9112 §9.3); else it is closed once the response is written.
        """
        request = client.request
        if request is not None and request.method == "HEAD":
            end = response.find(b"\r\n\r\n")
            response = response[:len(response) if end < 0 else end + 4]  # RFC 9110 §9.3.2: no body
        client.session.queue(response)
        client.parked = False
        if keep_alive and request is not None and request.keep_alive and not self.server.stopping:
            client.deadline = time.monotonic() + self.handshake_timeout
        else:
            client.close_after_flush = True
        self.output.queued(client)

    def reply_later(self, client: Client) -> None:
        """From ``handle_http``: the response to this request comes later (from another thread's
        work); the client's further requests wait, unread, for :meth:`reply_now` (loop thread)."""
        client.waiting = True
        self.output.poll_events(client)

    def reply_now(self, client: Client, response: bytes, keep_alive: bool = False) -> None:
        """The response :meth:`reply_later` announced (see :meth:`http_reply`); then the next requests."""
        if client.phase != HTTP or not client.waiting:
            return  # gone meanwhile
        client.waiting = False
        self.http_reply(client, response, keep_alive)
        if client.session.out_bytes > self.max_queue:
            self.connections.pause_reading(client)
        else:
            self.connections.resume_reading(client)

    def start_stream(self, client: Client, head: bytes, transport: str) -> None:
        """The response to ``client.request`` becomes an endless stream (Server-Sent Events):
        ``head`` now, then what is queued; what the client sends is discarded."""
        client.phase = STREAM
        client.transport = transport
        client.deadline = 0.0
        client.ping_sent_at = time.monotonic()  # the last heartbeat
        self.output.queue(client, head)

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

    # -- the upgrade ----------------------------------------------------------------

    def negotiate_extensions(self, offers: Offers) -> Optional[Tuple[str, PerMessageDeflate]]:
        """Extension negotiation (RFC 6455 §9): permessage-deflate when enabled; None declines
        every offer."""
        if self.deflate is None:
            return None
        return self.deflate.negotiate(offers)

    def _upgrade(self, client: Client, request: Request) -> None:
        """The opening handshake's answer (RFC 6455 §4.2.2): the client is a WebSocket one."""
        self.check_access(client, request)
        self.app.accept_websocket(client, request)
        response, subprotocol, extension = handshake.websocket_accept(
            request, self.subprotocols, self.negotiate_extensions)
        ws = WebSocketConnection(max_message_size=self.max_message_size, max_fragments=self.max_fragments,
                                 deflate=cast(Optional[PerMessageDeflate], extension))  # ours: see above
        ws.queue(response)
        client.ws = ws
        client.session = ws  # the 101 response is its first bytes
        client.subprotocol = subprotocol
        client.phase = WEBSOCKET
        client.deadline = 0.0
        parser = client.parser
        rest = parser.rest if parser is not None else b""
        client.parser = None
        self.connections.websockets[client] = None
        client.transport = "websocket"
        self.stats.ws_connections += 1
        address = address_text(client.address)
        log.info("connect client=%s addr=%s transport=websocket path=%s", client.id, address,
                 request.path, extra={"client": client.id, "addr": address,
                                      "transport": "websocket", "path": request.path})
        self.output.queued(client)
        self.app.on_open(client)
        client.request = None  # answered: its headers are a kilobyte and more per connection
        if rest and client.phase == WEBSOCKET:
            self.connections.ws_data(client, rest)
