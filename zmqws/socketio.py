"""Socket.IO clients on the gateway: Engine.IO v4 sessions over long-polling and WebSocket.

:class:`SocketIOEndpoint` lives inside a :class:`~zmqws.gateway.Gateway` and
answers under ``/socket.io/`` on the same port and loop.  The packet formats
are in :mod:`zmqws.protocol.engineio`; this module keeps the sessions:

* the handshake (``GET ?EIO=4&transport=polling`` or a WebSocket upgrade),
  long-polling GETs (held until there is something to send) and POSTs, the
  upgrade from polling to WebSocket (``2probe``/``3probe``, a ``6`` noop to
  release the pending poll, ``5``), heartbeats (``2``/``3``) and timeouts;
* Socket.IO on top: CONNECT to ``/`` (other namespaces get CONNECT_ERROR),
  EVENTs both ways with binary attachments, acknowledgements, DISCONNECT,
  and connection state recovery (``pid``/``offset``) from the gateway's
  history;
* routing like any gateway client: a ZeroMQ message becomes the event
  ``message`` (or its topic with ``sio_event="topic"``) with the payload (a
  string when UTF-8, else a binary attachment) and the message id as the
  offset.  WebSocket sessions get frames encoded once per message for all of
  them; polling sessions get packets queued until their next GET.

Client events: ``subscribe``/``unsubscribe`` (a prefix or a list; the ack
carries ``{"topics": [...]}``); any other event is forwarded upstream as
``[event name, client id, first argument]`` and acknowledged with
``{"ok": true}`` (``false`` and an ``error`` when it could not be sent).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from .protocol import engineio as eio
from .protocol.frames import CLOSE_POLICY_VIOLATION, OP_BINARY, OP_TEXT, frame_header
from .protocol.handshake import HTTPError, Request, http_response
from .rights import Rights, TopicRefused
from .routing import Stored, parse_id
from .server import peer_host

if TYPE_CHECKING:  # pragma: no cover
    from .gateway import Gateway
    from .server import Client

__all__ = ["SocketIOEndpoint", "EngineSession"]

log = logging.getLogger("zmqws")


def _new_sid() -> str:
    """A random session id (120 bits, URL-safe): what ``secrets.token_urlsafe(15)`` gives,
    without the import of hashlib (and OpenSSL's libcrypto) that ``secrets`` makes."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode("ascii")

POLLING = "polling"
WEBSOCKET = "websocket"
SIO_POLL_WIRE = ("sio", "poll")


class EngineSession:
    """One Engine.IO session (and its Socket.IO socket on the main namespace)."""

    __slots__ = ("sid", "transport", "ws_client", "poll_client", "probe_client", "packets",
                 "packet_bytes", "last_seen", "ping_sent_at", "next_ping", "topics", "rights",
                 "sio_sid", "pid", "connected", "reassembler", "closed", "client_id", "slot",
                 "first_poll_by", "__weakref__")

    def __init__(self, sid: str, transport: str, topics: Tuple[str, ...], rights: Rights, now: float,
                 client_id: bytes) -> None:
        self.sid = sid
        self.transport = transport
        self.ws_client: Optional["Client"] = None     # the WebSocket carrying the session
        self.poll_client: Optional["Client"] = None   # a held long-polling GET
        self.probe_client: Optional["Client"] = None  # a WebSocket being probed for the upgrade
        self.packets: List[eio.Packet] = []           # waiting for the next poll
        self.packet_bytes = 0
        self.last_seen = now
        self.ping_sent_at = 0.0
        self.next_ping = 0.0
        self.topics = topics  # the handshake's ?topics= values (the rest of its request is not kept)
        self.rights = rights  # what the client may read and write (its authentication)
        self.sio_sid: Optional[str] = None
        self.pid: Optional[str] = None
        self.connected = False
        self.reassembler: Optional[eio.Reassembler] = None
        self.closed = False
        self.client_id = client_id
        self.slot: Optional[str] = None  # a polling session counts as a connection of this address
        self.first_poll_by = 0.0         # a polling session's first GET must come before (0: came)

    def __str__(self) -> str:
        """The session in log lines: its client id (``PID.sioN``), never the sid, which is a credential."""
        return self.client_id.decode("ascii")

    @property
    def member(self) -> Any:
        """What the gateway routes to: the WebSocket client, or the session itself when polling."""
        return self.ws_client if self.transport == WEBSOCKET else self


class SocketIOEndpoint:
    """Engine.IO/Socket.IO server side for a gateway (see the module docstring)."""

    def __init__(self, gateway: "Gateway", *, path: str = "/socket.io/", event: str = "message",
                 ping_interval: float = 25.0, ping_timeout: float = 20.0,
                 recovery_seconds: float = 120.0) -> None:
        self.gateway = gateway
        self.path = path if path.endswith("/") else path + "/"
        self.event = event  # an event name, or "topic" to use the message's topic
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.recovery_seconds = recovery_seconds
        self.sessions: Dict[str, EngineSession] = {}
        self._recoverable: Dict[str, Tuple[str, List[bytes], float]] = {}  # pid -> (sio sid, topics, until)
        self._next_client = 0

    def matches(self, request: Request) -> bool:
        return request.path == self.path or request.path + "/" == self.path

    def counts(self) -> Dict[str, int]:
        """Sessions on long-polling (their WebSockets count as connections of transport "socketio")."""
        return {"socketio-polling": sum(1 for s in self.sessions.values() if s.transport == POLLING)}

    # -- HTTP: handshake, long-polling GET and POST ------------------------------------

    def handle_http(self, client: "Client", request: Request) -> Optional[bytes]:
        response = self._respond(client, request)
        if response is not None:
            # Sent here, not returned: a returned response closes the connection after it,
            # and these say "Connection: keep-alive" (clients reuse the connection at once).
            self.gateway.http_reply(client, response, keep_alive=True)
        return None

    def _respond(self, client: "Client", request: Request) -> Optional[bytes]:
        gateway = self.gateway
        cors = gateway._cors_headers(request)
        if request.method == "OPTIONS":
            if cors:
                return http_response(204, headers=cors + [("Access-Control-Allow-Methods", "GET, POST"),
                                                          ("Access-Control-Allow-Headers", "Content-Type")],
                                     keep_alive=request.keep_alive)
            raise HTTPError(405, "method not allowed", [("Allow", "GET, POST")])
        try:
            self._check_eio(request)
            transport = request.query_value("transport")
            if transport != POLLING:
                raise eio.EngineIOError(eio.UNKNOWN_TRANSPORT if transport != WEBSOCKET
                                        else eio.BAD_REQUEST)
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
            gateway.stats.http_errors += 1
            return http_response(exc.status, exc.body(), "application/json", cors,
                                 keep_alive=request.keep_alive)

    def _check_eio(self, request: Request) -> None:
        if request.query_value("EIO") != "4":
            raise eio.EngineIOError(eio.UNSUPPORTED_VERSION)

    def _open_packet(self, session: EngineSession, upgrades: List[str]) -> str:
        return eio.OPEN + json.dumps({
            "sid": session.sid, "upgrades": upgrades,
            "pingInterval": int(self.ping_interval * 1000), "pingTimeout": int(self.ping_timeout * 1000),
            "maxPayload": self.gateway.max_message_size}, separators=(",", ":"))

    def _new_session(self, client: "Client", request: Request, transport: str) -> EngineSession:
        """A session for a client whose access was checked; only the handshake's ``topics``
        are kept of its request."""
        now = time.monotonic()
        self._next_client += 1
        session = EngineSession(_new_sid(), transport, tuple(request.query.get("topics", ())),
                                client.rights, now,
                                f"{os.getpid()}.sio{self._next_client}".encode())
        session.next_ping = now + self.ping_interval
        self.sessions[session.sid] = session
        self.gateway.stats.sio_sessions += 1
        if len(self.sessions) == 1:
            self._schedule_tick()
        log.debug("socket.io session %s opened over %s", session, transport)
        return session

    def _check_access(self, client: "Client", request: Request) -> None:
        """The gateway's origin and token checks, as Engine.IO errors (403, or 400)."""
        try:
            self.gateway.check_access(client, request)
        except HTTPError as exc:
            code = eio.FORBIDDEN if exc.status in (401, 403) else eio.BAD_REQUEST
            raise eio.EngineIOError(code, exc.reason) from None

    def _handshake_polling(self, client: "Client", request: Request, cors: list) -> bytes:
        """A polling session counts as a connection of the handshake's address (503 over the
        connection limits) and must poll within ``handshake_timeout`` (else :meth:`_tick` closes it)."""
        gateway = self.gateway
        try:
            gateway.check_access(client, request)
        except HTTPError as exc:
            code = eio.FORBIDDEN if exc.status in (401, 403) else eio.BAD_REQUEST
            raise eio.EngineIOError(code, exc.reason) from None
        host = peer_host(client.address)
        if not gateway.take_slot(host):
            log.info("refusing a socket.io session from %s: connection limit", host)
            raise HTTPError(503, "too many connections", [("Retry-After", "5")])
        session = self._new_session(client, request, POLLING)
        session.slot = host
        session.first_poll_by = time.monotonic() + gateway.handshake_timeout
        return self._payload_response(request, [(eio.OPEN, self._open_packet(session, [WEBSOCKET])[1:])], cors)

    def _release_slot(self, session: EngineSession) -> None:
        """The session no longer counts as a connection (closed, or carried by a WebSocket now)."""
        if session.slot is not None:
            self.gateway.release_slot(session.slot)
            session.slot = None
        session.first_poll_by = 0.0

    def _payload_response(self, request: Request, packets: List[eio.Packet], cors: list) -> bytes:
        return http_response(200, eio.encode_payload(packets), "text/plain; charset=UTF-8",
                             [("Cache-Control", "no-store")] + cors, keep_alive=request.keep_alive)

    def _poll(self, client: "Client", session: EngineSession, cors: list) -> None:
        if session.poll_client is not None:
            # Two polls at once: engine.io answers 400 and closes the session.
            self.close_session(session, "overlapping polls")
            raise eio.EngineIOError(eio.BAD_REQUEST, "Bad request: overlapping polls")
        session.last_seen = time.monotonic()
        session.first_poll_by = 0.0
        client.data["cors"] = cors
        probe = session.probe_client
        if not session.packets and probe is not None and probe.data.get("eio_probed"):
            # Upgrading: the client waits for this poll to end before it sends "5" (engine.io
            # answers polls with a noop while upgrading); holding it would stall the upgrade.
            session.packets.append((eio.NOOP, ""))
        if session.packets:
            self._answer_poll(client, session)
            return
        client.parked = True
        client.transport = "socketio"
        client.deadline = time.monotonic() + self.ping_interval + self.ping_timeout
        client.data["eio_poll"] = session
        session.poll_client = client

    def _answer_poll(self, client: "Client", session: EngineSession) -> None:
        packets, session.packets, session.packet_bytes = session.packets, [], 0
        client.data.pop("eio_poll", None)
        client.transport = None
        if session.poll_client is client:
            session.poll_client = None
        self.gateway.http_reply(client, self._payload_response(client.request, packets,
                                                               client.data.get("cors", [])),
                                keep_alive=True)

    def _post(self, session: EngineSession, request: Request, cors: list) -> bytes:
        if request.header("content-type") == "application/octet-stream":
            self.close_session(session, "binary POST")
            raise eio.EngineIOError(eio.BAD_REQUEST, "Bad request: binary content")
        session.last_seen = time.monotonic()
        try:
            packets = eio.decode_payload(request.body)
            for kind, data in packets:
                self._packet(session, kind, data)
                if session.closed:
                    break
        except Exception as exc:  # one bad packet ends its session, never the loop
            self._bad_packet(session.client_id.decode(), exc)
            self.close_session(session, "bad packet")
            reason = str(exc) if isinstance(exc, eio.SocketIOError) else "invalid packet"
            raise eio.EngineIOError(eio.BAD_REQUEST, f"Bad request: {reason}") from None
        return http_response(200, b"ok", "text/html", cors, keep_alive=request.keep_alive)

    def poll_deadline(self, client: "Client") -> None:
        """A held poll reached its deadline: release it with a noop (the session stays)."""
        session = client.data.get("eio_poll")
        if session is not None and not session.packets:
            session.packets.append((eio.NOOP, ""))
        if session is not None:
            self._answer_poll(client, session)

    # -- WebSocket ---------------------------------------------------------------------

    def check_upgrade(self, client: "Client", request: Request) -> None:
        """Before the 101: Engine.IO's checks for a WebSocket request (400 with its message)."""
        try:
            self._check_eio(request)
            if request.query_value("transport") != WEBSOCKET:
                raise eio.EngineIOError(eio.UNKNOWN_TRANSPORT)
            sid = request.query_value("sid")
            if sid is not None:
                session = self.sessions.get(sid)
                if session is None:
                    raise eio.EngineIOError(eio.UNKNOWN_SID)
                if session.transport != POLLING or session.probe_client is not None:
                    raise eio.EngineIOError(eio.BAD_REQUEST)
        except eio.EngineIOError as exc:
            raise HTTPError(exc.status, exc.message) from None

    def on_ws_open(self, client: "Client") -> None:
        request = client.request
        client.transport = "socketio"
        sid = request.query_value("sid")
        if sid is not None:
            session = self.sessions[sid]  # checked before the 101
            session.probe_client = client
            client.data["eio_probe"] = session
            return
        session = self._new_session(client, request, WEBSOCKET)  # check_access ran before the 101
        session.ws_client = client
        client.data["eio"] = session
        client.send(self._open_packet(session, []))

    def on_ws_message(self, client: "Client", data: Union[str, bytes]) -> None:
        session = client.data.get("eio")
        try:
            if session is None:
                probing = client.data.get("eio_probe")
                if probing is not None:
                    self._probe(client, probing, data)
                return
            kind, payload = eio.decode_ws_frame(data)
            session.last_seen = time.monotonic()
            self._packet(session, kind, payload)
        except Exception as exc:  # one bad packet ends its session, never the loop
            self._bad_packet(client.id, exc)
            if session is not None:
                self.close_session(session, "bad packet")
            else:
                client.close(CLOSE_POLICY_VIOLATION, "parse error")

    def _bad_packet(self, who: Any, exc: Exception) -> None:
        """Count and log (one line, no traceback) a packet that ends its session: malformed
        (:class:`~zmqws.protocol.errors.SocketIOError`), or one this module failed on."""
        self.gateway.stats.protocol_errors += 1
        if isinstance(exc, eio.SocketIOError):
            log.info("socket.io client %s: %s", who, exc)
        else:
            log.warning("socket.io client %s: closed after an error in its packet: %r", who, exc)

    def _probe(self, client: "Client", session: EngineSession, data: Union[str, bytes]) -> None:
        """The upgrade of a polling session: 2probe → 3probe (and a noop to the poll), then 5."""
        if data == eio.PING + "probe":
            client.send(eio.PONG + "probe")
            client.data["eio_probed"] = True
            if session.poll_client is not None:
                session.packets.append((eio.NOOP, ""))
                self._answer_poll(session.poll_client, session)
            return
        if data == eio.UPGRADE:
            gateway = self.gateway
            old_member = session.member
            session.transport = WEBSOCKET
            self._release_slot(session)  # its WebSocket is a connection of its own
            session.ws_client = client
            session.probe_client = None
            client.data.pop("eio_probe", None)
            client.data["eio"] = session
            pending, session.packets, session.packet_bytes = session.packets, [], 0
            for kind, payload in pending:
                self._send_ws(client, kind, payload)
            if session.poll_client is not None:  # a poll still held: release it
                session.packets.append((eio.NOOP, ""))
                self._answer_poll(session.poll_client, session)
            gateway._move_member(old_member, client, self._ws_wire(client))
            log.debug("socket.io session %s upgraded to websocket", session)
            return
        raise eio.SocketIOError("unexpected packet during the upgrade")

    def on_ws_gone(self, client: "Client") -> None:
        session = client.data.pop("eio", None)
        if session is not None and session.ws_client is client:
            self.close_session(session, "transport closed", notify=False)
        probing = client.data.pop("eio_probe", None)
        if probing is not None and probing.probe_client is client:
            probing.probe_client = None

    def _ws_wire(self, client: "Client") -> Tuple[str, Any]:
        deflate = client.ws.deflate
        key = None if deflate is None else deflate.out_key
        if key is not None:
            self.gateway._deflaters.setdefault(key, deflate)
        return ("sio", key)

    # -- sending -------------------------------------------------------------------------

    def send(self, session: EngineSession, packets: List[eio.Packet]) -> None:
        """Engine.IO packets to a session, over its current transport."""
        if session.closed:
            return
        if session.transport == WEBSOCKET:
            for kind, payload in packets:
                self._send_ws(session.ws_client, kind, payload)
            return
        for kind, payload in packets:
            session.packets.append((kind, payload))
            session.packet_bytes += len(payload) + 1
        if session.packet_bytes > self.gateway.max_queue:
            self.gateway.stats.slow_closed += 1
            self.close_session(session, "slow consumer")
            return
        if session.poll_client is not None:
            self._answer_poll(session.poll_client, session)

    @staticmethod
    def _send_ws(client: "Client", kind: str, payload: Union[str, bytes]) -> None:
        client.send(payload if isinstance(payload, bytes) else kind + payload)

    def event_packets(self, m: Stored) -> List[eio.Packet]:
        """A message as a Socket.IO EVENT: [name, payload, offset]; binary as an attachment."""
        name = self.event
        if name == "topic":
            name = m.topic.decode("utf-8", "replace") if m.multipart else "message"
        offset = str(m.id)
        if m.opcode == OP_TEXT:
            text = eio.encode_sio(eio.EVENT, [name, m.payload.decode("utf-8"), offset])
            return [(eio.MESSAGE, text)]
        text = eio.encode_sio(eio.BINARY_EVENT, [name, {"_placeholder": True, "num": 0}, offset],
                              attachments=1)
        return [(eio.MESSAGE, text), (eio.MESSAGE, m.payload)]

    def encode_ws(self, m: Stored, key: Any) -> bytes:
        """The frame(s) of one message for every Socket.IO WebSocket client of a wire key."""
        out = []
        for kind, payload in self.event_packets(m):
            if isinstance(payload, bytes):
                opcode, body = OP_BINARY, payload
            else:
                opcode, body = OP_TEXT, (kind + payload).encode("utf-8")
            if key is None:
                out.append(frame_header(opcode, len(body)) + body)
            else:
                out.append(self.gateway._deflaters[key].encode_message(opcode, body))
        return out[0] if len(out) == 1 else b"".join(out)

    def deliver_polling(self, sessions: List[EngineSession], batch: List[Stored]) -> None:
        packets: List[eio.Packet] = []
        for m in batch:
            packets.extend(self.event_packets(m))
        stats = self.gateway.stats
        for session in sessions:
            stats.messages_out += len(batch)
            self.send(session, packets)

    # -- Engine.IO and Socket.IO packets from the client ---------------------------------------

    def _packet(self, session: EngineSession, kind: str, data: Union[str, bytes]) -> None:
        if kind == eio.PONG:
            session.ping_sent_at = 0.0
        elif kind == eio.PING:
            self.send(session, [(eio.PONG, data if isinstance(data, str) else "")])
        elif kind == eio.MESSAGE:
            self._sio(session, data)
        elif kind == eio.CLOSE:
            self.close_session(session, "client close", notify=False)
        elif kind == eio.NOOP:
            pass
        else:
            raise eio.SocketIOError(f"unexpected packet {kind!r}")

    def _sio(self, session: EngineSession, data: Union[str, bytes]) -> None:
        if isinstance(data, bytes):
            if session.reassembler is None:
                raise eio.SocketIOError("binary data without a binary packet")
            packet = session.reassembler.add(data)
            if packet is None:
                return
            session.reassembler = None
        else:
            if session.reassembler is not None:
                raise eio.SocketIOError("a packet while attachments are expected")
            packet = eio.decode_sio(data)
            if packet.type in (eio.BINARY_EVENT, eio.BINARY_ACK):
                session.reassembler = eio.Reassembler(packet)
                return
        if packet.nsp != "/":
            if packet.type == eio.CONNECT:
                self.send(session, [(eio.MESSAGE, eio.encode_sio(
                    eio.CONNECT_ERROR, {"message": "Invalid namespace"}, nsp=packet.nsp))])
            return  # packets for a namespace we refused are ignored
        if packet.type == eio.CONNECT:
            self._connect(session, packet.data if isinstance(packet.data, dict) else {})
        elif packet.type == eio.DISCONNECT:
            self._leave(session)
        elif packet.type == eio.EVENT:
            if not session.connected:
                raise eio.SocketIOError("EVENT before CONNECT")
            self._event(session, packet)
        elif packet.type == eio.ACK:
            pass  # the server asks for no acknowledgements
        else:
            raise eio.SocketIOError("unexpected Socket.IO packet type")

    def _topics(self, session: EngineSession, auth: Dict[str, Any]) -> List[bytes]:
        """Topics from ``auth.topics`` (a list or a string) or the handshake's ``?topics=a,b``,
        checked against the client's rights and the caps by the gateway (:class:`TopicRefused`)."""
        wanted = auth.get("topics")
        if wanted is None:
            wanted = [t for value in session.topics for t in value.split(",") if t]
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            raise TopicRefused("topics must be a list of strings", 400)
        return self.gateway.topics_for(session.rights, wanted)

    def _connect(self, session: EngineSession, auth: Dict[str, Any]) -> None:
        gateway = self.gateway
        if session.connected:
            return
        self._expire_recoverable()
        replay: List[Stored] = []
        recovered = None
        pid, offset = auth.get("pid"), auth.get("offset")
        since = parse_id(offset) if isinstance(offset, str) else None  # checked before any change
        if isinstance(pid, str) and since is not None and pid in self._recoverable:
            sio_sid, prefixes, _until = self._recoverable.pop(pid)
            state = gateway._new_state(session.member, prefixes, "sio", session.client_id)
            gateway._subscribe(prefixes)
            notice, missed = gateway._missed(state, since)
            if notice is None and self._replay_fits(missed):
                recovered = (sio_sid, pid)
                replay = missed
            else:
                if notice is None:  # too much to replay at once: no recovery (the client knows)
                    gateway.stats.gaps += 1
                gateway._unsubscribe(prefixes)
                gateway._states.pop(session.member, None)
        if recovered is not None:
            session.sio_sid, session.pid = recovered
            prefixes = state.prefixes
        else:
            try:
                prefixes = self._topics(session, auth)
            except (TopicRefused, UnicodeError) as exc:
                # Refused, never narrowed to what is allowed nor widened to everything.
                reason = exc.message if isinstance(exc, TopicRefused) else "topics must be UTF-8"
                log.info("socket.io session %s: CONNECT refused: %s", session.sid, reason)
                self.send(session, [(eio.MESSAGE, eio.encode_sio(eio.CONNECT_ERROR, {"message": reason}))])
                return
            session.sio_sid, session.pid = _new_sid(), _new_sid()
            state = gateway._new_state(session.member, prefixes, "sio", session.client_id)
            gateway._subscribe(prefixes)
        session.connected = True
        wire = SIO_POLL_WIRE if session.transport == POLLING else self._ws_wire(session.ws_client)
        state.wire = wire
        gateway._send_batch()  # this turn's messages were routed before this socket joined
        packets = [(eio.MESSAGE, eio.encode_sio(eio.CONNECT, {"sid": session.sio_sid, "pid": session.pid}))]
        for m in replay:
            packets.extend(self.event_packets(m))
        self.send(session, packets)
        gateway.stats.messages_out += len(replay)
        gateway.router.add(session.member, prefixes, "sio", wire)
        log.debug("socket.io session %s connected (%s), topics %s", session,
                  "recovered" if recovered else "new", prefixes)

    def _replay_fits(self, replay: List[Stored]) -> bool:
        """Whether a recovery replay's packets fit in ``max_queue`` (the bound of every queue)."""
        size = 0
        for m in replay:
            size += sum(len(payload) + 1 for _, payload in self.event_packets(m))
            if size > self.gateway.max_queue:
                return False
        return True

    def _leave(self, session: EngineSession) -> None:
        """The socket left (DISCONNECT, or the session closed): keep it recoverable for a while."""
        if not session.connected:
            return
        session.connected = False
        state = self.gateway._states.get(session.member)
        if state is not None and session.pid is not None:
            self._recoverable[session.pid] = (session.sio_sid, list(state.prefixes),
                                              time.monotonic() + self.recovery_seconds)
        self.gateway._forget(session.member)

    def _expire_recoverable(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (_, _, until) in self._recoverable.items() if until < now]:
            del self._recoverable[pid]

    def _event(self, session: EngineSession, packet: eio.SioPacket) -> None:
        gateway = self.gateway
        state = gateway._states.get(session.member)
        if state is None:
            return
        gateway.stats.messages_in += 1
        if not gateway._rate_ok(state):
            log.info("socket.io session %s: over %s messages/s, closing", session, gateway.client_rate)
            self.close_session(session, "message rate limit")
            return
        name, args = packet.data[0], packet.data[1:]
        if name in ("subscribe", "unsubscribe"):
            reply = self._change_topics(session, state, name, args[0] if args else None)
        else:
            parts = self._upstream_parts(name, args[0] if args else None)
            if parts is None:
                log.info("socket.io client %s: event name or data not UTF-8", session.client_id.decode())
                reply = {"ok": False, "error": "event name and data must be UTF-8"}
            elif not session.rights.may_write(parts[0]):
                gateway.stats.writes_refused += 1
                reply = {"ok": False, "error": "topic not allowed for writing"}
            elif gateway._out is None:
                reply = {"ok": False, "error": "no upstream socket"}
            elif gateway._forward(parts[0], session.client_id, parts[1]):
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": "upstream full"}
        if packet.id is not None:
            self.send(session, [(eio.MESSAGE, eio.encode_sio(eio.ACK, [reply], ack_id=packet.id))])

    @staticmethod
    def _upstream_parts(name: Any, value: Any) -> Optional[Tuple[bytes, bytes]]:
        """An event's topic (its name) and payload (its first argument) upstream; None when
        either is not UTF-8 (a lone surrogate such as ``"\\ud800"`` is valid JSON, not UTF-8)."""
        try:
            topic = str(name).encode("utf-8")
            if isinstance(value, bytes):
                return topic, value
            if isinstance(value, str):
                return topic, value.encode("utf-8")
            return topic, json.dumps(value).encode("utf-8")
        except UnicodeError:
            return None

    def _change_topics(self, session: EngineSession, state: Any, action: str, value: Any) -> Dict[str, Any]:
        topics = [value] if isinstance(value, str) else value
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return {"error": "give a topic or a list of topics"}
        everything = not state.chose_topics and state.prefixes == session.rights.everything()
        try:
            prefixes = self.gateway.changed_topics(session.rights, state.prefixes, everything, action, topics)
        except (TopicRefused, UnicodeError) as exc:
            reason = exc.reason if isinstance(exc, TopicRefused) else "topics must be UTF-8"
            return {"error": reason, "topics": [p.decode("utf-8", "replace") for p in state.prefixes]}
        self.gateway._set_prefixes(session.member, state, prefixes)
        return {"topics": [p.decode("utf-8", "replace") for p in state.prefixes]}

    # -- timers and closing ----------------------------------------------------------------

    def _schedule_tick(self) -> None:
        # Fine enough that a ping goes out well within the client's pingInterval + pingTimeout
        # (a client that hears no ping by then closes the session with "ping timeout").
        # Fine enough too that a session that never polls goes soon after handshake_timeout.
        step = max(0.01, min(1.0, self.ping_interval / 2, self.ping_timeout / 2,
                             self.gateway.handshake_timeout / 2 or 1.0))
        self.gateway.loop.call_later(step, self._tick)

    def _tick(self) -> None:
        """Heartbeats: a ping every ping_interval; no pong (or poll) within ping_timeout closes;
        a polling session without its first GET within handshake_timeout closes."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.first_poll_by and now >= session.first_poll_by:
                self.gateway.stats.handshake_timeouts += 1
                self.close_session(session, "no poll after the handshake")
            elif session.ping_sent_at and now - session.ping_sent_at > self.ping_timeout:
                self.gateway.stats.ping_timeouts += 1
                self.close_session(session, "ping timeout")
            elif not session.ping_sent_at and now >= session.next_ping:
                session.ping_sent_at = now
                session.next_ping = now + self.ping_interval
                self.send(session, [(eio.PING, "")])
        if self.sessions and not self.gateway._stopping:
            self._schedule_tick()

    def close_session(self, session: EngineSession, reason: str, notify: bool = True) -> None:
        if session.closed:
            return
        self._leave(session)
        self.gateway._forget(session.member)  # a CONNECT cut short keeps no state either
        self._release_slot(session)
        session.closed = True
        self.sessions.pop(session.sid, None)
        log.debug("socket.io session %s closed: %s", session, reason)
        if session.transport == WEBSOCKET and session.ws_client is not None:
            client = session.ws_client
            if notify and client.open:
                self._send_ws(client, eio.CLOSE, "")
            client.data.pop("eio", None)
            client.close(1000, "")
        elif session.poll_client is not None:
            # The held poll ends with a close packet, or with a noop when the client itself
            # closed (engine.io's polling transport does the same).
            session.packets.append((eio.CLOSE if notify else eio.NOOP, ""))
            self._answer_poll(session.poll_client, session)
        if session.probe_client is not None:
            session.probe_client.close(1000, "")

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            self.close_session(session, "server stopping")
