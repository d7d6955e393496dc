"""Long-polling clients: ``GET /poll?topic=...&since=ID``.

A poll is answered at once with the messages after ``since`` (a gap notice
first, if the hub cannot vouch for every id), or held, routed like any
client, until a message comes or ``poll_timeout`` passes (then ``[]``).  The
answer is a JSON array of ``json``-envelope messages, bounded by
``poll_max_messages`` and ``poll_max_bytes`` (the rest comes with the next
poll, which asks ``since`` the last id); ``X-Zmqws-Last-Id`` carries the last
id the gateway gave, so a client whose first poll comes back empty knows
where to ask from.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from ..wire import Wire, json_doc
from . import JoinQuery

if TYPE_CHECKING:  # pragma: no cover
    from ..peer import Client
    from ..protocol.handshake import Request
    from ..routing import Stored
    from . import Context

__all__ = ["PollTransport"]

Cors = List[Tuple[str, str]]


class PollWire(Wire):
    """Held polls: each gets its own answer (not ``shared``)."""

    __slots__ = ("transport",)
    shared = False
    name = "poll"

    def __init__(self, transport: "PollTransport") -> None:
        super().__init__(transport.context.envelopes)
        self.transport = transport

    def deliver(self, members: List[Any], batch: List["Stored"]) -> None:
        for client in members:
            self.transport.answer(client, batch)

    def answer(self, member: Any, items: List[Any]) -> bool:
        """A resume with something to say: the poll is answered with it."""
        self.transport.answer(member, items)
        return True


class PollTransport:
    """The long-polling clients of a gateway (see the module docstring)."""

    name = "poll"

    def __init__(self, context: "Context") -> None:
        self.context = context
        self.wire = PollWire(self)
        self._cors: Dict["Client", Cors] = {}  # held polls: the CORS headers of their answer

    def start(self, client: "Client", request: "Request", cors: Cors) -> None:
        """``GET /poll?since=ID``: the messages after ID at once, or held until one comes."""
        context = self.context
        hub = context.hub
        context.server.check_access(client, request)
        query = JoinQuery(context, client, request)
        since = query.since
        # Every poll wants its topics upstream, as a joining client does, even one answered at
        # once from the history: the linger restarts, so the subscription lasts as long as the
        # client keeps polling, and the resume below sees a subscription that (re)starts now
        # and reports the ids the gateway may have been blind for.
        for prefix in query.prefixes:
            hub.want(prefix)
        behind = since is not None and hub.config.upstream_ids and since > hub.last_id
        try:
            if since is not None and not behind:
                notice, missed = hub.missed(query.prefixes, since)
                if notice is not None or missed:
                    self._respond(client, ([notice] if notice else []) + missed, cors)
                    return
            # Nothing yet: hold the request, routed like any client, until a message or the timeout.
            context.server.stats.polls_held += 1
            self._cors[client] = cors
            context.server.park(client, time.monotonic() + context.config.poll_timeout, self.name)
            hub.join(client, query.prefixes, "json", self.wire, client.rights, since if behind else None,
                     chose_topics=query.chose_topics)
        finally:
            for prefix in query.prefixes:
                hub.release(prefix)

    def answer(self, client: "Client", items: List[Any]) -> None:
        """A held poll's answer (messages, or ``[]`` at its deadline): it leaves the hub."""
        self.context.hub.leave(client)
        self._respond(client, items, self._cors.pop(client, []))

    def gone(self, client: "Client") -> None:
        self._cors.pop(client, None)

    def _respond(self, client: "Client", items: List[Any], cors: Cors) -> None:
        """A JSON array of messages (a gap notice first), bounded in count and bytes."""
        config = self.context.config
        server = self.context.server
        docs: List[str] = []
        size = 2
        for item in items:
            doc = json.dumps(item if isinstance(item, dict) else json_doc(item), separators=(",", ":"))
            if docs and (len(docs) >= config.poll_max_messages or size + len(doc) > config.poll_max_bytes):
                break  # the rest on the next poll, which asks for what follows the last id
            docs.append(doc)
            size += len(doc) + 1
        delivered = sum(1 for item in items[:len(docs)] if not isinstance(item, dict))
        server.stats.messages_out += delivered
        body = ("[" + ",".join(docs) + "]").encode("utf-8")
        server.stats.bytes_out += len(body)
        headers = [("Cache-Control", "no-cache"), ("X-Zmqws-Last-Id", str(self.context.hub.last_id))] + cors
        if cors:
            headers.append(("Access-Control-Expose-Headers", "X-Zmqws-Last-Id"))
        server.answer(client, 200, body, "application/json", headers)
