"""Socket.IO v5 on the Engine.IO sessions: namespaces, events both ways, recovery.

* Namespaces: ``/`` and those of ``sio_namespaces``; a CONNECT to any other
  gets CONNECT_ERROR.  Each namespace connection is a socket of its own
  (:class:`NamespaceSocket`: its Socket.IO sid and pid, its hub subscriber,
  client id, topics and recovery); a DISCONNECT ends that socket only.
* Topics: namespace ``/NAME`` sees the ZeroMQ topics under ``NAME/``: its
  client's topic ``T`` is the ZeroMQ prefix ``NAME/T`` (rights apply to that),
  and its events go upstream as ``NAME/EVENT``; ``/`` sees topics as they are.
* CONNECT with ``auth.topics`` (or the handshake's ``?topics=a,b``): the hub
  checks them (rights, caps) and the socket joins; anything refused is a
  CONNECT_ERROR, never a narrower or wider subscription.  The CONNECT answer
  is written on its own, before any event that follows it.
* A message from ZeroMQ becomes the event ``message`` (or its topic, without
  the namespace's part, with ``sio_event="topic"``) with the payload (a string
  when UTF-8, else a binary attachment) and the message id as the offset
  (none with ``sio_recovery=False``).  The packets are built once per message
  and namespace, over WebSocket as frames queued on every socket's connection
  (:class:`SioWebSocketWire`); polling sessions get them queued until their
  next GET (:class:`SioPollWire`).
* Client events: ``subscribe``/``unsubscribe`` (a prefix or a list; the ack
  carries ``{"topics": [...]}``); any other event goes upstream as ``[event
  name, client id, first argument]`` if the client may write that topic, and
  is acknowledged ``{"ok": true}`` (``false`` and an ``error`` otherwise).
* With ``--rpc`` (:mod:`zmqws.rpc`), each namespace socket is a client of the application
  (``connect`` with its CONNECT payload, ``disconnect`` with a reason); an event with an ack
  id is a ``request`` (topic ``NAME/EVENT``, payload the JSON array of its arguments, binary
  ones as placeholders with the attachments as frames) whose reply is the ACK (``[{"error":
  reason}]`` for an error, a timeout or a refusal); without an ack id, and with no
  ``--push``/``--pub``, a ``message``.  The application's ``send`` is an EVENT (BINARY_EVENT)
  to that socket, its ``close`` a DISCONNECT of that namespace.
* Connection state recovery (``pid``/``offset``): a socket that comes back to
  its namespace within ``sio_recovery_seconds`` gets what it missed from the
  hub's history, unless some of it is gone or it would not fit in
  ``max_queue``.  Off with ``sio_recovery=False``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from ..protocol import engineio as eio
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..rights import TopicRefused
from ..rpc import Outcome, client_info, embed
from ..routing import parse_id
from ..wire import TurnEncodings, Wire, WebSocketWire
from . import PollPacer
from .engineio import POLLING, EngineIOTransport, EngineSession, new_sid

if TYPE_CHECKING:  # pragma: no cover
    from ..protocol.deflate import PerMessageDeflate
    from ..routing import Stored
    from . import Context

__all__ = ["SocketIOLayer", "NamespaceSocket", "namespace_prefix"]

log = logging.getLogger("zmqws")

ENVELOPE = "sio"  # the hub's envelope of Socket.IO subscribers (their wires encode events)


def namespace_prefix(nsp: str) -> bytes:
    """The ZeroMQ topic prefix of a namespace: nothing for ``/``, ``NAME/`` for ``/NAME``."""
    return b"" if nsp == "/" else nsp[1:].encode("utf-8") + b"/"


class NamespaceSocket:
    """One Socket.IO socket: a namespace connection of an Engine.IO session, and the hub's
    member (the same over polling and WebSocket: the session's transport may change under it)."""

    __slots__ = ("session", "nsp", "prefix", "client_id", "sio_sid", "pid", "all_topics")

    def __init__(self, session: EngineSession, nsp: str) -> None:
        self.session = session
        self.nsp = nsp
        self.prefix = namespace_prefix(nsp)  # its topics' part of the ZeroMQ topic
        self.client_id = session.client_id if nsp == "/" else session.client_id + nsp.encode("utf-8")
        self.sio_sid = ""
        self.pid: Optional[str] = None
        self.all_topics = False  # a namespace socket that named no topic: all it may read there

    def __str__(self) -> str:
        """In log lines: its client id (``PID.sioN``, ``PID.sioN/chat``), never a sid."""
        return self.client_id.decode("utf-8", "replace")


class SioWebSocketWire(WebSocketWire):
    """Socket.IO sockets of one namespace over WebSocket: an event's frames built once (one frame
    per packet) for every route of the wire, the same bytes queued on each socket's connection."""

    __slots__ = ("layer", "nsp", "prefix", "_turn")
    shared = False       # the members are sockets: delivered to their sessions' connections
    gap_notices = False  # Socket.IO has none: a socket that lost messages recovers instead
    name = "socketio"

    def __init__(self, layer: "SocketIOLayer", deflater: Optional["PerMessageDeflate"], nsp: str) -> None:
        super().__init__(layer.context.envelopes, deflater)
        self.layer = layer
        self.nsp = nsp
        self.prefix = namespace_prefix(nsp)
        self._turn = TurnEncodings(self, b"")

    def encode(self, m: "Stored", envelope: str) -> bytes:
        out = []
        for kind, payload in self.layer.event_packets(m, self.nsp, self.prefix):
            if isinstance(payload, bytes):
                out.append(self.frame(OP_BINARY, payload))
            else:
                out.append(self.frame(OP_TEXT, (kind + payload).encode("utf-8")))
        return out[0] if len(out) == 1 else b"".join(out)

    def deliver(self, members: List[Any], batch: List["Stored"]) -> None:
        blob = self._turn.join(batch, ENVELOPE)
        server = self.layer.context.server
        over = server.fanout(blob, [socket.session.ws_client for socket in members], len(batch))
        if over and server.drop_slow:  # no gap notice in Socket.IO: closed, the client recovers
            for client in over:
                server.close_slow(client)


class Gathering:
    """``poll_coalesce_ms``: a polling socket's events waiting to go to its session together."""

    __slots__ = ("payloads", "count")

    def __init__(self) -> None:
        self.payloads: List[bytes] = []
        self.count = 0  # messages


class SioPollWire(Wire):
    """Socket.IO sockets of one namespace on polling sessions: an event's packets encoded once
    for long-polling (``b`` + base64 for an attachment, Engine.IO v4), the same bytes queued on
    each session until its next GET.  With ``poll_coalesce_ms`` a socket's events are paced,
    leading edge (:class:`~zmqws.transports.PollPacer`): they go at once if its previous events
    went that long ago or more, else they wait until then (at most ``poll_max_messages`` of
    them), so that one GET answer carries them.  Per socket, as the events are gathered: an
    ack, the application's event or a DISCONNECT to a socket sends what it gathered first."""

    __slots__ = ("layer", "nsp", "prefix", "_turn", "_pacer")
    shared = False
    gap_notices = False
    name = "socketio-polling"

    def __init__(self, layer: "SocketIOLayer", nsp: str) -> None:
        super().__init__(layer.context.envelopes)
        self.layer = layer
        self.nsp = nsp
        self.prefix = namespace_prefix(nsp)
        self._turn = TurnEncodings(self, eio.SEPARATOR_BYTES)
        self._pacer: PollPacer[Gathering] = PollPacer(layer.context, self.release)

    def encode(self, m: "Stored", envelope: str) -> bytes:
        return eio.encode_payload(self.layer.event_packets(m, self.nsp, self.prefix))

    def deliver(self, members: List[Any], batch: List["Stored"]) -> None:
        payload = self._turn.join(batch, ENVELOPE)
        layer = self.layer
        layer.context.server.stats.messages_out += len(batch) * len(members)
        if layer.context.config.poll_coalesce_ms:
            self._pace(members, payload, len(batch))
            return
        send_payload = layer.engine.send_payload
        for socket in members:
            send_payload(socket.session, payload)

    def _pace(self, members: List[NamespaceSocket], payload: bytes, count: int) -> None:
        """``poll_coalesce_ms``: the turn's events to the sockets due now, gathered for the others."""
        pacer = self._pacer
        gathering = pacer.gathering
        limit = self.layer.context.config.poll_max_messages
        send_payload = self.layer.engine.send_payload
        now = time.monotonic()
        at_once = []
        for socket in members:
            gathered = gathering.get(socket)
            if gathered is None:
                due = pacer.wait_until(socket, now) if count < limit else None
                if due is None:
                    at_once.append(socket)
                    continue
                gathered = Gathering()
                pacer.gather(socket, gathered, due)
            gathered.payloads.append(payload)
            gathered.count += count
            if gathered.count >= limit:
                self.release(socket)
        pacer.sent(at_once, now)  # before sending: a session closed by it forgets its sockets
        for socket in at_once:
            send_payload(socket.session, payload)

    def release(self, socket: NamespaceSocket) -> None:
        """The events gathered for a socket go to its session now (before anything else sent to
        it: an ack, the application's event, the move to WebSocket)."""
        gathered = self._pacer.gathering.pop(socket, None)
        if gathered is not None:
            self._pacer.sent([socket], self._pacer.now())
            self.layer.engine.send_payload(socket.session, eio.SEPARATOR_BYTES.join(gathered.payloads))

    def forget(self, socket: NamespaceSocket) -> None:
        """The socket left its namespace: its pacing is forgotten."""
        self._pacer.forget(socket)


class SocketIOLayer:
    """The Socket.IO side of the Engine.IO sessions (see the module docstring)."""

    def __init__(self, context: "Context") -> None:
        self.context = context
        config = context.config
        self.event = config.sio_event  # an event name, or "topic" to use the message's topic
        self.recovery = config.sio_recovery
        self.recovery_seconds = config.sio_recovery_seconds
        self.namespaces = frozenset(["/"] + ["/" + name.strip("/") for name in config.sio_namespaces])
        self.engine = EngineIOTransport(context, self)
        self._poll_wires: Dict[str, SioPollWire] = {}
        self._ws_wires: Dict[Tuple[str, object], SioWebSocketWire] = {}
        # pid -> (namespace, sio sid, prefixes, until): sockets that left, recoverable until then
        self._recoverable: Dict[str, Tuple[str, str, List[bytes], float]] = {}

    def _wire(self, socket: NamespaceSocket) -> Wire:
        """The wire of a socket: per namespace, and over WebSocket per deflate window too."""
        session, nsp = socket.session, socket.nsp
        if session.transport == POLLING:
            poll_wire = self._poll_wires.get(nsp)
            if poll_wire is None:
                poll_wire = self._poll_wires[nsp] = SioPollWire(self, nsp)
            return poll_wire
        assert session.ws_client is not None and session.ws_client.ws is not None
        deflate = session.ws_client.ws.deflate
        key = (nsp, None if deflate is None else deflate.out_key)
        wire = self._ws_wires.get(key)
        if wire is None:
            wire = self._ws_wires[key] = SioWebSocketWire(self, deflate, nsp)
        return wire

    def event_packets(self, m: "Stored", nsp: str, prefix: bytes) -> List[eio.Packet]:
        """A message as a Socket.IO EVENT of namespace ``nsp``: [name, payload, offset] (no offset
        without recovery); binary as an attachment."""
        name = self.event
        if name == "topic":
            name = m.topic[len(prefix):].decode("utf-8", "replace") if m.multipart else "message"
        tail = [str(m.id)] if self.recovery else []
        if m.opcode == OP_TEXT:
            return [(eio.MESSAGE, eio.encode_sio(eio.EVENT, [name, m.payload.decode("utf-8")] + tail, nsp=nsp))]
        text = eio.encode_sio(eio.BINARY_EVENT, [name, {"_placeholder": True, "num": 0}] + tail, nsp=nsp,
                              attachments=1)
        return [(eio.MESSAGE, text), (eio.MESSAGE, m.payload)]

    # -- from the Engine.IO sessions -----------------------------------------------------------

    def on_packet(self, session: EngineSession, data: Union[str, bytes]) -> None:
        """An Engine.IO MESSAGE: a Socket.IO packet (or one of its binary attachments)."""
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
        nsp = packet.nsp
        if nsp not in self.namespaces:
            if packet.type == eio.CONNECT:
                self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(
                    eio.CONNECT_ERROR, {"message": "Invalid namespace"}, nsp=nsp))])
            return  # packets for a namespace we refused are ignored
        socket = session.sockets.get(nsp)
        if packet.type == eio.CONNECT:
            if socket is None:
                self._connect(session, nsp, packet.data if isinstance(packet.data, dict) else {})
        elif packet.type == eio.DISCONNECT:
            if socket is not None:
                self._leave(socket, "client namespace disconnect")
        elif packet.type == eio.EVENT:
            if socket is None:
                raise eio.SocketIOError("EVENT before CONNECT")
            self._event(socket, packet)
        elif packet.type != eio.ACK:  # the server asks for no acknowledgements
            raise eio.SocketIOError("unexpected Socket.IO packet type")

    def moved(self, session: EngineSession) -> None:
        """The session upgraded to WebSocket: its sockets are routed on the new wires."""
        hub = self.context.hub
        for socket in session.sockets.values():
            hub.move(socket, socket, self._wire(socket))
        for socket in session.sockets.values():  # what the polling wire gathered (the moves' flush too)
            self._release(socket)

    def _release(self, socket: NamespaceSocket, left: bool = False, discard: bool = False) -> None:
        """Events a polling socket gathered (``poll_coalesce_ms``) go to its session now, unless
        ``discard`` (the client closed its session: they are dropped with what waited there);
        once it ``left``, its pacing is forgotten."""
        wire = self._poll_wires.get(socket.nsp)
        if wire is not None:
            if not discard:
                wire.release(socket)
            if left:
                wire.forget(socket)

    def _send(self, socket: NamespaceSocket, packets: List[eio.Packet]) -> None:
        """Packets to one socket, after the events gathered for it."""
        self._release(socket)
        self.engine.send(socket.session, packets)

    def closed(self, session: EngineSession, reason: str, discard: bool = False) -> None:
        """The session is closing (for ``reason``): its sockets leave (recoverable); with
        ``discard`` (the client closed it) what they gathered is dropped, not sent."""
        for socket in list(session.sockets.values()):
            self._leave(socket, reason, discard)

    # -- Socket.IO ------------------------------------------------------------------------------

    def _topics(self, socket: NamespaceSocket, auth: Dict[str, Any]) -> List[bytes]:
        """Topics from ``auth.topics`` (a list or a string) or the handshake's ``?topics=a,b``,
        under the namespace's prefix, checked against the client's rights and the caps by the
        hub (:class:`TopicRefused`).  None named in a namespace: all the client may read there."""
        session = socket.session
        wanted = auth.get("topics")
        if wanted is None:
            wanted = [t for value in session.topics for t in value.split(",") if t]
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            raise TopicRefused("topics must be a list of strings", 400)
        prefix, rights = socket.prefix, session.rights
        if not wanted and prefix:
            socket.all_topics = True
            within = [prefix] if rights.may_read(prefix) else sorted(
                p for p in rights.read or () if p.startswith(prefix))
            if not within:
                raise TopicRefused("no topic allowed")
            return self.context.hub.topics_for(rights, within)
        return self.context.hub.topics_for(rights, [prefix + t.encode("utf-8") for t in wanted])

    def _recover(self, socket: NamespaceSocket,
                 auth: Dict[str, Any]) -> Optional[Tuple[List[bytes], List["Stored"]]]:
        """Connection state recovery: the topics and the messages to replay, or None (a fresh
        socket) when recovery is off, the pid is unknown (or of another namespace), the offset
        is not an id, or some ids are gone or would not fit in ``max_queue``.  Nothing changes
        before the offset is checked."""
        pid, offset = auth.get("pid"), auth.get("offset")
        since = parse_id(offset) if isinstance(offset, str) else None
        if not self.recovery or not isinstance(pid, str) or since is None:
            return None
        kept = self._recoverable.get(pid)
        if kept is None or kept[0] != socket.nsp:
            return None
        del self._recoverable[pid]
        _nsp, sio_sid, prefixes, _until = kept
        hub = self.context.hub
        for prefix in prefixes:  # subscribed first, so that the gap check sees them in force
            hub.want(prefix)
        recovered = False
        try:
            notice, missed = hub.missed(prefixes, since)
            if notice is None and self._replay_fits(socket, missed):
                socket.sio_sid, socket.pid = sio_sid, pid
                recovered = True
                return prefixes, missed  # the caller releases the prefixes once the socket has joined
            if notice is None:  # too much to replay at once: no recovery (the client knows)
                hub.stats.gaps += 1
            return None
        finally:
            if not recovered:
                for prefix in prefixes:
                    hub.release(prefix)

    def _connect(self, session: EngineSession, nsp: str, auth: Dict[str, Any]) -> None:
        self._expire_recoverable()
        socket = NamespaceSocket(session, nsp)
        recovered = self._recover(socket, auth)
        if recovered is not None:
            prefixes, replay = recovered
        else:
            try:
                prefixes = self._topics(socket, auth)
            except (TopicRefused, UnicodeError) as exc:
                # Refused, never narrowed to what is allowed nor widened to everything.
                reason = exc.message if isinstance(exc, TopicRefused) else "topics must be UTF-8"
                log.info("socket.io socket %s: CONNECT refused: %s", socket, reason)
                self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(
                    eio.CONNECT_ERROR, {"message": reason}, nsp=nsp))])
                return
            replay = []
            socket.sio_sid = new_sid()
            socket.pid = new_sid() if self.recovery else None
        hub = self.context.hub
        session.sockets[nsp] = socket
        # Routed from now on: this turn's messages are in the replay (from the history), not routed to it.
        hub.join(socket, prefixes, ENVELOPE, self._wire(socket), session.rights, client_id=socket.client_id)
        answer: Dict[str, str] = {"sid": socket.sio_sid}
        if socket.pid is not None:
            answer["pid"] = socket.pid
        self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(eio.CONNECT, answer, nsp=nsp))])
        self.engine.write_now(session)  # the CONNECT answer in a write of its own
        rpc = self.context.rpc
        if rpc is not None:
            transport = self._wire(socket).name  # "socketio" or "socketio-polling", as /metrics says
            rpc.connected(socket.client_id, self, socket, client_info(
                transport, session.address, session.rights, prefixes, namespace=nsp, auth=auth))
        packets: List[eio.Packet] = []
        for m in replay:
            packets.extend(self.event_packets(m, nsp, socket.prefix))
        if packets:
            self.engine.send(session, packets)
            hub.stats.messages_out += len(replay)
        if recovered is not None:
            for prefix in prefixes:
                hub.release(prefix)  # held by _recover until the socket joined
        log.debug("socket.io socket %s connected (%s), topics %s", socket,
                  "recovered" if recovered else "new", prefixes)

    def _replay_fits(self, socket: NamespaceSocket, replay: List["Stored"]) -> bool:
        """Whether a recovery replay's packets fit in ``max_queue`` (the bound of every queue)."""
        size = 0
        limit = self.context.server.max_queue
        for m in replay:
            size += sum(len(payload) + 1 for _, payload in self.event_packets(m, socket.nsp, socket.prefix))
            if size > limit:
                return False
        return True

    def _leave(self, socket: NamespaceSocket, reason: str, discard: bool = False) -> None:
        """The socket left (DISCONNECT, or its session closed, for ``reason``): recoverable for
        a while; the application is told (``disconnect``)."""
        sockets = socket.session.sockets
        if sockets.get(socket.nsp) is not socket:
            return
        del sockets[socket.nsp]
        self._release(socket, left=True, discard=discard)
        if self.context.rpc is not None:
            self.context.rpc.disconnected(socket.client_id, reason)
        subscriber = self.context.hub.leave(socket)
        if subscriber is not None and socket.pid is not None:
            self._recoverable[socket.pid] = (socket.nsp, socket.sio_sid, list(subscriber.prefixes),
                                             time.monotonic() + self.recovery_seconds)

    def _expire_recoverable(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (_, _, _, until) in self._recoverable.items() if until < now]:
            del self._recoverable[pid]

    def _event(self, socket: NamespaceSocket, packet: eio.SioPacket) -> None:
        context = self.context
        hub = context.hub
        if socket not in hub.subscribers:
            return
        stats = hub.stats
        stats.messages_in += 1
        if not hub.rate_ok(socket):
            log.info("socket.io socket %s: over %s messages/s, closing", socket, hub.config.client_rate)
            self.engine.close_session(socket.session, "message rate limit")
            return
        name, args = packet.data[0], packet.data[1:]
        if name in ("subscribe", "unsubscribe"):
            reply = self._change_topics(socket, name, args[0] if args else None)
        elif context.rpc is not None and (packet.id is not None or not context.upstream.can_forward):
            self._to_application(socket, packet.id, name, args)
            return
        else:
            parts = self._upstream_parts(name, args[0] if args else None)
            if parts is None:
                log.info("socket.io socket %s: event name or data not UTF-8", socket)
                reply = {"ok": False, "error": "event name and data must be UTF-8"}
            else:
                topic = socket.prefix + parts[0]
                if not socket.session.rights.may_write(topic):
                    stats.writes_refused += 1
                    reply = {"ok": False, "error": "topic not allowed for writing"}
                elif not context.upstream.can_forward:
                    reply = {"ok": False, "error": "no upstream socket"}
                elif context.upstream.forward(topic, socket.client_id, parts[1]):
                    reply = {"ok": True}
                else:
                    reply = {"ok": False, "error": "upstream full"}
        if packet.id is not None:
            self._send(socket, [(eio.MESSAGE, eio.encode_sio(eio.ACK, [reply], nsp=socket.nsp, ack_id=packet.id))])

    # -- the two-way channel (zmqws.rpc) ------------------------------------------------------

    def _to_application(self, socket: NamespaceSocket, ack_id: Optional[int], name: Any, args: List[Any]) -> None:
        """An event with ``--rpc``: with an ack id a ``request`` (its reply becomes the ACK),
        else a ``message``.  Topic: the event under the namespace's prefix; payload: the JSON
        array of the arguments, binary ones as placeholders and the attachments as frames."""
        rpc = self.context.rpc
        assert rpc is not None
        try:
            topic = socket.prefix + str(name).encode("utf-8")
            data, attachments = eio.deconstruct(args)
            payload = json.dumps(data, separators=(",", ":")).encode("utf-8")
        except UnicodeError:
            error: Optional[str] = "event name and data must be UTF-8"
        else:
            if ack_id is not None:
                rpc.request(socket.client_id, socket.session.rights, topic, payload, attachments,
                            lambda outcome, body, parts: self._ack(socket, ack_id, outcome, body, parts))
                return
            error = rpc.message(socket.client_id, socket.session.rights, topic, payload, attachments)
        if error is None:
            return
        log.info("socket.io socket %s: event %r not sent: %s", socket, name, error)
        if ack_id is not None:
            self._ack(socket, ack_id, Outcome.ERROR, json.dumps(error).encode("utf-8"), [])

    def _ack(self, socket: NamespaceSocket, ack_id: int, outcome: Outcome, payload: bytes,
             attachments: List[bytes]) -> None:
        """A request's outcome as the ACK of ``ack_id``: the reply's arguments (a BINARY_ACK
        with its attachments), or ``[{"error": reason}]``."""
        if socket.session.sockets.get(socket.nsp) is not socket:
            return
        if outcome is Outcome.OK:
            args = self._arguments(payload)
        else:
            args = [{"error": embed(payload) if outcome is Outcome.ERROR else payload.decode("utf-8", "replace")}]
            attachments = []
        self._send(socket, self._packets(eio.ACK, eio.BINARY_ACK, args, socket.nsp, attachments, ack_id))

    @staticmethod
    def _arguments(payload: bytes) -> List[Any]:
        """The application's payload as a list of arguments: its JSON array, or one argument
        (a JSON value, else a string)."""
        value = embed(payload)
        return value if isinstance(value, list) else [value]

    @staticmethod
    def _packets(kind: int, binary_kind: int, data: List[Any], nsp: str, attachments: List[bytes],
                 ack_id: Optional[int] = None) -> List[eio.Packet]:
        """A Socket.IO packet, binary (with its attachments after it) when there are any."""
        if not attachments:
            return [(eio.MESSAGE, eio.encode_sio(kind, data, nsp=nsp, ack_id=ack_id))]
        text = eio.encode_sio(binary_kind, data, nsp=nsp, ack_id=ack_id, attachments=len(attachments))
        return [(eio.MESSAGE, text)] + [(eio.MESSAGE, a) for a in attachments]

    def rpc_send(self, socket: NamespaceSocket, topic: bytes, payload: bytes, attachments: List[bytes]) -> bool:
        """The application's ``send``: the event ``topic`` with the payload's arguments (a
        BINARY_EVENT when there are attachments) to that one socket."""
        session = socket.session
        if session.closed or session.sockets.get(socket.nsp) is not socket:
            return False
        args = [topic.decode("utf-8", "replace")] + self._arguments(payload)
        self._send(socket, self._packets(eio.EVENT, eio.BINARY_EVENT, args, socket.nsp, attachments))
        self.context.server.stats.messages_out += 1
        return True

    def rpc_close(self, socket: NamespaceSocket, _code: int, _reason: str) -> None:
        """The application's ``close``: a server-side DISCONNECT (packet ``1``) of that namespace
        socket only; the Engine.IO session and its other namespaces stay (Socket.IO v5)."""
        session = socket.session
        if session.sockets.get(socket.nsp) is not socket:
            return
        self._send(socket, [(eio.MESSAGE, eio.encode_sio(eio.DISCONNECT, nsp=socket.nsp))])
        self._leave(socket, "server namespace disconnect")

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

    def _change_topics(self, socket: NamespaceSocket, action: str, value: Any) -> Dict[str, Any]:
        """``subscribe``/``unsubscribe`` under the socket's namespace; the ack shows its topics
        as the client names them (without the namespace's part)."""
        topics = [value] if isinstance(value, str) else value
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return {"error": "give a topic or a list of topics"}
        hub = self.context.hub
        prefix = socket.prefix
        skip = len(prefix)
        try:
            wanted = [prefix + t.encode("utf-8") for t in topics]
            before = list(hub.subscribers[socket].prefixes)
            prefixes = hub.change_topics(socket, action, wanted)
            if action == "subscribe" and socket.all_topics:
                # The first subscribe of a socket that named no topic replaces "all it may read".
                socket.all_topics = False
                prefixes = hub.change_topics(socket, "unsubscribe", [p for p in before if p not in wanted])
        except (TopicRefused, UnicodeError) as exc:
            reason = exc.reason if isinstance(exc, TopicRefused) else "topics must be UTF-8"
            current = hub.subscribers[socket].prefixes
            return {"error": reason, "topics": [p[skip:].decode("utf-8", "replace") for p in current]}
        return {"topics": [p[skip:].decode("utf-8", "replace") for p in prefixes]}
