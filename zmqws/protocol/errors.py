"""One error hierarchy: every refusal carries what the peer must be told.

* :class:`HTTPError`: an HTTP status (RFC 9110 §15) and reason, before or
  instead of an upgrade (400, 401, 403, 404, 405, 413, 426, 431, 503...).
* :class:`ProtocolError`: a WebSocket close code (RFC 6455 §7.4.1) after the
  upgrade (1002 protocol, 1007 invalid payload, 1008 policy, 1009 too big).
* :class:`EngineIOError`: an Engine.IO v4 HTTP error, an :class:`HTTPError`
  whose body is ``{"code", "message"}`` (engine.io's ``Server.errors``).
* :class:`SocketIOError`: a malformed Engine.IO or Socket.IO packet; the
  session that sent it is closed.

Policy refusals (:class:`zmqws.rights.TopicRefused`) derive from
:class:`ZmqwsError` too, with the HTTP status each transport maps.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

__all__ = ["ZmqwsError", "HTTPError", "ProtocolError", "SocketIOError"]


class ZmqwsError(Exception):
    """The base of every error zmqws answers a peer with."""


class HTTPError(ZmqwsError):
    """A request that gets an error response: ``status``, a short ``reason`` and extra headers."""

    def __init__(self, status: int, reason: str, headers: Sequence[Tuple[str, str]] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers: List[Tuple[str, str]] = list(headers)


class ProtocolError(ZmqwsError):
    """The peer broke the protocol; ``code`` is the close code to tell it (RFC 6455 §7.4.1)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SocketIOError(ZmqwsError, ValueError):
    """A malformed Engine.IO or Socket.IO packet: the session that sent it is closed."""
