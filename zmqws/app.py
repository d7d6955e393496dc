"""What the WebSocket server asks of the application on top of it.

:class:`~zmqws.server.WebSocketServer` owns connections and I/O and knows
nothing of what the bytes mean beyond HTTP and RFC 6455; at each step where
an application decides, it calls its :class:`App`.  The base class is the
plain server's behaviour: the ``on_connect``/``on_message``/``on_disconnect``
hooks, 404 for every plain HTTP request.  The gateway's app
(:class:`zmqws.gateway.GatewayApp`) hands each step to the transport of the
client instead.

Every method runs on the loop thread and must not block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from .protocol.errors import HTTPError

if TYPE_CHECKING:  # pragma: no cover
    from .peer import Client
    from .protocol.connection import Message
    from .protocol.handshake import Request

__all__ = ["App", "MessageHook"]

MessageHook = Callable[["Client", Union[str, bytes]], Any]


class Server(Protocol):
    """What the base app needs of its server (:class:`zmqws.server.WebSocketServer`)."""

    def call_hook(self, client: "Client", hook: Callable[..., Any], *args: Any) -> None: ...

    def abort(self, client: "Client") -> None: ...


class App:
    """The plain server's application: the hooks (see :class:`~zmqws.server.WebSocketServer`)."""

    server: Server

    def __init__(self, on_connect: Optional[Callable[["Client"], Any]] = None,
                 on_message: Optional[MessageHook] = None,
                 on_disconnect: Optional[Callable[["Client"], Any]] = None) -> None:
        self.on_connect = on_connect
        self.on_message_hook = on_message
        self.on_disconnect = on_disconnect

    def attach(self, server: Server) -> None:
        """The server this app serves (called once, by the server's constructor)."""
        self.server = server

    def setup(self) -> None:
        """The server listens and its loop is not running yet: create and register sockets."""

    def teardown(self) -> None:
        """The loop has stopped: release what :meth:`setup` made."""

    def handle_http(self, client: "Client", request: "Request") -> Optional[bytes]:
        """A plain (non-upgrade) HTTP request: a whole response, or None when the app answers
        itself (later, as a stream, or a held request).  Raise :class:`HTTPError` to refuse."""
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed", [("Allow", "GET, HEAD")])
        raise HTTPError(404, "not found")

    def body_limit(self, request: "Request") -> int:
        """The largest body ``request`` (its head) may carry; 0: none (413 for any, unread)."""
        return 0

    def accept_websocket(self, client: "Client", request: "Request") -> None:
        """Before the 101 response: raise :class:`HTTPError` to refuse the upgrade."""

    def on_open(self, client: "Client") -> None:
        """The 101 response is queued."""
        if self.on_connect is not None:
            self.server.call_hook(client, self.on_connect, client)

    def on_message(self, client: "Client", message: "Message") -> None:
        """A whole message from a WebSocket client."""
        if self.on_message_hook is not None:
            data = message.data if message.binary else message.data.decode("utf-8")
            self.server.call_hook(client, self.on_message_hook, client, data)

    def on_ping(self, client: "Client") -> None:
        """A ping from a client (its pong is already queued)."""

    def on_stop(self) -> None:
        """The server begins to stop (its clients are closed next)."""

    def on_closing(self, client: "Client") -> None:
        """The client receives no more messages (its close began or ended); may come twice."""

    def on_close(self, client: "Client") -> None:
        """The client's connection is gone (once)."""
        if self.on_disconnect is not None and client.ws is not None:
            self.server.call_hook(client, self.on_disconnect, client)

    def on_deadline(self, client: "Client") -> None:
        """A held request's deadline (``client.parked``) passed."""
        self.server.abort(client)

    def on_stream_tick(self, client: "Client", now: float) -> None:
        """Once a second for every streaming HTTP response (heartbeats)."""

    def on_refill(self, client: "Client") -> None:
        """A client asked to be told (``refill_when_drained``) has drained below half its bound."""
