"""One connected peer of the server: its socket, phase, output queue and WebSocket connection."""

from __future__ import annotations

import socket
from enum import IntEnum
from typing import Any, Dict, Optional, Protocol, Union

from .protocol.connection import OPEN, OutputQueue, WebSocketConnection
from .protocol.handshake import Request, RequestParser
from .rights import ALL_RIGHTS, Rights

__all__ = ["Client", "Phase", "peer_host", "address_text"]


class Server(Protocol):
    """What a client needs of its server's connections (:class:`zmqws.connections.Connections`)."""

    handshake_timeout: float
    ssl_context: Any

    def handle_events(self, client: "Client", revents: int) -> None: ...

    def queued(self, client: "Client") -> None: ...

    def close_client(self, client: "Client", code: int, reason: str) -> None: ...


class Phase(IntEnum):
    """Where a connection is in its life."""

    HTTP = 0        # reading an HTTP request
    WEBSOCKET = 1   # after the 101 response
    LINGER = 2      # output flushed then SHUT_WR; reading until EOF or a deadline
    GONE = 3
    STREAM = 4      # an endless HTTP response (Server-Sent Events); input is ignored
    TLS = 5         # the TLS handshake, run non-blocking in the loop


# Plain-int aliases for the hot paths.
HTTP, WEBSOCKET, LINGER, GONE, STREAM, TLS = (int(phase) for phase in Phase)


class Client:
    """One connected peer: its socket, phase and (after the upgrade) its WebSocket connection.

    Hooks receive this object.  ``send()`` and ``close()`` may be called from
    the loop thread only (from hooks); other threads use the server's
    thread-safe methods.
    """

    __slots__ = ("server", "sock", "fd", "address", "id", "phase", "parser", "request", "path", "ws",
                 "session", "close_after_flush", "want_write", "connected_at",
                 "last_seen", "ping_sent_at", "deadline", "subprotocol", "data", "transport",
                 "parked", "tls", "rights", "paused", "waiting", "requests", "__weakref__")

    def __init__(self, server: Server, sock: socket.socket, address: Any, client_id: int,
                 now: float) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.id = client_id
        self.phase = HTTP
        self.parser: Optional[RequestParser] = None
        self.request: Optional[Request] = None  # the HTTP request being answered (see below)
        self.path = ""  # the path of the last request (kept after the upgrade)
        self.ws: Optional[WebSocketConnection] = None
        # The output queue: a plain one in the HTTP phase, then the transport session
        # (the WebSocket connection, or an HTTP streaming session).
        self.session: OutputQueue = OutputQueue()
        self.close_after_flush = False
        self.want_write = False
        self.connected_at = now
        self.last_seen = now
        self.ping_sent_at = 0.0
        self.deadline = now + server.handshake_timeout
        self.subprotocol: Optional[str] = None
        self.data: Dict[str, Any] = {}  # for applications
        self.transport: Optional[str] = None  # "websocket", "sse", "poll" once it gets messages
        self.parked = False  # an HTTP request held open (long-polling) until messages come
        self.tls = server.ssl_context is not None
        self.rights: Rights = ALL_RIGHTS  # what check_access found it may read and write
        self.paused = False  # reading stopped: pipelined responses fill the output queue
        self.waiting = False  # reading stopped: the response comes later (see reply_later)
        self.requests = 0  # HTTP requests read on this connection

    def __call__(self, revents: int) -> None:
        """The loop's handler of this client's socket (one object less per connection than a closure)."""
        self.server.handle_events(self, revents)

    @property
    def open(self) -> bool:
        return self.ws is not None and self.ws.state == OPEN

    def send(self, data: Union[str, bytes]) -> None:
        """Queue a message (``str`` → text frame, ``bytes`` → binary); flushed at the end of the turn."""
        if self.ws is not None and self.ws.state == OPEN:
            self.ws.send(data)
            self.server.queued(self)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2)."""
        self.server.close_client(self, code, reason)

    def __repr__(self) -> str:  # pragma: no cover
        return f"<Client {self.id} {self.address}>"


def peer_host(address: Any) -> Any:
    """The host of a peer address (``(host, port)``, or a Unix socket's name): what the
    per-address connection limit counts."""
    return address[0] if isinstance(address, tuple) else address


def address_text(address: Any) -> str:
    """``host:port`` of a peer address, for log lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
