"""``POST /rpc``: one request to the application (``--rpc``), one HTTP answer. For curl, and
for SSE and long-poll clients, which have no way up of their own.

The body is ``{"topic": "t", "data": ...}``; the request goes to the application
(:mod:`zmqws.rpc`) with the JSON of ``data`` as its payload.  The answer:

* 200 with the reply's payload as the body (``application/json`` when it parses);
* 502 ``{"error": ...}`` for an error reply, 504 ``{"error": "timeout"}`` after
  ``rpc_timeout``;
* 403 outside the token's write prefixes, 503 with no application connected
  (or its high-water mark reached); 400 for a body that is not such an object.

Each request is a client of its own for the application: ``connect`` (transport
``http``, its address, its token's name), ``request``, then ``disconnect``
once answered.  Access is checked as for every transport (origin, token).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, List, Optional

from ..peer import address_text
from ..protocol.errors import HTTPError
from ..protocol.handshake import http_response
from ..rpc import Outcome, client_info, embed
from . import client_id_of, cors_headers

if TYPE_CHECKING:  # pragma: no cover
    from ..peer import Client
    from ..protocol.handshake import Request
    from . import Context

__all__ = ["HttpRpcTransport"]


class HttpRpcTransport:
    """``POST /rpc`` (see the module docstring)."""

    name = "http"
    path = "/rpc"

    def __init__(self, context: "Context") -> None:
        self.context = context

    def handle(self, client: "Client", request: "Request") -> Optional[bytes]:
        """A request to ``/rpc``: its answer now (refusals, the CORS preflight), or None when
        it comes later (the application's reply)."""
        context = self.context
        rpc = context.rpc
        assert rpc is not None
        cors = cors_headers(request, context.cors_origins)
        if request.method == "OPTIONS" and cors:
            return http_response(204, headers=cors + [("Access-Control-Allow-Methods", "POST"),
                                                      ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                                                      ("Access-Control-Max-Age", "600")])
        if request.method != "POST":
            raise HTTPError(405, "method not allowed", [("Allow", "POST")])
        server = context.server
        server.check_access(client, request)
        topic, payload = self._parse(request.body)
        client_id = client_id_of(client)
        rpc.connected(client_id, self, client, client_info(self.name, address_text(client.address), client.rights, ()))
        server.reply_later(client)
        client.deadline = 0.0  # no idle deadline while it waits: rpc_timeout bounds the wait

        def on_reply(outcome: Outcome, body: bytes, _attachments: List[bytes]) -> None:
            rpc.disconnected(client_id, "answered")
            if outcome is Outcome.OK:
                content_type = "application/octet-stream"
                try:
                    json.loads(body)
                    content_type = "application/json"
                except ValueError:
                    pass
            else:
                error = embed(body) if outcome is Outcome.ERROR else body.decode("utf-8")
                body, content_type = json.dumps({"error": error}).encode("utf-8"), "application/json"
            server.reply_now(client, http_response(outcome.value, body, content_type, cors,
                                                   keep_alive=request.keep_alive), keep_alive=True)

        rpc.request(client_id, client.rights, topic, payload, (), on_reply)
        return None

    @staticmethod
    def _parse(body: bytes) -> "tuple[bytes, bytes]":
        """The topic and payload of ``{"topic": "t", "data": ...}``; 400 for anything else."""
        try:
            doc: Any = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("topic"), str):
            raise HTTPError(400, 'the body must be {"topic": "...", "data": ...}')
        try:
            return doc["topic"].encode("utf-8"), json.dumps(doc.get("data"), separators=(",", ":")).encode("utf-8")
        except UnicodeError:
            raise HTTPError(400, "the topic must be UTF-8") from None

    def rpc_send(self, _client: "Client", _topic: bytes, _payload: bytes, _attachments: List[bytes]) -> bool:
        """An HTTP request has no stream: nothing can be sent to it."""
        return False

    def rpc_close(self, client: "Client", _code: int, _reason: str) -> None:
        """The application's ``close``: the connection is dropped unanswered."""
        rpc = self.context.rpc
        assert rpc is not None
        rpc.disconnected(client_id_of(client), "closed")
        self.context.server.abort(client)
