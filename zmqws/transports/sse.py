"""Server-Sent Events clients: ``GET /events?topic=...`` (HTML Living Standard §9.2).

The response never ends: each message is an event whose id is the message
id, so an ``EventSource`` that reconnects sends ``Last-Event-ID`` and resumes
without loss (the hub replays).  A comment line every ``sse_heartbeat``
seconds keeps idle proxies from closing the stream.  Input is ignored.

With ``--rpc`` the application is told when the client comes and goes; its
``send`` is an event of the stream (in the client's envelope, without an id,
so that ``Last-Event-ID`` stays the last message's) and its ``close`` ends the
stream.  Requests go through ``POST /rpc`` (:mod:`.http`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple

from ..peer import address_text
from ..protocol import sse
from ..rpc import client_info
from ..wire import SseWire
from . import JoinQuery, client_id_of

if TYPE_CHECKING:  # pragma: no cover
    from ..peer import Client
    from ..protocol.handshake import Request
    from . import Context

__all__ = ["SseTransport"]


class SseTransport:
    """The Server-Sent Events clients of a gateway (see the module docstring)."""

    name = "sse"

    def __init__(self, context: "Context") -> None:
        self.context = context
        self.wire = SseWire(context.envelopes)

    def start(self, client: "Client", request: "Request", cors: List[Tuple[str, str]]) -> None:
        """``GET /events``: the response becomes an endless event stream."""
        server = self.context.server
        server.check_access(client, request)
        query = JoinQuery(self.context, client, request)
        if request.method == "HEAD":  # the head says keep-alive: honour it (no body follows)
            server.http_reply(client, sse.response_head(cors), keep_alive=True)
            return
        server.start_stream(client, sse.response_head(cors), self.name)
        server.stats.sse_connections += 1
        client_id = client_id_of(client)
        self.context.hub.join(client, query.prefixes, query.envelope, self.wire, client.rights, query.since,
                              client_id, chose_topics=query.chose_topics)
        if self.context.rpc is not None:
            self.context.rpc.connected(client_id, self, client, client_info(
                self.name, address_text(client.address), client.rights, query.prefixes, query=request.query))

    def tick(self, client: "Client", now: float) -> None:
        """A comment line every ``sse_heartbeat`` seconds keeps idle proxies from closing streams."""
        heartbeat = self.context.config.sse_heartbeat
        if heartbeat and now - client.ping_sent_at >= heartbeat:
            client.ping_sent_at = now
            if not self.context.server.queued_bytes(client):
                self.context.server.queue(client, sse.HEARTBEAT)

    def rpc_send(self, client: "Client", topic: bytes, payload: bytes, _attachments: List[bytes]) -> bool:
        """The application's ``send``: one event in the client's envelope."""
        subscriber = self.context.hub.subscribers.get(client)
        if subscriber is None:
            return False
        self.context.send_direct(client, self.wire.encode(self.context.direct_message(topic, payload),
                                                          subscriber.envelope))
        return True

    def rpc_close(self, client: "Client", _code: int, _reason: str) -> None:
        """The application's ``close``: the stream ends once what is queued is written (an event
        stream has no close code)."""
        self.context.hub.leave(client)
        client.close_after_flush = True
        self.context.server.queued(client)
