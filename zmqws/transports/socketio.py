"""Socket.IO v5 on the Engine.IO sessions: the main namespace, events both ways, recovery.

* CONNECT to ``/`` with ``auth.topics`` (or the handshake's ``?topics=a,b``):
  the hub checks them (rights, caps) and the socket joins; anything refused
  is a CONNECT_ERROR, never a narrower or wider subscription.  Other
  namespaces get CONNECT_ERROR.
* A message from ZeroMQ becomes the event ``message`` (or its topic with
  ``sio_event="topic"``) with the payload (a string when UTF-8, else a binary
  attachment) and the message id as the offset.  Over WebSocket the frames
  are built once per message for every socket (:class:`SioWebSocketWire`);
  polling sessions get packets queued until their next GET.
* Client events: ``subscribe``/``unsubscribe`` (a prefix or a list; the ack
  carries ``{"topics": [...]}``); any other event goes upstream as ``[event
  name, client id, first argument]`` if the client may write that topic, and
  is acknowledged ``{"ok": true}`` (``false`` and an ``error`` otherwise).
* Connection state recovery (``pid``/``offset``): a socket that comes back
  within ``sio_recovery_seconds`` gets what it missed from the hub's history,
  unless some of it is gone or it would not fit in ``max_queue``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from ..protocol import engineio as eio
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..rights import TopicRefused
from ..routing import parse_id
from ..wire import Wire, WebSocketWire
from .engineio import POLLING, EngineIOTransport, EngineSession, new_sid

if TYPE_CHECKING:  # pragma: no cover
    from ..protocol.deflate import PerMessageDeflate
    from ..routing import Stored
    from . import Context

__all__ = ["SocketIOLayer"]

log = logging.getLogger("zmqws")

ENVELOPE = "sio"  # the hub's envelope of Socket.IO subscribers (their wires encode events)


class SioWebSocketWire(WebSocketWire):
    """Socket.IO sockets over WebSocket: an event's frame(s), built once for all of them."""

    __slots__ = ("layer",)
    gap_notices = False  # Socket.IO has none: a socket that lost messages recovers instead
    name = "socketio"

    def __init__(self, layer: "SocketIOLayer", deflater: Optional["PerMessageDeflate"]) -> None:
        super().__init__(layer.context.envelopes, deflater)
        self.layer = layer

    def encode(self, m: "Stored", envelope: str) -> bytes:
        out = []
        for kind, payload in self.layer.event_packets(m):
            if isinstance(payload, bytes):
                out.append(self.frame(OP_BINARY, payload))
            else:
                out.append(self.frame(OP_TEXT, (kind + payload).encode("utf-8")))
        return out[0] if len(out) == 1 else b"".join(out)


class SioPollWire(Wire):
    """Socket.IO sockets on polling sessions: packets queued on each session."""

    __slots__ = ("layer",)
    shared = False
    gap_notices = False
    name = "socketio-polling"

    def __init__(self, layer: "SocketIOLayer") -> None:
        super().__init__(layer.context.envelopes)
        self.layer = layer

    def deliver(self, members: List[Any], batch: List["Stored"]) -> None:
        layer = self.layer
        packets: List[eio.Packet] = []
        for m in batch:
            packets.extend(layer.event_packets(m))
        stats = layer.context.server.stats
        for session in members:
            stats.messages_out += len(batch)
            layer.engine.send(session, packets)


class SocketIOLayer:
    """The Socket.IO side of the Engine.IO sessions (see the module docstring)."""

    def __init__(self, context: "Context") -> None:
        self.context = context
        config = context.config
        self.event = config.sio_event  # an event name, or "topic" to use the message's topic
        self.recovery_seconds = config.sio_recovery_seconds
        self.engine = EngineIOTransport(context, self)
        self.poll_wire = SioPollWire(self)
        self._ws_wires: Dict[object, SioWebSocketWire] = {}
        self._recoverable: Dict[str, Tuple[str, List[bytes], float]] = {}  # pid -> (sio sid, topics, until)

    def _wire(self, session: EngineSession) -> Wire:
        if session.transport == POLLING:
            return self.poll_wire
        assert session.ws_client is not None and session.ws_client.ws is not None
        deflate = session.ws_client.ws.deflate
        key = None if deflate is None else deflate.out_key
        wire = self._ws_wires.get(key)
        if wire is None:
            wire = self._ws_wires[key] = SioWebSocketWire(self, deflate)
        return wire

    def event_packets(self, m: "Stored") -> List[eio.Packet]:
        """A message as a Socket.IO EVENT: [name, payload, offset]; binary as an attachment."""
        name = self.event
        if name == "topic":
            name = m.topic.decode("utf-8", "replace") if m.multipart else "message"
        offset = str(m.id)
        if m.opcode == OP_TEXT:
            return [(eio.MESSAGE, eio.encode_sio(eio.EVENT, [name, m.payload.decode("utf-8"), offset]))]
        text = eio.encode_sio(eio.BINARY_EVENT, [name, {"_placeholder": True, "num": 0}, offset], attachments=1)
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
        if packet.nsp != "/":
            if packet.type == eio.CONNECT:
                self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(
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
        elif packet.type != eio.ACK:  # the server asks for no acknowledgements
            raise eio.SocketIOError("unexpected Socket.IO packet type")

    def moved(self, session: EngineSession, old_member: Any) -> None:
        """The session upgraded to WebSocket: its socket is routed on the new wire."""
        self.context.hub.move(old_member, session.member, self._wire(session))

    def closed(self, session: EngineSession) -> None:
        """The session is closing: its socket leaves (recoverable), a CONNECT cut short too."""
        self._leave(session)
        self.context.hub.leave(session.member)

    # -- Socket.IO ------------------------------------------------------------------------------

    def _topics(self, session: EngineSession, auth: Dict[str, Any]) -> List[bytes]:
        """Topics from ``auth.topics`` (a list or a string) or the handshake's ``?topics=a,b``,
        checked against the client's rights and the caps by the hub (:class:`TopicRefused`)."""
        wanted = auth.get("topics")
        if wanted is None:
            wanted = [t for value in session.topics for t in value.split(",") if t]
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            raise TopicRefused("topics must be a list of strings", 400)
        return self.context.hub.topics_for(session.rights, wanted)

    def _recover(self, session: EngineSession, auth: Dict[str, Any]) -> Optional[Tuple[List[bytes], List["Stored"]]]:
        """Connection state recovery: the topics and the messages to replay, or None (a fresh
        socket) when the pid is unknown, the offset is not an id, or some ids are gone or
        would not fit in ``max_queue``.  Nothing changes before the offset is checked."""
        pid, offset = auth.get("pid"), auth.get("offset")
        since = parse_id(offset) if isinstance(offset, str) else None
        if not isinstance(pid, str) or since is None or pid not in self._recoverable:
            return None
        sio_sid, prefixes, _until = self._recoverable.pop(pid)
        hub = self.context.hub
        for prefix in prefixes:  # subscribed first, so that the gap check sees them in force
            hub.want(prefix)
        recovered = False
        try:
            notice, missed = hub.missed(prefixes, since)
            if notice is None and self._replay_fits(missed):
                session.sio_sid, session.pid = sio_sid, pid
                recovered = True
                return prefixes, missed  # the caller releases the prefixes once the socket has joined
            if notice is None:  # too much to replay at once: no recovery (the client knows)
                hub.stats.gaps += 1
            return None
        finally:
            if not recovered:
                for prefix in prefixes:
                    hub.release(prefix)

    def _connect(self, session: EngineSession, auth: Dict[str, Any]) -> None:
        if session.connected:
            return
        self._expire_recoverable()
        recovered = self._recover(session, auth)
        if recovered is not None:
            prefixes, replay = recovered
        else:
            try:
                prefixes = self._topics(session, auth)
            except (TopicRefused, UnicodeError) as exc:
                # Refused, never narrowed to what is allowed nor widened to everything.
                reason = exc.message if isinstance(exc, TopicRefused) else "topics must be UTF-8"
                log.info("socket.io session %s: CONNECT refused: %s", session, reason)
                self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(eio.CONNECT_ERROR, {"message": reason}))])
                return
            replay = []
            session.sio_sid, session.pid = new_sid(), new_sid()
        session.connected = True
        hub = self.context.hub
        hub.flush()  # this turn's messages were routed before this socket joined
        packets: List[eio.Packet] = [
            (eio.MESSAGE, eio.encode_sio(eio.CONNECT, {"sid": session.sio_sid, "pid": session.pid}))]
        for m in replay:
            packets.extend(self.event_packets(m))
        self.engine.send(session, packets)
        hub.stats.messages_out += len(replay)
        hub.join(session.member, prefixes, ENVELOPE, self._wire(session), session.rights,
                 client_id=session.client_id)
        if recovered is not None:
            for prefix in prefixes:
                hub.release(prefix)  # held by _recover until the socket joined
        log.debug("socket.io session %s connected (%s), topics %s", session,
                  "recovered" if recovered else "new", prefixes)

    def _replay_fits(self, replay: List["Stored"]) -> bool:
        """Whether a recovery replay's packets fit in ``max_queue`` (the bound of every queue)."""
        size = 0
        limit = self.context.server.max_queue
        for m in replay:
            size += sum(len(payload) + 1 for _, payload in self.event_packets(m))
            if size > limit:
                return False
        return True

    def _leave(self, session: EngineSession) -> None:
        """The socket left (DISCONNECT, or the session closed): keep it recoverable for a while."""
        if not session.connected:
            return
        session.connected = False
        subscriber = self.context.hub.leave(session.member)
        if subscriber is not None and session.pid is not None and session.sio_sid is not None:
            self._recoverable[session.pid] = (session.sio_sid, list(subscriber.prefixes),
                                              time.monotonic() + self.recovery_seconds)

    def _expire_recoverable(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (_, _, until) in self._recoverable.items() if until < now]:
            del self._recoverable[pid]

    def _event(self, session: EngineSession, packet: eio.SioPacket) -> None:
        context = self.context
        hub = context.hub
        if session.member not in hub.subscribers:
            return
        stats = hub.stats
        stats.messages_in += 1
        if not hub.rate_ok(session.member):
            log.info("socket.io session %s: over %s messages/s, closing", session, hub.config.client_rate)
            self.engine.close_session(session, "message rate limit")
            return
        name, args = packet.data[0], packet.data[1:]
        if name in ("subscribe", "unsubscribe"):
            reply = self._change_topics(session, name, args[0] if args else None)
        else:
            parts = self._upstream_parts(name, args[0] if args else None)
            if parts is None:
                log.info("socket.io client %s: event name or data not UTF-8", session)
                reply = {"ok": False, "error": "event name and data must be UTF-8"}
            elif not session.rights.may_write(parts[0]):
                stats.writes_refused += 1
                reply = {"ok": False, "error": "topic not allowed for writing"}
            elif not context.upstream.can_forward:
                reply = {"ok": False, "error": "no upstream socket"}
            elif context.upstream.forward(parts[0], session.client_id, parts[1]):
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": "upstream full"}
        if packet.id is not None:
            self.engine.send(session, [(eio.MESSAGE, eio.encode_sio(eio.ACK, [reply], ack_id=packet.id))])

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

    def _change_topics(self, session: EngineSession, action: str, value: Any) -> Dict[str, Any]:
        topics = [value] if isinstance(value, str) else value
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return {"error": "give a topic or a list of topics"}
        hub = self.context.hub
        try:
            prefixes = hub.change_topics(session.member, action, topics)
        except (TopicRefused, UnicodeError) as exc:
            reason = exc.reason if isinstance(exc, TopicRefused) else "topics must be UTF-8"
            current = hub.subscribers[session.member].prefixes
            return {"error": reason, "topics": [p.decode("utf-8", "replace") for p in current]}
        return {"topics": [p.decode("utf-8", "replace") for p in prefixes]}
