"""The two-way channel (``--rpc ENDPOINT``): requests, messages and client events to the
application behind ZeroMQ, replies, sends and closes back.  No I/O.

The application holds a ROUTER; the gateway a DEALER (:mod:`zmqws.upstream` owns the
socket and hands this room the frames).  Every frame is one ZeroMQ message part, ids
are ASCII, there is no empty delimiter frame.

Gateway → application::

    connect     client id, info (JSON)                 a client joined
    disconnect  client id, reason                      it left
    request     client id, request id, topic, payload, attachments...
    message     client id, topic, payload, attachments...

Application → gateway::

    reply       client id, request id, ok|error, payload, attachments...
    send        client id, topic, payload, attachments...
    close       client id, code, reason

A transport tells this room of its clients (:meth:`Rpc.connected`,
:meth:`Rpc.disconnected`) and passes their requests and messages on
(:meth:`Rpc.request`, :meth:`Rpc.message`); the room calls the transport back
through :class:`Target` to deliver a send or a close, and a request's
``on_reply`` with its outcome.  Bounds: ``rpc_max_inflight`` requests per
client, ``rpc_timeout`` seconds per request (one timer for all: requests
expire in the order they were made), the DEALER's send never blocks (no
application or its high-water mark reached: an immediate error).  Rights:
the topic of a request or message must be within the client's write prefixes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence

from .protocol.frames import is_valid_close_code

if TYPE_CHECKING:  # pragma: no cover
    from .config import UpstreamConfig
    from .loop import Timer
    from .rights import Rights
    from .stats import Stats

__all__ = ["Rpc", "Target", "Outcome", "OnReply", "client_info", "embed"]

log = logging.getLogger("zmqws")

CONNECT, DISCONNECT, REQUEST, MESSAGE = b"connect", b"disconnect", b"request", b"message"
REPLY, SEND, CLOSE = b"reply", b"send", b"close"
OK, ERROR = b"ok", b"error"

NOT_WRITABLE = "topic not allowed for writing"
TOO_MANY = "too many requests in flight"
NO_APPLICATION = "no application connected, or it is not keeping up"
TIMEOUT = "timeout"


class Outcome(IntEnum):
    """How a request ended: the application's answer, or the gateway's refusal; ``status`` is
    the HTTP answer of ``POST /rpc``."""

    OK = 200
    ERROR = 502        # the application replied with an error
    TIMEOUT = 504      # no reply within rpc_timeout
    FORBIDDEN = 403    # the topic is outside the client's write rights
    BUSY = 429         # rpc_max_inflight requests of this client are waiting already
    UNAVAILABLE = 503  # no application connected, or its high-water mark reached


#: ``on_reply(outcome, payload, attachments)``: for a refusal or a timeout, the payload is
#: the reason in UTF-8 (``b"timeout"``...) and there are no attachments.
OnReply = Callable[[Outcome, bytes, List[bytes]], None]


class Target(Protocol):
    """What the rpc room needs of a transport to reach one of its clients (``member``)."""

    def rpc_send(self, member: Any, topic: bytes, payload: bytes, attachments: List[bytes]) -> bool:
        """One message to that client in its own envelope; False when it cannot take it."""

    def rpc_close(self, member: Any, code: int, reason: str) -> None:
        """Disconnect that client (a WebSocket close ``code``; other transports end it)."""


def client_info(transport: str, address: str, rights: "Rights", topics: Sequence[bytes],
                namespace: Optional[str] = None, query: Optional[Dict[str, List[str]]] = None,
                auth: Any = None) -> Dict[str, Any]:
    """The ``connect`` frame's info: transport (the name ``/metrics`` uses), namespace
    (Socket.IO), remote address, token name (None without one), topics, and what the client
    said when it came: its query (never its ``token``) or its Socket.IO CONNECT payload."""
    info: Dict[str, Any] = {
        "transport": transport, "namespace": namespace, "address": address, "token": rights.name,
        "topics": [t.decode("utf-8", "replace") for t in topics]}
    if query is not None:
        info["query"] = {k: v for k, v in query.items() if k != "token"}
    if auth is not None:
        info["auth"] = auth
    return info


def embed(payload: bytes) -> Any:
    """A reply payload inside a JSON answer: as JSON when it parses, else as a string."""
    try:
        return json.loads(payload)
    except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
        return payload.decode("utf-8", "replace")


class _Client:
    __slots__ = ("target", "member", "requests")

    def __init__(self, target: Target, member: Any) -> None:
        self.target = target
        self.member = member
        self.requests: Dict[bytes, None] = {}  # its requests in flight


class _Pending:
    __slots__ = ("client_id", "deadline", "on_reply")

    def __init__(self, client_id: bytes, deadline: float, on_reply: OnReply) -> None:
        self.client_id = client_id
        self.deadline = deadline
        self.on_reply = on_reply


class Rpc:
    """See the module docstring.  ``send(parts)``: the DEALER's non-blocking send (False when
    it would block); ``call_later(delay, callback)``: the loop's timers."""

    def __init__(self, config: "UpstreamConfig", stats: "Stats", send: Callable[[List[bytes]], bool],
                 call_later: Callable[[float, Callable[[], None]], "Timer"]) -> None:
        self.max_inflight = config.rpc_max_inflight
        self.timeout = config.rpc_timeout
        self.stats = stats
        self._send = send
        self._call_later = call_later
        self.clients: Dict[bytes, _Client] = {}
        # Every request has the same timeout, so they expire in the order they were made:
        # the oldest is first, and one timer (for the first) serves them all.
        self._pending: "OrderedDict[bytes, _Pending]" = OrderedDict()
        self._timer: Optional["Timer"] = None
        self._next_request = 0

    # -- from the transports ------------------------------------------------------------

    def connected(self, client_id: bytes, target: Target, member: Any, info: Dict[str, Any]) -> None:
        """A client joined: ``connect`` (a client id known already is replaced: it left first)."""
        if client_id in self.clients:
            self.disconnected(client_id, "replaced")
        self.clients[client_id] = _Client(target, member)
        self._out([CONNECT, client_id, json.dumps(info, separators=(",", ":")).encode("utf-8")])

    def disconnected(self, client_id: bytes, reason: str) -> None:
        """A client left: ``disconnect``; its requests in flight are dropped (a later reply for
        one of them is counted as unknown).  Nothing for a client not (or no longer) known."""
        client = self.clients.pop(client_id, None)
        if client is None:
            return
        for request_id in client.requests:
            self._pending.pop(request_id, None)
        self._out([DISCONNECT, client_id, reason.encode("utf-8")])

    def knows(self, client_id: bytes) -> bool:
        return client_id in self.clients

    def request(self, client_id: bytes, rights: "Rights", topic: bytes, payload: bytes,
                attachments: Sequence[bytes], on_reply: OnReply) -> None:
        """A client asks: ``request`` upstream; ``on_reply`` is called once with the outcome
        (at once for a refusal), unless the client leaves first."""
        stats = self.stats
        if not rights.may_write(topic):
            stats.writes_refused += 1
            on_reply(Outcome.FORBIDDEN, NOT_WRITABLE.encode(), [])
            return
        client = self.clients.get(client_id)
        if client is not None and len(client.requests) >= self.max_inflight:
            stats.rpc_refused += 1
            on_reply(Outcome.BUSY, TOO_MANY.encode(), [])
            return
        self._next_request += 1
        request_id = str(self._next_request).encode("ascii")
        if not self._out([REQUEST, client_id, request_id, topic, payload, *attachments]):
            on_reply(Outcome.UNAVAILABLE, NO_APPLICATION.encode(), [])
            return
        stats.rpc_requests += 1
        self._pending[request_id] = _Pending(client_id, time.monotonic() + self.timeout, on_reply)
        if client is not None:
            client.requests[request_id] = None
        if self._timer is None:
            self._timer = self._call_later(self.timeout, self._expire)

    def message(self, client_id: bytes, rights: "Rights", topic: bytes, payload: bytes,
                attachments: Sequence[bytes] = ()) -> Optional[str]:
        """A client message that needs no answer: ``message`` upstream; None when sent, else
        why not (its rights, or no application)."""
        if not rights.may_write(topic):
            self.stats.writes_refused += 1
            return NOT_WRITABLE
        if not self._out([MESSAGE, client_id, topic, payload, *attachments]):
            return NO_APPLICATION
        self.stats.rpc_messages += 1
        return None

    def _out(self, parts: List[bytes]) -> bool:
        if self._send(parts):
            return True
        self.stats.rpc_unavailable += 1
        return False

    # -- timeouts ------------------------------------------------------------------------

    def _expire(self) -> None:
        """The loop's timer: every request past its deadline gets ``timeout``; the timer is
        set again for the oldest one left."""
        self._timer = None
        pending = self._pending
        now = time.monotonic()
        while pending:
            request_id, first = next(iter(pending.items()))
            if first.deadline > now:
                self._timer = self._call_later(first.deadline - now, self._expire)
                return
            del pending[request_id]
            self._forget(first.client_id, request_id)
            self.stats.rpc_timeouts += 1
            self._answer(first, Outcome.TIMEOUT, TIMEOUT.encode(), [])

    def _forget(self, client_id: bytes, request_id: bytes) -> None:
        client = self.clients.get(client_id)
        if client is not None:
            client.requests.pop(request_id, None)

    @staticmethod
    def _answer(pending: _Pending, outcome: Outcome, payload: bytes, attachments: List[bytes]) -> None:
        """A request's outcome to its transport; an exception there is that client's alone."""
        try:
            pending.on_reply(outcome, payload, attachments)
        except Exception:
            log.exception("rpc: cannot deliver the reply of client %s", pending.client_id.decode("ascii", "replace"))

    # -- from the application -----------------------------------------------------------------

    def on_frames(self, parts: List[bytes]) -> None:
        """One message of the application (``reply``, ``send`` or ``close``)."""
        kind = parts[0] if parts else b""
        if kind == REPLY and len(parts) >= 5 and parts[3] in (OK, ERROR):
            self._reply(parts[1], parts[2], parts[3] == OK, parts[4], parts[5:])
        elif kind == SEND and len(parts) >= 4:
            self._deliver(parts[1], parts[2], parts[3], parts[4:])
        elif kind == CLOSE and len(parts) == 4 and parts[2].isdigit() and is_valid_close_code(int(parts[2])):
            self._close(parts[1], int(parts[2]), parts[3].decode("utf-8", "replace"))
        else:
            self.stats.malformed += 1
            log.debug("rpc: malformed frames from the application: %r", parts[:3])

    def _reply(self, client_id: bytes, request_id: bytes, ok: bool, payload: bytes, attachments: List[bytes]) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.client_id != client_id:
            self.stats.rpc_unknown += 1  # timed out, its client left, or never asked
            return
        del self._pending[request_id]
        self._forget(client_id, request_id)
        self.stats.rpc_replies += 1
        self._answer(pending, Outcome.OK if ok else Outcome.ERROR, payload, attachments)

    def _deliver(self, client_id: bytes, topic: bytes, payload: bytes, attachments: List[bytes]) -> None:
        client = self.clients.get(client_id)
        if client is None or not client.target.rpc_send(client.member, topic, payload, attachments):
            self.stats.rpc_unknown += 1
            return
        self.stats.rpc_sends += 1

    def _close(self, client_id: bytes, code: int, reason: str) -> None:
        client = self.clients.get(client_id)
        if client is None:
            self.stats.rpc_unknown += 1
            return
        self.stats.rpc_closes += 1
        client.target.rpc_close(client.member, code, reason)
