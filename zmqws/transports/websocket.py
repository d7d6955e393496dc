"""WebSocket clients (RFC 6455): ``ws://host:port/?topic=prefix&format=json&since=ID``.

The query is checked before the 101 (:class:`~zmqws.transports.JoinQuery`);
once open, the client joins the hub on the wire of its negotiated compression.
What it sends:

* ``{"subscribe": "p"}`` / ``{"unsubscribe": "p"}``: a topic change, answered
  with ``{"ack", "topic", "topics"}`` or ``{"error", "topic"}``;
* with ``--rpc``, ``{"rpc": ID, "topic": "t", "data": ...}``: a request to the
  application (:mod:`zmqws.rpc`, the JSON of ``data`` as its payload), answered
  ``{"reply": ID, "data": ...}`` or ``{"reply": ID, "error": ...}`` with the ID
  as sent;
* anything else goes upstream as ``[topic, client id, payload]`` (a
  ``json``-envelope client may name the topic: ``{"topic": "t", "data": ...}``),
  if its rights let it write that topic; else ``{"error": "topic not allowed
  for writing", "topic": ...}``.  With ``--rpc`` and no ``--push``/``--pub``
  it goes to the application as a ``message``.

With ``--rpc`` the application is told when the client comes and goes, and may
send it a message (in its envelope, without an id) or close it.

Messages and pings count against the client's rate (the hub's); a flood, JSON
nested past the parser's depth or a topic that is not UTF-8 closes it with 1008.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..peer import address_text
from ..protocol.frames import CLOSE_POLICY_VIOLATION
from ..rights import TopicRefused
from ..rpc import Outcome, client_info, embed
from . import JoinQuery, client_id_of

if TYPE_CHECKING:  # pragma: no cover
    from ..hub import Subscriber
    from ..peer import Client
    from ..protocol.connection import Message
    from ..protocol.handshake import Request
    from . import Context

__all__ = ["WebSocketTransport"]

log = logging.getLogger("zmqws")


def _json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class WebSocketTransport:
    """The WebSocket clients of a gateway (see the module docstring)."""

    name = "websocket"

    def __init__(self, context: "Context") -> None:
        self.context = context
        # The query accept() checked, for the on_open() that follows it in the same call of the
        # server (one slot: a handshake refused in between leaves nothing behind).
        self._accepted: Optional[Tuple["Client", JoinQuery]] = None

    def accept(self, client: "Client", request: "Request") -> None:
        """Before the 101: the query must be servable (400, 403, 503 otherwise)."""
        self._accepted = (client, JoinQuery(self.context, client, request))

    def on_open(self, client: "Client") -> None:
        context = self.context
        assert client.request is not None and client.ws is not None
        accepted, self._accepted = self._accepted, None
        query = accepted[1] if accepted is not None and accepted[0] is client else JoinQuery(
            context, client, client.request)
        client_id = client_id_of(client)
        context.hub.join(client, query.prefixes, query.envelope, context.websocket_wire(client.ws.deflate),
                         client.rights, query.since, client_id, chose_topics=query.chose_topics)
        if context.rpc is not None:
            context.rpc.connected(client_id, self, client, client_info(
                self.name, address_text(client.address), client.rights, query.prefixes, query=client.request.query))

    def on_ping(self, client: "Client") -> None:
        """A ping counts against the client's rate like a message: a ping flood is a flood."""
        if not self.context.hub.rate_ok(client):
            self._close(client, "message rate limit")

    def on_message(self, client: "Client", message: "Message") -> bool:
        """A client message: a control message, or upstream; True when it went upstream (the
        application's ``on_message`` hook then sees it too)."""
        hub = self.context.hub
        subscriber = hub.subscribers.get(client)
        if subscriber is None:
            return False
        if not hub.rate_ok(client):
            self._close(client, "message rate limit")
            return False
        try:
            if not message.binary and message.data[:1] == b"{" and self._control(client, message.data):
                return False
            topic, data = self._upstream_parts(subscriber, message)
        except (RecursionError, UnicodeError) as exc:
            # JSON nested past the parser's depth, or a topic with lone surrogates (\ud800)
            self.context.server.stats.protocol_errors += 1
            self._close(client, "JSON nested too deeply" if isinstance(exc, RecursionError) else "topic is not UTF-8")
            return False
        assert subscriber.client_id is not None
        rpc = self.context.rpc
        if rpc is not None and not self.context.upstream.can_forward:
            error = rpc.message(subscriber.client_id, client.rights, topic, data)
        elif not client.rights.may_write(topic):
            self.context.server.stats.writes_refused += 1
            error = "topic not allowed for writing"
        else:
            error = None
            self.context.upstream.forward(topic, subscriber.client_id, data)
        if error is not None:
            client.send(_json({"error": error, "topic": topic.decode("utf-8", "replace")}))
            return False
        return True

    def _close(self, client: "Client", reason: str) -> None:
        log.info("client %s: %s, closing with 1008", client.id, reason,
                 extra={"client": client.id, "code": CLOSE_POLICY_VIOLATION, "reason": reason})
        self.context.server.close_client(client, CLOSE_POLICY_VIOLATION, reason)

    def _upstream_parts(self, subscriber: "Subscriber", message: "Message") -> Tuple[bytes, bytes]:
        """The topic and payload a client message goes upstream with: ``{"topic", "data"}``
        from a ``json``-envelope client, else ``upstream_topic`` and the message as it is."""
        if subscriber.envelope == "json" and not message.binary:
            try:
                doc = json.loads(message.data)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("topic"), str) and "data" in doc:
                value = doc["data"]
                data = value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode()
                return doc["topic"].encode("utf-8"), data
        return self.context.upstream.config.upstream_topic, message.data

    def _control(self, client: "Client", data: bytes) -> bool:
        """``{"subscribe": "p"}`` / ``{"unsubscribe": "p"}``: change topics, answer with an ack;
        ``{"rpc": ID, ...}``: a request (answered ``"error": "no two-way channel"`` without ``--rpc``)."""
        try:
            doc = json.loads(data)
        except ValueError:
            return False
        if isinstance(doc, dict) and "rpc" in doc:
            if self.context.rpc is None:  # answered, not left waiting: the gateway has no --rpc
                client.send(_json({"reply": doc["rpc"], "error": "no two-way channel"}))
            else:
                self._request(client, doc)
            return True
        if not isinstance(doc, dict) or len(doc) != 1:
            return False
        action, prefix = next(iter(doc.items()))
        if action not in ("subscribe", "unsubscribe") or not isinstance(prefix, str):
            return False
        try:
            prefixes = self.context.hub.change_topics(client, action, [prefix])
        except TopicRefused as exc:
            client.send(_json({"error": exc.reason, "topic": prefix}))
            return True
        shown = [p.decode("utf-8", "replace") for p in prefixes]
        client.send(_json({"ack": action, "topic": prefix, "topics": shown}))
        return True

    # -- the two-way channel (zmqws.rpc) ------------------------------------------------------

    def _request(self, client: "Client", doc: Dict[str, Any]) -> None:
        """``{"rpc": ID, "topic": "t", "data": ...}``: a request (payload: the JSON of ``data``);
        the outcome comes back as ``{"reply": ID, "data"|"error": ...}``."""
        rpc = self.context.rpc
        assert rpc is not None
        request_id = doc["rpc"]

        def on_reply(outcome: Outcome, payload: bytes, _attachments: List[bytes]) -> None:
            answer: Dict[str, Any] = {"reply": request_id}
            if outcome is Outcome.OK:
                answer["data"] = embed(payload)
            else:
                answer["error"] = embed(payload) if outcome is Outcome.ERROR else payload.decode("utf-8")
            client.send(_json(answer))

        topic = doc.get("topic")
        if not isinstance(topic, str):
            on_reply(Outcome.ERROR, b"give the topic of the request as a string", [])
            return
        payload = json.dumps(doc.get("data"), separators=(",", ":")).encode("utf-8")
        rpc.request(client_id_of(client), client.rights, topic.encode("utf-8"), payload, (), on_reply)

    def rpc_send(self, client: "Client", topic: bytes, payload: bytes, _attachments: List[bytes]) -> bool:
        """The application's ``send``: one message in the client's envelope, on its wire."""
        subscriber = self.context.hub.subscribers.get(client)
        if subscriber is None or not client.open:
            return False
        self.context.send_direct(client, subscriber.wire.encode(self.context.direct_message(topic, payload),
                                                                subscriber.envelope))
        return True

    def rpc_close(self, client: "Client", code: int, reason: str) -> None:
        """The application's ``close``: a close frame with its code and reason (§5.5.1: at most
        123 bytes of reason)."""
        self.context.server.close_client(client, code, reason.encode("utf-8")[:123].decode("utf-8", "ignore"))
