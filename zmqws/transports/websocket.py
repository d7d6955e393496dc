"""WebSocket clients (RFC 6455): ``ws://host:port/?topic=prefix&format=json&since=ID``.

The query is checked before the 101 (:class:`~zmqws.transports.JoinQuery`);
once open, the client joins the hub on the wire of its negotiated compression.
What it sends:

* ``{"subscribe": "p"}`` / ``{"unsubscribe": "p"}``: a topic change, answered
  with ``{"ack", "topic", "topics"}`` or ``{"error", "topic"}``;
* anything else goes upstream as ``[topic, client id, payload]`` (a
  ``json``-envelope client may name the topic: ``{"topic": "t", "data": ...}``),
  if its rights let it write that topic; else ``{"error": "topic not allowed
  for writing", "topic": ...}``.

Messages and pings count against the client's rate (the hub's); a flood, JSON
nested past the parser's depth or a topic that is not UTF-8 closes it with 1008.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Tuple

from ..protocol.frames import CLOSE_POLICY_VIOLATION
from ..rights import TopicRefused
from . import JoinQuery

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

    def accept(self, client: "Client", request: "Request") -> None:
        """Before the 101: the query must be servable (400, 403, 503 otherwise)."""
        JoinQuery(self.context, client, request)

    def on_open(self, client: "Client") -> None:
        context = self.context
        assert client.request is not None and client.ws is not None
        query = JoinQuery(context, client, client.request)
        context.hub.join(client, query.prefixes, query.envelope, context.websocket_wire(client.ws.deflate),
                         client.rights, query.since, chose_topics=query.chose_topics)

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
        if not client.rights.may_write(topic):
            self.context.server.stats.writes_refused += 1
            client.send(_json({"error": "topic not allowed for writing", "topic": topic.decode("utf-8", "replace")}))
            return False
        if subscriber.client_id is None:
            subscriber.client_id = f"{os.getpid()}.{client.id}".encode()
        self.context.upstream.forward(topic, subscriber.client_id, data)
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
        """``{"subscribe": "p"}`` / ``{"unsubscribe": "p"}``: change topics, answer with an ack."""
        try:
            doc = json.loads(data)
        except ValueError:
            return False
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
