"""Long-polling clients: ``GET /poll?topic=...&since=ID``.

A poll is answered at once with the messages after ``since`` (a gap notice
first, if the hub cannot vouch for every id), or held, routed like any
client, until a message comes or ``poll_timeout`` passes (then ``[]``).  The
answer is a JSON array of ``json``-envelope messages, bounded by
``poll_max_messages`` and ``poll_max_bytes`` (the rest comes with the next
poll, which asks ``since`` the last id); ``X-Zmqws-Last-Id`` carries the last
id the gateway gave, so a client whose first poll comes back empty knows
where to ask from.  With ``poll_coalesce_ms`` a connection's answers with
messages are paced, leading edge (:class:`~zmqws.transports.PollPacer`): one
goes at once if the connection's previous one went that long ago or more (or
it had none), else it waits until then, gathering what comes meanwhile (not a
full answer, nor one with a gap notice), so that a poller of a busy stream
makes one request per interval, not one per message, and a quiet one waits
for nothing.

With ``--rpc`` a long-polling client is its (keep-alive) connection: the
application is told of it at its first poll, and that it left once the
connection is closed (seen within a second).  The application's ``send``
answers the held poll (or the next one: up to ``poll_max_messages`` wait,
more are dropped and counted) as a message without an id; its ``close``
closes the connection.  Requests go through ``POST /rpc`` (:mod:`.http`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..peer import GONE, address_text
from ..rpc import client_info
from ..wire import Wire, json_bytes
from . import JoinQuery, PollPacer, client_id_of

if TYPE_CHECKING:  # pragma: no cover
    from ..peer import Client
    from ..loop import Timer
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
        self.transport.deliver(members, batch)

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
        self._sends: Dict["Client", List["Stored"]] = {}  # --rpc: the application's sends for the next poll
        self._rpc_clients: Dict["Client", None] = {}  # --rpc: connections the application knows
        self._sweep_timer: Optional["Timer"] = None
        # poll_coalesce_ms: when each connection's last answer with messages went; held polls'
        # messages so far
        self._pacer: PollPacer[List[Any]] = PollPacer(context, lambda client: self.answer(client, []))

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
        if context.rpc is not None and not context.rpc.knows(client_id_of(client)):
            self._rpc_connected(client, request, query.prefixes)
        try:
            sent: List[Any] = list(self._sends.pop(client, ()))
            notice = None
            if since is not None and not behind:
                notice, missed = hub.missed(query.prefixes, since, context.config.poll_max_messages)
                sent += ([notice] if notice else []) + missed
            due = self._wait_until(client, sent) if sent and notice is None else None
            if sent and due is None:
                self._respond(client, sent, cors)
                return
            # Nothing yet (or, with poll_coalesce_ms, the previous answer too recent): hold the
            # request, routed like any client, until a message (or that answer's due time), or
            # the timeout.
            context.server.stats.polls_held += 1
            self._cors[client] = cors
            context.server.park(client, time.monotonic() + context.config.poll_timeout, self.name)
            if due is not None:  # what was there, and what comes until then, in one answer
                self._pacer.gather(client, sent, due)
            hub.join(client, query.prefixes, "json", self.wire, client.rights, since if behind else None,
                     chose_topics=query.chose_topics)
        finally:
            for prefix in query.prefixes:
                hub.release(prefix)

    def answer(self, client: "Client", items: List[Any]) -> None:
        """A held poll's answer (messages, or ``[]`` at its deadline; after what it gathered):
        it leaves the hub."""
        self.answer_all([client], self._pacer.gathering.pop(client, []) + items)

    def deliver(self, clients: List["Client"], batch: List["Stored"]) -> None:
        """A route's messages of a turn to its held polls: answered at once (one body for all),
        or with ``poll_coalesce_ms`` gathered by those whose previous answer is too recent,
        until its due time (a full answer goes at once: it could carry no more)."""
        if not self.context.config.poll_coalesce_ms:
            self.answer_all(clients, batch)
            return
        pacer = self._pacer
        gathering = pacer.gathering
        limit = self.context.config.poll_max_messages
        now = time.monotonic()
        at_once, full = [], []
        for client in clients:
            gathered = gathering.get(client)
            if gathered is not None:
                gathered.extend(batch)
                if len(gathered) >= limit:
                    full.append(client)
                continue
            due = self._wait_until(client, batch, now)
            if due is None:
                at_once.append(client)
            else:
                pacer.gather(client, list(batch), due)
        if at_once:
            self.answer_all(at_once, batch)
        for client in full:
            self.answer(client, [])

    def _wait_until(self, client: "Client", items: List[Any], now: Optional[float] = None) -> Optional[float]:
        """With ``poll_coalesce_ms``, when an answer of ``items`` (no gap notice in it) may go:
        None for now (no pacing, a full answer, a connection whose previous answer with
        messages went long enough ago), else that answer's time plus the interval."""
        config = self.context.config
        if not config.poll_coalesce_ms or len(items) >= config.poll_max_messages:
            return None
        return self._pacer.wait_until(client, time.monotonic() if now is None else now)

    def answer_all(self, clients: List["Client"], items: List[Any]) -> None:
        """The same answer to held polls (a route's messages of a turn): the body built once."""
        body, delivered = self._body(items)
        leave = self.context.hub.leave
        self._answering(clients, items)
        for client in clients:
            leave(client)
            self._send(client, body, delivered, self._cors.pop(client, []))

    def _answering(self, clients: List["Client"], items: List[Any]) -> None:
        """With ``poll_coalesce_ms``: these connections' answers with messages go now (an empty
        one, at a poll's deadline, paces nothing).  Called before they go, so that a connection
        its answer closes is forgotten (:meth:`gone`) afterwards, not remembered again."""
        if items and self.context.config.poll_coalesce_ms:
            self._pacer.sent(clients, self._pacer.now())

    def gone(self, client: "Client") -> None:
        self._cors.pop(client, None)
        self._pacer.forget(client)

    # -- the two-way channel (zmqws.rpc) ------------------------------------------------------

    def _rpc_connected(self, client: "Client", request: "Request", prefixes: List[bytes]) -> None:
        assert self.context.rpc is not None
        self._rpc_clients[client] = None
        self.context.rpc.connected(client_id_of(client), self, client, client_info(
            self.name, address_text(client.address), client.rights, prefixes, query=request.query))
        if self._sweep_timer is None:
            self._sweep_later()

    def _sweep_later(self) -> None:
        loop = self.context.server.loop
        assert loop is not None
        self._sweep_timer = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Once a second while the application knows poll clients: those whose connection is
        closed have left (between two polls a connection belongs to no transport)."""
        self._sweep_timer = None
        rpc = self.context.rpc
        assert rpc is not None
        for client in [c for c in self._rpc_clients if c.phase == GONE]:
            del self._rpc_clients[client]
            self._sends.pop(client, None)
            rpc.disconnected(client_id_of(client), "closed")
        if self._rpc_clients and not self.context.server.stopping:
            self._sweep_later()

    def rpc_send(self, client: "Client", topic: bytes, payload: bytes, _attachments: List[bytes]) -> bool:
        """The application's ``send``: the held poll's answer, or waiting for the next poll."""
        message = self.context.direct_message(topic, payload)
        if client in self._cors:
            self.answer(client, [message])
            return True
        waiting = self._sends.setdefault(client, [])
        if len(waiting) >= self.context.config.poll_max_messages:
            stats = self.context.server.stats
            stats.drops += 1
            stats.dropped_slow += 1  # a client that does not poll is a slow consumer
        else:
            waiting.append(message)
        return True

    def rpc_close(self, client: "Client", _code: int, _reason: str) -> None:
        """The application's ``close``: the connection is closed (a held poll unanswered)."""
        self.context.server.abort(client)

    def _respond(self, client: "Client", items: List[Any], cors: Cors) -> None:
        """A poll answered at once (see :meth:`_body`)."""
        self._answering([client], items)
        self._send(client, *self._body(items), cors)

    def _body(self, items: List[Any]) -> Tuple[bytes, int]:
        """A JSON array of messages (a gap notice first), bounded in count and bytes, and the
        number of messages in it."""
        config = self.context.config
        docs: List[bytes] = []
        size = 2
        for item in items:
            # A message's document is encoded once (json_bytes), whatever the number of polls.
            if isinstance(item, dict):
                doc = json.dumps(item, separators=(",", ":")).encode("ascii")
            else:
                doc = json_bytes(item)
            if docs and (len(docs) >= config.poll_max_messages or size + len(doc) > config.poll_max_bytes):
                break  # the rest on the next poll, which asks for what follows the last id
            docs.append(doc)
            size += len(doc) + 1
        delivered = sum(1 for item in items[:len(docs)] if not isinstance(item, dict))
        return b"[" + b",".join(docs) + b"]", delivered

    def _send(self, client: "Client", body: bytes, delivered: int, cors: Cors) -> None:
        server = self.context.server
        server.stats.messages_out += delivered
        server.stats.bytes_out += len(body)
        headers = [("Cache-Control", "no-cache"), ("X-Zmqws-Last-Id", str(self.context.hub.last_id))] + cors
        if cors:
            headers.append(("Access-Control-Expose-Headers", "X-Zmqws-Last-Id"))
        server.answer(client, 200, body, "application/json", headers)
