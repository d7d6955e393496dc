"""Counters kept by the loop (read them from any thread; they are plain ints)."""

from __future__ import annotations

from typing import Dict

__all__ = ["Stats"]


class Stats:
    """What the server and the gateway count.

    ``messages_in``/``bytes_in``: from clients (messages) and from the network
    (bytes); ``messages_out``/``bytes_out``: deliveries queued to clients;
    ``zmq_messages``: messages taken from the ZeroMQ side; ``drops``:
    deliveries not made because of the slow-consumer policy; ``closes``:
    closes by close code (1006 = no close frame); ``gaps``: gap notices sent
    (to resuming clients, and for messages dropped) and Socket.IO recoveries
    refused; ``rate_limited``: clients closed for flooding;
    ``upstream_messages``/``upstream_drops``: client messages forwarded to
    ZeroMQ, or dropped because the upstream socket was full; ``topics_refused``:
    topic requests refused (rights or caps); ``writes_refused``: client messages
    not forwarded because the client may not write their topic;
    ``upstream_gaps``/``upstream_missed``: with upstream ids, jumps in the ids
    seen while every topic is subscribed, and the ids they skipped;
    ``send_errors``: routes whose messages of a loop turn could not be encoded or queued;
    ``rpc_*``: the two-way channel (:mod:`zmqws.rpc`): requests sent, replies delivered,
    messages sent, sends delivered, closes applied, requests timed out, requests refused
    over ``rpc_max_inflight``, frames not sent (no application, or its high-water mark),
    frames from the application naming a client or request no longer (or never) known.
    """

    __slots__ = ("connections", "ws_connections", "http_requests", "http_errors",
                 "messages_in", "bytes_in", "messages_out", "bytes_out", "zmq_messages",
                 "drops", "slow_closed", "dropped_slow", "protocol_errors", "ping_timeouts",
                 "handshake_timeouts", "accept_errors", "gaps", "rate_limited",
                 "upstream_messages", "upstream_drops", "sse_connections", "polls_held",
                 "refused", "forbidden", "tls_errors", "idle_closed", "malformed", "sio_sessions",
                 "topics_refused", "writes_refused",
                 "pipeline_paused", "requests_capped", "host_refused",
                 "bodies_refused", "upstream_gaps", "upstream_missed", "send_errors",
                 "rpc_requests", "rpc_replies", "rpc_messages", "rpc_sends", "rpc_closes", "rpc_timeouts",
                 "rpc_refused", "rpc_unavailable", "rpc_unknown", "closes")

    # every counter is an int (set to 0 in __init__); closes maps a close code to a count
    connections: int
    ws_connections: int
    http_requests: int
    http_errors: int
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    zmq_messages: int
    drops: int
    slow_closed: int
    dropped_slow: int
    protocol_errors: int
    ping_timeouts: int
    handshake_timeouts: int
    accept_errors: int
    gaps: int
    rate_limited: int
    upstream_messages: int
    upstream_drops: int
    sse_connections: int
    polls_held: int
    refused: int
    forbidden: int
    tls_errors: int
    idle_closed: int
    malformed: int
    sio_sessions: int
    topics_refused: int
    writes_refused: int
    pipeline_paused: int
    requests_capped: int
    host_refused: int
    bodies_refused: int
    upstream_gaps: int
    upstream_missed: int
    send_errors: int
    rpc_requests: int
    rpc_replies: int
    rpc_messages: int
    rpc_sends: int
    rpc_closes: int
    rpc_timeouts: int
    rpc_refused: int
    rpc_unavailable: int
    rpc_unknown: int
    closes: Dict[int, int]

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.closes: Dict[int, int] = {}

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1

    def as_dict(self) -> Dict[str, object]:
        return {name: (dict(getattr(self, name)) if name == "closes" else getattr(self, name))
                for name in self.__slots__}

    def __repr__(self) -> str:  # pragma: no cover
        return f"Stats({self.as_dict()})"
