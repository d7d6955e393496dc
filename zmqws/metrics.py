"""``GET /metrics``: the server's counters in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:  # pragma: no cover
    from .server import WebSocketServer

__all__ = ["render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (stats attribute, metric name, type, help)
_COUNTERS = [
    ("connections", "zmqws_connections_total", "TCP connections accepted"),
    ("ws_connections", "zmqws_websocket_connections_total", "WebSocket handshakes completed"),
    ("sse_connections", "zmqws_sse_connections_total", "Server-Sent Events streams started"),
    ("polls_held", "zmqws_polls_held_total", "long-polling requests held open"),
    ("http_requests", "zmqws_http_requests_total", "plain HTTP requests"),
    ("http_errors", "zmqws_http_errors_total", "HTTP requests answered with an error status"),
    ("zmq_messages", "zmqws_zmq_messages_total", "messages taken from ZeroMQ (and publish())"),
    ("messages_out", "zmqws_messages_out_total", "deliveries queued to clients"),
    ("bytes_out", "zmqws_bytes_out_total", "bytes queued to clients"),
    ("messages_in", "zmqws_messages_in_total", "messages received from WebSocket clients"),
    ("bytes_in", "zmqws_bytes_in_total", "bytes read from clients"),
    ("upstream_messages", "zmqws_upstream_messages_total", "client messages forwarded to ZeroMQ"),
    ("gaps", "zmqws_resume_gaps_total", "gap notices sent to resuming clients"),
    ("refused", "zmqws_refused_total", "connections refused over a connection limit (503)"),
    ("forbidden", "zmqws_forbidden_total", "requests refused by origin or authentication"),
    ("handshake_timeouts", "zmqws_handshake_timeouts_total", "requests not complete in time"),
    ("ping_timeouts", "zmqws_ping_timeouts_total", "clients closed for not answering a ping"),
    ("protocol_errors", "zmqws_protocol_errors_total", "WebSocket protocol violations by clients"),
    ("tls_errors", "zmqws_tls_errors_total", "failed TLS handshakes"),
    ("accept_errors", "zmqws_accept_errors_total", "accept() failures"),
]

_DROPS = [
    ("slow_closed", "slow_consumer_closed"),
    ("dropped_slow", "slow_consumer_dropped"),
    ("upstream_drops", "upstream_full"),
    ("rate_limited", "client_rate_limit"),
    ("idle_closed", "idle_timeout"),
]


def render(server: "WebSocketServer") -> bytes:
    """Render the metrics of ``server`` (called on the loop thread)."""
    stats = server.stats
    lines: List[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Dict[str, float]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples.items():
            lines.append(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}")

    by_transport: Dict[str, int] = {"websocket": 0, "sse": 0, "poll": 0, "http": 0}
    queued = 0
    for client in list(server._clients.values()):
        transport = client.transport or "http"
        by_transport[transport] = by_transport.get(transport, 0) + 1
        queued += client.session.out_bytes
    metric("zmqws_clients", "gauge", "connected clients by transport",
           {f'{{transport="{t}"}}': n for t, n in by_transport.items()})
    metric("zmqws_queued_bytes", "gauge", "bytes waiting in client output queues", {"": queued})
    for attr, name, help_text in _COUNTERS:
        metric(name, "counter", help_text, {"": getattr(stats, attr)})
    metric("zmqws_drops_total", "counter", "deliveries dropped or clients closed, by cause",
           {f'{{cause="{cause}"}}': getattr(stats, attr) for attr, cause in _DROPS})
    metric("zmqws_dropped_messages_total", "counter", "deliveries not made (slow consumers)",
           {"": stats.drops})
    metric("zmqws_closes_total", "counter", "WebSocket connections ended, by close code",
           {f'{{code="{code}"}}': n for code, n in sorted(stats.closes.items())} or {'{code="1000"}': 0})
    loop = server.loop
    if loop is not None:
        metric("zmqws_loop_turns_total", "counter", "poll loop turns", {"": loop.turns})
        metric("zmqws_loop_busy_seconds_total", "counter", "time spent working in loop turns (not polling)",
               {"": float(loop.busy_seconds)})
        metric("zmqws_loop_turn_max_seconds", "gauge", "longest loop turn so far",
               {"": float(loop.max_turn_seconds)})
    return ("\n".join(lines) + "\n").encode("utf-8")
