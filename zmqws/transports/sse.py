"""Server-Sent Events clients: ``GET /events?topic=...`` (HTML Living Standard §9.2).

The response never ends: each message is an event whose id is the message
id, so an ``EventSource`` that reconnects sends ``Last-Event-ID`` and resumes
without loss (the hub replays).  A comment line every ``sse_heartbeat``
seconds keeps idle proxies from closing the stream.  Input is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple

from ..protocol import sse
from ..wire import SseWire
from . import JoinQuery

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
        self.context.hub.join(client, query.prefixes, query.envelope, self.wire, client.rights, query.since,
                              chose_topics=query.chose_topics)

    def tick(self, client: "Client", now: float) -> None:
        """A comment line every ``sse_heartbeat`` seconds keeps idle proxies from closing streams."""
        heartbeat = self.context.config.sse_heartbeat
        if heartbeat and now - client.ping_sent_at >= heartbeat:
            client.ping_sent_at = now
            if not self.context.server.queued_bytes(client):
                self.context.server.queue(client, sse.HEARTBEAT)
