"""Engine.IO v4 sessions under ``/socket.io/``: long-polling, WebSocket, the upgrade.

* the handshake (``GET ?EIO=4&transport=polling``, or a WebSocket upgrade);
* long-polling GETs, held until there is something to send, and POSTs of
  packets; a polling session counts as a connection of its address and must
  send its first GET within ``handshake_timeout``;
* the upgrade from polling to WebSocket (``2probe``/``3probe``, a ``6``
  noop to release the pending poll, ``5``);
* heartbeats (``2``/``3``) on per-session timers: a ping ``ping_interval`` after
  the open packet (or the last pong), and the session closed ``ping_timeout``
  after a ping without its pong (to the loop's timer precision, a few ms);
* the close packet.

What a session's messages mean is the Socket.IO layer's
(:mod:`zmqws.transports.socketio`); the packet formats are in
:mod:`zmqws.protocol.engineio`.  Session ids are credentials: they are never
logged (a session shows as its client id, ``PID.sioN``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

from ..logs import LogLimiter
from ..peer import address_text, peer_host
from ..protocol import engineio as eio
from ..protocol.errors import HTTPError
from ..protocol.frames import CLOSE_NORMAL, CLOSE_POLICY_VIOLATION
from ..protocol.handshake import http_response
from . import cors_headers

if TYPE_CHECKING:  # pragma: no cover
    from ..loop import Timer
    from ..peer import Client
    from ..protocol.handshake import Request
    from ..rights import Rights
    from . import Context

__all__ = ["EngineIOTransport", "EngineSession", "new_sid"]

log = logging.getLogger("zmqws")

POLLING = "polling"
WEBSOCKET = "websocket"
NOOP_PAYLOAD = eio.NOOP.encode("ascii")    # a noop packet, encoded for long-polling
CLOSE_PAYLOAD = eio.CLOSE.encode("ascii")  # a close packet, encoded for long-polling
Cors = List[Tuple[str, str]]


def new_sid() -> str:
    """A random session id (120 bits, URL-safe): what ``secrets.token_urlsafe(15)`` gives,
    without the import of hashlib (and OpenSSL's libcrypto) that ``secrets`` makes."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode("ascii")


def check_eio(request: "Request") -> None:
    """Engine.IO v4 only (``EIO=4``), as engine.io 6 answers other versions."""
    if request.query_value("EIO") != "4":
        raise eio.EngineIOError(eio.UNSUPPORTED_VERSION)


def payload_response(request: "Request", payload: bytes, cors: Cors) -> bytes:
    """A long-polling response: an encoded payload (``eio.encode_payload``)."""
    return http_response(200, payload, "text/plain; charset=UTF-8",
                         [("Cache-Control", "no-store")] + cors, keep_alive=request.keep_alive)


class Layer(Protocol):
    """What the sessions carry (:class:`zmqws.transports.socketio.SocketIOLayer`)."""

    def on_packet(self, session: "EngineSession", data: Union[str, bytes]) -> None: ...

    def moved(self, session: "EngineSession") -> None: ...

    def closed(self, session: "EngineSession", reason: str, discard: bool) -> None: ...


class EngineSession:
    """One Engine.IO session (and, in ``sockets``, its Socket.IO sockets by namespace)."""

    __slots__ = ("sid", "transport", "ws_client", "poll_client", "probe_client", "probed", "poll_cors",
                 "packets", "packet_bytes", "topics", "rights", "sockets", "reassembler", "closed",
                 "client_id", "slot", "heartbeat", "pinged", "first_poll", "address", "__weakref__")

    def __init__(self, sid: str, transport: str, topics: Tuple[str, ...], rights: "Rights",
                 client_id: bytes, address: str = "") -> None:
        self.sid = sid
        self.transport = transport
        self.ws_client: Optional["Client"] = None     # the WebSocket carrying the session
        self.poll_client: Optional["Client"] = None   # a held long-polling GET
        self.poll_cors: Cors = []                     # ... and the CORS headers of its answer
        self.probe_client: Optional["Client"] = None  # a WebSocket being probed for the upgrade
        self.probed = False                           # ... that answered the probe
        self.packets: List[bytes] = []  # waiting for the next poll: encoded payloads (eio.encode_payload)
        self.packet_bytes = 0
        self.topics = topics  # the handshake's ?topics= values (the rest of its request is not kept)
        self.rights = rights  # what the client may read and write (its authentication)
        self.sockets: Dict[str, Any] = {}  # namespace -> its connected Socket.IO socket (the layer's)
        self.reassembler: Optional[eio.Reassembler] = None
        self.closed = False
        self.client_id = client_id
        self.slot: Optional[str] = None  # a polling session counts as a connection of this address
        self.heartbeat: Optional["Timer"] = None   # the next ping, or the end of the wait for its pong
        self.pinged = False                        # ... which one: a ping was sent, no pong yet
        self.first_poll: Optional["Timer"] = None  # a polling session's first GET must come before
        self.address = address  # the handshake's remote address (the two-way channel's ``connect``)

    def __str__(self) -> str:
        """The session in log lines: its client id (``PID.sioN``), never the sid, which is a credential."""
        return self.client_id.decode("ascii")


class EngineIOTransport:
    """Engine.IO sessions of a gateway (see the module docstring)."""

    name = "socketio"

    def __init__(self, context: "Context", layer: Layer) -> None:
        self.context = context
        self.layer = layer
        config = context.config
        self.path = config.sio_path if config.sio_path.endswith("/") else config.sio_path + "/"
        self.ping_interval = config.sio_ping_interval
        self.ping_timeout = config.sio_ping_timeout
        self.sessions: Dict[str, EngineSession] = {}
        self._of: Dict["Client", EngineSession] = {}      # a WebSocket client -> the session it carries
        self._probing: Dict["Client", EngineSession] = {}  # a WebSocket probed for a session's upgrade
        self._polls: Dict["Client", EngineSession] = {}    # a held poll -> its session
        self._next_client = 0
        self._refusals = LogLimiter(log)

    def matches(self, request: "Request") -> bool:
        return request.path == self.path or request.path + "/" == self.path

    def counts(self) -> Dict[str, int]:
        """Sessions on long-polling (their WebSockets count as connections of transport "socketio")."""
        return {"socketio-polling": sum(1 for s in self.sessions.values() if s.transport == POLLING)}

    def holds_poll(self, client: "Client") -> bool:
        return client in self._polls

    # -- HTTP: handshake, long-polling GET and POST ------------------------------------

    def handle_http(self, client: "Client", request: "Request") -> None:
        response = self._respond(client, request)
        if response is not None:
            # Sent here, not returned: a returned response closes the connection after it,
            # and these say "Connection: keep-alive" (clients reuse the connection at once).
            self.context.server.http_reply(client, response, keep_alive=True)

    def _respond(self, client: "Client", request: "Request") -> Optional[bytes]:
        cors = cors_headers(request, self.context.cors_origins)
        if request.method == "OPTIONS":
            if cors:
                return http_response(204, headers=cors + [("Access-Control-Allow-Methods", "GET, POST"),
                                                          ("Access-Control-Allow-Headers", "Content-Type")],
                                     keep_alive=request.keep_alive)
            raise HTTPError(405, "method not allowed", [("Allow", "GET, POST")])
        try:
            check_eio(request)
            transport = request.query_value("transport")
            if transport != POLLING:
                raise eio.EngineIOError(eio.UNKNOWN_TRANSPORT if transport != WEBSOCKET else eio.BAD_REQUEST)
            sid = request.query_value("sid")
            if sid is None:
                if request.method != "GET":
                    raise eio.EngineIOError(eio.BAD_HANDSHAKE_METHOD)
                return self._handshake_polling(client, request, cors)
            session = self.sessions.get(sid)
            if session is None:
                raise eio.EngineIOError(eio.UNKNOWN_SID)
            self._check_access(client, request)  # every request of a session, not the handshake only
            if session.transport != POLLING:
                raise eio.EngineIOError(eio.BAD_REQUEST, "Bad request: transport mismatch")
            if request.method == "GET":
                self._poll(client, session, cors)
                return None
            if request.method == "POST":
                return self._post(session, request, cors)
            raise eio.EngineIOError(eio.BAD_REQUEST)
        except eio.EngineIOError as exc:
            self.context.server.stats.http_errors += 1
            return http_response(exc.status, exc.body(), "application/json", cors, keep_alive=request.keep_alive)

    def _open_packet(self, session: EngineSession, upgrades: List[str]) -> str:
        return eio.OPEN + json.dumps({
            "sid": session.sid, "upgrades": upgrades,
            "pingInterval": int(self.ping_interval * 1000), "pingTimeout": int(self.ping_timeout * 1000),
            "maxPayload": self.context.server.max_message_size}, separators=(",", ":"))

    def _new_session(self, client: "Client", request: "Request", transport: str) -> EngineSession:
        """A session for a client whose access was checked; only the handshake's ``topics``
        are kept of its request."""
        self._next_client += 1
        session = EngineSession(new_sid(), transport, tuple(request.query.get("topics", ())), client.rights,
                                f"{os.getpid()}.sio{self._next_client}".encode(), address_text(client.address))
        self.sessions[session.sid] = session
        self.context.server.stats.sio_sessions += 1
        self._heartbeat(session, self.ping_interval, self._ping)
        log.debug("socket.io session %s opened over %s", session, transport)
        return session

    def _check_access(self, client: "Client", request: "Request") -> None:
        """The server's origin and token checks, as Engine.IO errors (403, or 400)."""
        try:
            self.context.server.check_access(client, request)
        except HTTPError as exc:
            code = eio.FORBIDDEN if exc.status in (401, 403) else eio.BAD_REQUEST
            raise eio.EngineIOError(code, exc.reason) from None

    def _handshake_polling(self, client: "Client", request: "Request", cors: Cors) -> bytes:
        """A polling session counts as a connection of the handshake's address (503 over the
        connection limits) and must poll within ``handshake_timeout`` (else it is closed)."""
        server = self.context.server
        self._check_access(client, request)
        host = peer_host(client.address)
        if not server.take_slot(host):
            self._refusals.log(logging.INFO, "refuse", "refusing a socket.io session from %s: connection limit",
                               host)
            raise HTTPError(503, "too many connections", [("Retry-After", "5")])
        session = self._new_session(client, request, POLLING)
        session.slot = host
        if server.handshake_timeout > 0:
            session.first_poll = self._timer(server.handshake_timeout, lambda: self._no_first_poll(session))
        return payload_response(request, self._open_packet(session, [WEBSOCKET]).encode("utf-8"), cors)

    def _release_slot(self, session: EngineSession) -> None:
        """The session no longer counts as a connection (closed, or carried by a WebSocket now)."""
        if session.slot is not None:
            self.context.server.release_slot(session.slot)
            session.slot = None
        self._first_poll_came(session)

    @staticmethod
    def _first_poll_came(session: EngineSession) -> None:
        if session.first_poll is not None:
            session.first_poll.cancel()
            session.first_poll = None

    def _poll(self, client: "Client", session: EngineSession, cors: Cors) -> None:
        if session.poll_client is not None:
            # Two polls at once: engine.io answers 400 and closes the session.
            self.close_session(session, "overlapping polls")
            raise eio.EngineIOError(eio.BAD_REQUEST, "Bad request: overlapping polls")
        self._first_poll_came(session)
        if not session.packets and session.probe_client is not None and session.probed:
            # Upgrading: the client waits for this poll to end before it sends "5" (engine.io
            # answers polls with a noop while upgrading); holding it would stall the upgrade.
            session.packets.append(NOOP_PAYLOAD)
        session.poll_client = client
        session.poll_cors = cors
        if session.packets:
            self._answer_poll(session)
            return
        self._polls[client] = session
        self.context.server.park(client, time.monotonic() + self.ping_interval + self.ping_timeout, self.name)

    def _answer_poll(self, session: EngineSession) -> None:
        """The held poll gets the packets waiting (the session stays)."""
        client = session.poll_client
        assert client is not None and client.request is not None
        payload = eio.SEPARATOR_BYTES.join(session.packets)
        session.packets, session.packet_bytes = [], 0
        session.poll_client = None
        self._polls.pop(client, None)
        client.transport = None
        self.context.server.http_reply(client, payload_response(client.request, payload, session.poll_cors),
                                       keep_alive=True)

    def _post(self, session: EngineSession, request: "Request", cors: Cors) -> bytes:
        if request.header("content-type") == "application/octet-stream":
            self.close_session(session, "binary POST")
            raise eio.EngineIOError(eio.BAD_REQUEST, "Bad request: binary content")
        try:
            packets = eio.decode_payload(request.body)
            for kind, data in packets:
                self._packet(session, kind, data)
                if session.closed:
                    break
        except Exception as exc:  # one bad packet ends its session, never the loop
            self._bad_packet(session, exc)
            self.close_session(session, "bad packet")
            reason = str(exc) if isinstance(exc, eio.SocketIOError) else "invalid packet"
            raise eio.EngineIOError(eio.BAD_REQUEST, f"Bad request: {reason}") from None
        return http_response(200, b"ok", "text/html", cors, keep_alive=request.keep_alive)

    def poll_deadline(self, client: "Client") -> None:
        """A held poll reached its deadline: release it with a noop (the session stays)."""
        session = self._polls.get(client)
        if session is not None:
            if not session.packets:
                session.packets.append(NOOP_PAYLOAD)
            self._answer_poll(session)

    # -- WebSocket ---------------------------------------------------------------------

    def check_upgrade(self, request: "Request") -> None:
        """Before the 101: Engine.IO's checks for a WebSocket request (400 with its message).
        A session that is already upgraded (or upgrading) is not an HTTP error: that
        WebSocket opens and is closed at once (:meth:`on_open`), as engine.io does."""
        try:
            check_eio(request)
            if request.query_value("transport") != WEBSOCKET:
                raise eio.EngineIOError(eio.UNKNOWN_TRANSPORT)
            sid = request.query_value("sid")
            if sid is not None and sid not in self.sessions:
                raise eio.EngineIOError(eio.UNKNOWN_SID)
        except eio.EngineIOError as exc:
            raise HTTPError(exc.status, exc.message) from None

    def on_open(self, client: "Client") -> None:
        request = client.request
        assert request is not None
        client.transport = self.name
        sid = request.query_value("sid")
        if sid is not None:
            session = self.sessions.get(sid)  # checked before the 101 (it may have closed since)
            if session is None or session.transport != POLLING or session.probe_client is not None:
                client.close(CLOSE_NORMAL, "")  # engine.io: a second transport is closed at once
                return
            session.probe_client = client
            self._probing[client] = session
            return
        session = self._new_session(client, request, WEBSOCKET)  # check_access ran before the 101
        session.ws_client = client
        self._of[client] = session
        client.send(self._open_packet(session, []))

    def on_message(self, client: "Client", data: Union[str, bytes]) -> None:
        session = self._of.get(client)
        try:
            if session is None:
                probing = self._probing.get(client)
                if probing is not None:
                    self._probe(client, probing, data)
                return
            kind, payload = eio.decode_ws_frame(data)
            self._packet(session, kind, payload)
        except Exception as exc:  # one bad packet ends its session, never the loop
            self._bad_packet(session if session is not None else client.id, exc)
            if session is not None:
                self.close_session(session, "bad packet")
            else:
                client.close(CLOSE_POLICY_VIOLATION, "parse error")

    def _bad_packet(self, who: Any, exc: Exception) -> None:
        """Count and log (one line, no traceback) a packet that ends its session: malformed
        (:class:`~zmqws.protocol.errors.SocketIOError`), or one this module failed on."""
        self.context.server.stats.protocol_errors += 1
        if isinstance(exc, eio.SocketIOError):
            log.info("socket.io client %s: %s", who, exc)
        else:
            log.warning("socket.io client %s: closed after an error in its packet: %r", who, exc)

    def _probe(self, client: "Client", session: EngineSession, data: Union[str, bytes]) -> None:
        """The upgrade of a polling session: 2probe → 3probe (and a noop to the poll), then 5."""
        if data == eio.PING + "probe":
            client.send(eio.PONG + "probe")
            session.probed = True
            if session.poll_client is not None:
                session.packets.append(NOOP_PAYLOAD)
                self._answer_poll(session)
            return
        if data == eio.UPGRADE:
            session.transport = WEBSOCKET
            self._release_slot(session)  # its WebSocket is a connection of its own
            session.ws_client = client
            session.probe_client = None
            session.probed = False
            del self._probing[client]
            self._of[client] = session
            pending, session.packets, session.packet_bytes = session.packets, [], 0
            for kind, payload in eio.decode_payloads(pending):
                self._send_ws(client, kind, payload)
            if session.poll_client is not None:  # a poll still held: release it
                session.packets.append(NOOP_PAYLOAD)
                self._answer_poll(session)
            self.layer.moved(session)
            log.debug("socket.io session %s upgraded to websocket", session)
            return
        raise eio.SocketIOError("unexpected packet during the upgrade")

    def gone(self, client: "Client") -> None:
        """A client of this transport stops (its WebSocket closes, or a held poll's connection)."""
        session = self._of.pop(client, None)
        if session is not None and session.ws_client is client:
            self.close_session(session, "transport closed", notify=False)
        probing = self._probing.pop(client, None)
        if probing is not None and probing.probe_client is client:
            probing.probe_client = None
            probing.probed = False
        polled = self._polls.pop(client, None)
        if polled is not None and polled.poll_client is client:
            polled.poll_client = None  # the held poll's connection went away

    # -- sending -------------------------------------------------------------------------

    def send(self, session: EngineSession, packets: List[eio.Packet]) -> None:
        """Engine.IO packets to a session, over its current transport."""
        if session.transport != WEBSOCKET:
            self.send_payload(session, eio.encode_payload(packets))
        elif not session.closed:
            assert session.ws_client is not None
            for kind, payload in packets:
                self._send_ws(session.ws_client, kind, payload)

    def send_payload(self, session: EngineSession, payload: bytes) -> None:
        """Packets encoded for long-polling (``eio.encode_payload``) to a session: the same
        ``bytes`` may go to many sessions (an event's packets are encoded once for all)."""
        if session.closed:
            return
        if session.transport == WEBSOCKET:
            self.send(session, eio.decode_payloads([payload]))
            return
        session.packets.append(payload)
        session.packet_bytes += len(payload) + 1
        if session.packet_bytes > self.context.server.max_queue:
            self.context.server.stats.slow_closed += 1
            self.close_session(session, "slow consumer")
            return
        if session.poll_client is not None:
            self._answer_poll(session)

    @staticmethod
    def _send_ws(client: "Client", kind: str, payload: Union[str, bytes]) -> None:
        client.send(payload if isinstance(payload, bytes) else kind + payload)

    def write_now(self, session: EngineSession) -> None:
        """Over WebSocket: write what is queued for the session now, in a write of its own (a
        Socket.IO CONNECT answer, before the events that follow it: some clients read one
        frame per read)."""
        if session.transport == WEBSOCKET and session.ws_client is not None and not session.closed:
            self.context.server.write_now(session.ws_client)

    # -- Engine.IO packets from the client -------------------------------------------------------

    def _packet(self, session: EngineSession, kind: str, data: Union[str, bytes]) -> None:
        if kind == eio.PONG:
            if session.pinged:
                self._heartbeat(session, self.ping_interval, self._ping)
        elif kind == eio.PING:
            self.send(session, [(eio.PONG, data if isinstance(data, str) else "")])
        elif kind == eio.MESSAGE:
            self.layer.on_packet(session, data)
        elif kind == eio.CLOSE:
            self.close_session(session, "client close", notify=False)
        elif kind != eio.NOOP:
            raise eio.SocketIOError(f"unexpected packet {kind!r}")

    # -- timers and closing ----------------------------------------------------------------

    def _timer(self, delay: float, callback: Callable[[], None]) -> "Timer":
        loop = self.context.server.loop
        assert loop is not None
        return loop.call_later(delay, callback)

    def _heartbeat(self, session: EngineSession, delay: float, then: Callable[[EngineSession], None]) -> None:
        """The session's one heartbeat timer: ``then(session)`` in ``delay`` seconds (the previous
        timer cancelled)."""
        if session.heartbeat is not None:
            session.heartbeat.cancel()
        session.pinged = then == self._ping_timeout
        session.heartbeat = self._timer(delay, lambda: then(session))

    def _ping(self, session: EngineSession) -> None:
        """Engine.IO v4 heartbeat: the server pings every ``ping_interval`` and waits ``ping_timeout``
        for the pong."""
        if not session.closed:
            self._heartbeat(session, self.ping_timeout, self._ping_timeout)  # cancelled if the send closes it
            self.send(session, [(eio.PING, "")])

    def _ping_timeout(self, session: EngineSession) -> None:
        if not session.closed:
            self.context.server.stats.ping_timeouts += 1
            self.close_session(session, "ping timeout")

    def _no_first_poll(self, session: EngineSession) -> None:
        session.first_poll = None
        if not session.closed:
            self.context.server.stats.handshake_timeouts += 1
            self.close_session(session, "no poll after the handshake")

    def close_session(self, session: EngineSession, reason: str, notify: bool = True) -> None:
        if session.closed:
            return
        self.layer.closed(session, reason, discard=not notify)
        self._release_slot(session)
        if session.heartbeat is not None:
            session.heartbeat.cancel()
            session.heartbeat = None
        session.closed = True
        self.sessions.pop(session.sid, None)
        log.debug("socket.io session %s closed: %s", session, reason)
        if session.transport == WEBSOCKET and session.ws_client is not None:
            client = session.ws_client
            if notify and client.open:
                self._send_ws(client, eio.CLOSE, "")
            self._of.pop(client, None)
            client.close(CLOSE_NORMAL, "")
        elif session.poll_client is not None:
            # The held poll ends with a close packet, or with a noop (and nothing that waited,
            # as engine.io drops its write buffer) when the client itself closed.
            if not notify:
                session.packets, session.packet_bytes = [], 0
            session.packets.append(CLOSE_PAYLOAD if notify else NOOP_PAYLOAD)
            self._answer_poll(session)
        if session.probe_client is not None:
            session.probe_client.close(CLOSE_NORMAL, "")

