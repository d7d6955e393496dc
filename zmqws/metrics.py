"""``GET /metrics``: the counters in the Prometheus text exposition format (0.0.4).

With ``--workers N`` every worker process writes a snapshot of its counters
to a shared folder once a second (``write_snapshot``); whichever worker
answers ``/metrics`` reads them all and reports each series summed over the
workers (no label) and per worker (``worker="PID"``).  A snapshot older than
five seconds (a worker that died) is left out.

``zmqws_upstream_connected{endpoint=...}`` is 1 while the SUB socket is
connected to the endpoint (bound: while at least one peer is).  Summed over
workers it is the *minimum* of theirs: 1 only when every worker is
connected (each worker's own value is in its ``worker="PID"`` series).
"""

from __future__ import annotations

import json
import os
import time
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Loop
    from .stats import Stats

__all__ = ["render", "snapshot", "WorkerSnapshots", "CONTENT_TYPE"]

log = logging.getLogger("zmqws")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_SECONDS = 5.0

# (stats attribute, metric name, help)
_COUNTERS = [
    ("connections", "zmqws_connections_total", "TCP connections accepted"),
    ("ws_connections", "zmqws_websocket_connections_total", "WebSocket handshakes completed"),
    ("sse_connections", "zmqws_sse_connections_total", "Server-Sent Events streams started"),
    ("polls_held", "zmqws_polls_held_total", "long-polling requests held open"),
    ("sio_sessions", "zmqws_socketio_sessions_total", "Socket.IO (Engine.IO) sessions opened"),
    ("http_requests", "zmqws_http_requests_total", "plain HTTP requests"),
    ("http_errors", "zmqws_http_errors_total", "HTTP requests answered with an error status"),
    ("zmq_messages", "zmqws_zmq_messages_total", "messages taken from ZeroMQ (and publish())"),
    ("messages_out", "zmqws_messages_out_total", "deliveries queued to clients"),
    ("bytes_out", "zmqws_bytes_out_total", "bytes queued to clients"),
    ("messages_in", "zmqws_messages_in_total", "messages received from WebSocket clients"),
    ("bytes_in", "zmqws_bytes_in_total", "bytes read from clients"),
    ("upstream_messages", "zmqws_upstream_messages_total", "client messages forwarded to ZeroMQ"),
    ("gaps", "zmqws_resume_gaps_total",
     "gap notices sent (to resuming clients, and for messages dropped), Socket.IO recoveries refused"),
    ("refused", "zmqws_refused_total",
     "connections and Socket.IO polling sessions refused over a connection limit (503)"),
    ("forbidden", "zmqws_forbidden_total", "requests refused by origin or authentication"),
    ("topics_refused", "zmqws_topics_refused_total", "topic requests refused (rights, topic caps)"),
    ("writes_refused", "zmqws_writes_refused_total", "client messages refused: no write right on the topic"),
    ("host_refused", "zmqws_host_refused_total", "requests refused for their Host (see --allow-host)"),
    ("handshake_timeouts", "zmqws_handshake_timeouts_total",
     "requests not complete in time, and Socket.IO polling sessions that never polled"),
    ("ping_timeouts", "zmqws_ping_timeouts_total", "clients closed for not answering a ping"),
    ("protocol_errors", "zmqws_protocol_errors_total",
     "protocol violations by clients (WebSocket frames, Socket.IO packets, JSON nested too deep)"),
    ("tls_errors", "zmqws_tls_errors_total", "failed TLS handshakes"),
    ("accept_errors", "zmqws_accept_errors_total", "accept() failures"),
    ("drops", "zmqws_dropped_messages_total", "deliveries not made (slow consumers)"),
    ("pipeline_paused", "zmqws_pipeline_paused_total",
     "times reading a connection's pipelined requests paused (responses over --max-queue)"),
    ("bodies_refused", "zmqws_bodies_refused_total",
     "requests refused (413) for a body where none is taken, or a larger one than allowed"),
    ("requests_capped", "zmqws_requests_capped_total",
     "keep-alive connections closed after --max-requests-per-connection requests"),
    ("upstream_gaps", "zmqws_upstream_gaps_total",
     "jumps in upstream message ids while every topic is subscribed (--upstream-ids)"),
    ("upstream_missed", "zmqws_upstream_missed_total", "message ids skipped by those jumps"),
    ("send_errors", "zmqws_send_errors_total",
     "routes whose messages of a loop turn could not be sent (an internal error)"),
    ("rpc_requests", "zmqws_rpc_requests_total", "requests sent to the application (--rpc)"),
    ("rpc_replies", "zmqws_rpc_replies_total", "replies of the application delivered to the client that asked"),
    ("rpc_messages", "zmqws_rpc_messages_total", "client messages sent to the application as 'message' frames"),
    ("rpc_sends", "zmqws_rpc_sends_total", "'send' frames of the application delivered to their client"),
    ("rpc_closes", "zmqws_rpc_closes_total", "'close' frames of the application applied to their client"),
    ("rpc_timeouts", "zmqws_rpc_timeouts_total", "requests not answered within --rpc-timeout"),
    ("rpc_refused", "zmqws_rpc_refused_total", "requests refused: --rpc-max-inflight requests of the client waiting"),
    ("rpc_unavailable", "zmqws_rpc_unavailable_total",
     "frames not sent to the application: none connected, or its high-water mark reached"),
    ("rpc_unknown", "zmqws_rpc_unknown_total",
     "frames of the application for a client or request not known (gone, timed out) or that cannot take them"),
]

_DROP_CAUSES = [
    ("slow_closed", "slow_consumer_closed"),
    ("dropped_slow", "slow_consumer_dropped"),
    ("upstream_drops", "upstream_full"),
    ("rate_limited", "client_rate_limit"),
    ("idle_closed", "idle_timeout"),
    ("malformed", "malformed_upstream_message"),
]


class Source(Protocol):
    """What the metrics are read from (a :class:`zmqws.gateway.Gateway`)."""

    stats: "Stats"
    loop: Optional["Loop"]
    snapshots: Optional["WorkerSnapshots"]

    def gauges(self) -> Tuple[Dict[str, int], int]: ...

    def upstream_status(self) -> Dict[str, bool]: ...


def snapshot(gateway: Source) -> Dict[str, Any]:
    """This process's counters and gauges as plain data (loop thread)."""
    by_transport, queued = gateway.gauges()
    loop = gateway.loop
    return {
        "pid": os.getpid(), "time": time.time(), "stats": gateway.stats.as_dict(),
        "clients": by_transport, "queued": queued,
        "upstream": {endpoint: int(up) for endpoint, up in gateway.upstream_status().items()},
        "loop": {"turns": loop.turns if loop else 0,
                 "busy": loop.busy_seconds if loop else 0.0,
                 "max_turn": loop.max_turn_seconds if loop else 0.0},
    }


class WorkerSnapshots:
    """With ``--workers``: the exchange of counters through ``folder``, off the loop.

    :meth:`publish` hands this process's snapshot (taken on the loop) to a
    worker thread, which writes it (atomically: write, then rename), reads the
    other workers' fresh ones and the forwarder's ``status_file``, and hands
    them back to the loop (``call_soon_threadsafe``): ``/metrics`` and
    ``/readyz`` then read :attr:`others` and :attr:`forwarder_status` from
    memory, at most a second old, and never touch the disk on the loop.
    """

    def __init__(self, folder: Optional[str], status_file: Optional[str],
                 call_soon_threadsafe: Callable[[Callable[[], None]], None]) -> None:
        self.folder = folder
        self.status_file = status_file
        self.others: List[Dict[str, Any]] = []
        self.forwarder_status: Optional[Dict[str, bool]] = None
        self._call_soon = call_soon_threadsafe
        self._executor: Optional[ThreadPoolExecutor] = None

    def publish(self, own: Dict[str, Any]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqws-metrics")
        self._executor.submit(self._exchange, own)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _exchange(self, own: Dict[str, Any]) -> None:
        others: List[Dict[str, Any]] = []
        if self.folder:
            try:
                _write_json(os.path.join(self.folder, f"worker-{own['pid']}.json"), own)
            except OSError as exc:
                log.warning("cannot write metrics snapshot: %s", exc)
            others = _read_snapshots(self.folder, own["pid"])
        status = None
        if self.status_file:
            try:
                with open(self.status_file) as f:
                    status = json.load(f)
            except (OSError, ValueError):
                status = None
        try:
            self._call_soon(lambda: self._received(others, status))
        except (OSError, RuntimeError):  # pragma: no cover - the loop closed meanwhile (stop)
            pass

    def _received(self, others: List[Dict[str, Any]], status: Optional[Dict[str, bool]]) -> None:
        self.others = others
        self.forwarder_status = status


def _write_json(path: str, doc: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _read_snapshots(folder: str, own_pid: int) -> List[Dict[str, Any]]:
    """The other workers' snapshots in ``folder``, those written in the last ``STALE_SECONDS``."""
    found: List[Dict[str, Any]] = []
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in sorted(names):
        if not (name.startswith("worker-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                snap = json.load(f)
        except (OSError, ValueError):
            continue
        if snap.get("pid") != own_pid and now - snap.get("time", 0) < STALE_SECONDS:
            found.append(snap)
    return found


def render(gateway: Source) -> bytes:
    """The metrics of this process, or summed over every worker's (see :class:`WorkerSnapshots`)."""
    snaps = [snapshot(gateway)] + (gateway.snapshots.others if gateway.snapshots is not None else [])
    per_worker = len(snaps) > 1
    lines: List[str] = []

    def metric(name: str, kind: str, help_text: str,
               series: List[Tuple[str, Any]], combine: Any = sum) -> None:
        """``series``: (labels without braces, value getter over a snapshot)."""
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, get in series:
            total = combine(get(s) for s in snaps)
            lines.append(_sample(name, labels, total))
            if per_worker:
                for s in snaps:
                    worker = f'worker="{s["pid"]}"'
                    lines.append(_sample(name, f"{labels},{worker}" if labels else worker, get(s)))

    transports = sorted({t for s in snaps for t in s["clients"]})
    metric("zmqws_clients", "gauge", "connected clients by transport",
           [(f'transport="{t}"', lambda s, t=t: s["clients"].get(t, 0)) for t in transports])
    endpoints = sorted({e for s in snaps for e in s.get("upstream", {})})
    if endpoints:
        metric("zmqws_upstream_connected", "gauge",
               "1 while the SUB socket is connected to the endpoint (bound: has a peer)",
               [(f'endpoint="{_label(e)}"', lambda s, e=e: s.get("upstream", {}).get(e, 0))
                for e in endpoints], combine=min)
    metric("zmqws_queued_bytes", "gauge", "bytes waiting in client output queues",
           [("", lambda s: s["queued"])])
    for attr, name, help_text in _COUNTERS:
        metric(name, "counter", help_text, [("", lambda s, a=attr: s["stats"].get(a, 0))])
    metric("zmqws_drops_total", "counter", "deliveries dropped or clients closed, by cause",
           [(f'cause="{cause}"', lambda s, a=attr: s["stats"].get(a, 0)) for attr, cause in _DROP_CAUSES])
    codes = sorted({int(c) for s in snaps for c in s["stats"]["closes"]}) or [1000]
    metric("zmqws_closes_total", "counter", "WebSocket connections ended, by close code",
           [(f'code="{c}"', lambda s, c=c: s["stats"]["closes"].get(c, s["stats"]["closes"].get(str(c), 0)))
            for c in codes])
    metric("zmqws_loop_turns_total", "counter", "poll loop turns", [("", lambda s: s["loop"]["turns"])])
    metric("zmqws_loop_busy_seconds_total", "counter",
           "time spent working in loop turns (not waiting in poll)",
           [("", lambda s: float(s["loop"]["busy"]))])
    metric("zmqws_loop_turn_max_seconds", "gauge", "longest loop turn so far",
           [("", lambda s: float(s["loop"]["max_turn"]))], combine=max)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _label(value: str) -> str:
    """A label value escaped as the exposition format wants (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: str, value: Any) -> str:
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"{name}{{{labels}}} {shown}" if labels else f"{name} {shown}"
