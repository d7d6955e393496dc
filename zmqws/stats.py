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
    ZeroMQ, or dropped because the upstream socket was full; ``send_errors``:
    routes whose messages of a loop turn could not be encoded or queued.
    """

    __slots__ = ("connections", "ws_connections", "http_requests", "http_errors",
                 "messages_in", "bytes_in", "messages_out", "bytes_out", "zmq_messages",
                 "drops", "slow_closed", "dropped_slow", "protocol_errors", "ping_timeouts",
                 "handshake_timeouts", "accept_errors", "gaps", "rate_limited",
                 "upstream_messages", "upstream_drops", "sse_connections", "polls_held",
                 "refused", "forbidden", "tls_errors", "idle_closed", "malformed", "sio_sessions",
                 "send_errors", "closes")

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
