"""The ZeroMQ → WebSocket gateway: a SUB socket in the server's poll loop, and the fan-out.

:class:`Gateway` is a :class:`~zmqws.server.WebSocketServer` whose loop also
polls a ZeroMQ SUB socket.  Each turn drains the SUB socket up to a budget,
encodes every message's frame once, joins the turn's frames into one
``bytes`` per wire format (plain, or permessage-deflate per window size) and
queues that same object on every client of the format; the server then
flushes each client with one ``sendmsg``.  Per client and per turn the work
is an append and an addition, whatever the number of messages.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

import zmq

from .frames import OP_BINARY, OP_TEXT, frame_header
from .handshake import HTTPError, Request, http_response
from .server import Client, WebSocketServer
from .utf8 import is_utf8

__all__ = ["Gateway"]

log = logging.getLogger("zmqws")

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

PAYLOAD_MODES = ("auto", "text", "binary")


class Gateway(WebSocketServer):
    """Push every message from ZeroMQ publishers to every WebSocket client.

    ``Gateway(sub_endpoint, port, *, host="127.0.0.1", ...)``:

    * ``sub_endpoint``: a ZeroMQ endpoint or a list of them (``None`` for a
      gateway fed only by :meth:`publish`).  The SUB socket connects to each
      (``bind=True``: binds instead).
    * ``payload_mode``: ``"auto"`` (valid UTF-8 → text frame, else binary),
      ``"text"`` or ``"binary"``.  The payload is the last part of a
      multipart message.
    * ``rcvhwm``: the SUB socket's receive high-water mark (messages).
    * ``drain_budget``: most messages taken from ZeroMQ per loop turn.
    * ``zmq_context``: a context to use (default: a new one, terminated on stop).
    * every :class:`WebSocketServer` option (limits, timeouts, hooks).

    ``run()`` blocks; ``start()``/``stop()`` run it on its own thread;
    ``publish()`` is thread-safe.  Counters: ``clients`` and ``stats``.
    """

    def __init__(self, sub_endpoint: Union[str, Sequence[str], None] = None, port: int = 8080, *,
                 host: str = "127.0.0.1", bind: bool = False, payload_mode: str = "auto",
                 rcvhwm: int = 100_000, drain_budget: int = 4096,
                 zmq_context: Optional[zmq.Context] = None, page: Optional[str] = "index.html",
                 **server_options: Any) -> None:
        super().__init__(port, host=host, **server_options)
        if payload_mode not in PAYLOAD_MODES:
            raise ValueError(f"payload_mode must be one of {PAYLOAD_MODES}")
        if sub_endpoint is None:
            self.sub_endpoints: List[str] = []
        elif isinstance(sub_endpoint, str):
            self.sub_endpoints = [sub_endpoint]
        else:
            self.sub_endpoints = list(sub_endpoint)
        self.bind = bind
        self.payload_mode = payload_mode
        self.rcvhwm = rcvhwm
        self.drain_budget = drain_budget
        self.page = page
        self._own_context = zmq_context is None
        self._context = zmq_context
        self._sub: Optional[zmq.Socket] = None
        self._published: Deque[Tuple[Optional[bytes], bytes]] = deque()
        self._last_id = 0
        # This turn's messages: (opcode, payload, frame).
        self._batch: List[Tuple[int, bytes, bytes]] = []
        # Open clients by wire format: None = plain frames, else the deflate window bits.
        self._by_format: Dict[Any, Dict[Client, None]] = {None: {}}
        self._lock = threading.Lock()

    # -- public API -------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The id of the last message taken in (ids start at 1 and only grow)."""
        return self._last_id

    def publish(self, payload: Union[bytes, str], topic: Union[bytes, str, None] = None) -> None:
        """Push a message of the embedding service's own to the clients; thread-safe."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if isinstance(topic, str):
            topic = topic.encode("utf-8")
        self._published.append((topic, bytes(payload)))
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._take_published)

    # -- setup / teardown ---------------------------------------------------------

    def _setup(self) -> None:
        if self._context is None:
            self._context = zmq.Context()
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub = sub
        for endpoint in self.sub_endpoints:
            try:
                if self.bind:
                    sub.bind(endpoint)
                else:
                    sub.connect(endpoint)
            except zmq.ZMQError as exc:
                verb = "bind" if self.bind else "connect"
                raise ValueError(f"cannot {verb} SUB socket to {endpoint!r}: {exc}") from None
        self.loop.register(sub, zmq.POLLIN, self._on_sub)
        self.loop.after_turn.insert(0, self._send_batch)
        if self._published:
            self.loop.call_soon_threadsafe(self._take_published)

    def _teardown(self) -> None:
        if self._sub is not None:
            if self.loop is not None:
                self.loop.unregister(self._sub)
            self._sub.close(linger=0)
            self._sub = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None
        super()._teardown()

    # -- the ZeroMQ side ----------------------------------------------------------

    def _on_sub(self, _revents: int) -> None:
        recv = self._sub.recv_multipart
        take = self._take
        for _ in range(self.drain_budget):
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            take(parts[0] if len(parts) > 1 else None, parts[-1])

    def _take_published(self) -> None:
        published = self._published
        while published:
            topic, payload = published.popleft()
            self._take(topic, payload)

    def _take(self, topic: Optional[bytes], payload: bytes) -> None:
        """One message in: give it an id, encode its frame once, add it to the turn's batch."""
        self._last_id += 1
        self.stats.zmq_messages += 1
        mode = self.payload_mode
        if mode == "auto":
            opcode = OP_TEXT if is_utf8(payload) else OP_BINARY
        else:
            opcode = OP_TEXT if mode == "text" else OP_BINARY
        self._batch.append((opcode, payload, frame_header(opcode, len(payload)) + payload))

    def _send_batch(self) -> None:
        """After each turn: one joined ``bytes`` per wire format, queued on every client of it."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        count = len(batch)
        for key, members in self._by_format.items():
            if not members:
                continue
            if key is None:
                blob = batch[0][2] if count == 1 else b"".join([m[2] for m in batch])
            else:
                encode = next(iter(members)).ws.deflate.encode_message
                blob = b"".join([encode(m[0], m[1]) for m in batch])
            self.fanout(blob, members, count)

    # -- clients --------------------------------------------------------------------

    def _on_open(self, client: Client) -> None:
        deflate = client.ws.deflate
        key = None if deflate is None else deflate.out_key
        self._by_format.setdefault(key, {})[client] = None
        client.data["format"] = key
        super()._on_open(client)

    def _on_close(self, client: Client) -> None:
        self._unroute(client)
        super()._on_close(client)

    def _close_client(self, client: Client, code: int, reason: str) -> None:
        self._unroute(client)
        super()._close_client(client, code, reason)

    def _closing_done(self, client: Client) -> None:
        self._unroute(client)
        super()._closing_done(client)

    def _unroute(self, client: Client) -> None:
        members = self._by_format.get(client.data.get("format"))
        if members is not None:
            members.pop(client, None)

    # -- HTTP -------------------------------------------------------------------------

    def handle_http(self, client: Client, request: Request) -> bytes:
        """``GET /`` serves the live page; other paths are 404."""
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed", [("Allow", "GET, HEAD")])
        if request.path in ("/", "/index.html") and self.page:
            with open(os.path.join(_STATIC, self.page), "rb") as f:
                body = f.read()
            return http_response(200, body, "text/html; charset=utf-8",
                                 [("Cache-Control", "no-cache")])
        raise HTTPError(404, "not found")
