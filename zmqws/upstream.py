"""The ZeroMQ side: the SUB socket in, the PUSH/PUB socket out, the two-way DEALER, and the monitor.

:class:`UpstreamSockets` drains the SUB socket each loop turn (up to
``drain_budget`` messages) into :meth:`zmqws.hub.Hub.take`, subscribes and
unsubscribes as the hub asks, forwards client messages upstream as
``[topic, client id, payload]`` without ever blocking, and watches its
endpoints with ZeroMQ's socket monitor (:mod:`zmqws.monitor`) for
``/readyz`` and the upstream log lines.  With ``rpc_endpoint`` a DEALER
carries the two-way channel's frames (:mod:`zmqws.rpc`): sent without ever
blocking (``IMMEDIATE``: no queue for an application not connected), drained
each turn into :meth:`zmqws.rpc.Rpc.on_frames`.

With ``upstream_ids`` every message is ``[first part, 8-byte big-endian id,
other parts...]`` as a sequencer stamps it (``python -m zmqws.proxy
--stamp``, the ``--workers`` parent): the ids become the hub's, and a jump
seen while every topic is subscribed is a loss upstream, counted and logged.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import zmq

from .monitor import UpstreamMonitor

if TYPE_CHECKING:  # pragma: no cover
    from .config import UpstreamConfig
    from .hub import Hub
    from .loop import Loop
    from .rpc import Rpc
    from .stats import Stats

__all__ = ["UpstreamSockets", "EndpointError"]

log = logging.getLogger("zmqws")

GAP_SETTLE = 1.0  # seconds a catch-all subscription must have held before id jumps are gaps


class EndpointError(ValueError):
    """A ZeroMQ endpoint the gateway cannot bind or connect (``kind``: SUB, PUSH, PUB or RPC)."""

    def __init__(self, kind: str, endpoint: str, verb: str, reason: str) -> None:
        super().__init__(f"cannot {verb} {kind} socket to {endpoint!r}: {reason}")
        self.kind = kind
        self.endpoint = endpoint
        self.reason = reason


def _endpoint_reason(exc: zmq.ZMQError) -> str:
    """What is wrong with an endpoint libzmq refused, in words that say what to fix."""
    if exc.errno == errno.EINVAL:
        return "invalid endpoint (expected tcp://HOST:PORT, ipc://PATH, inproc://NAME...)"
    if exc.errno == errno.EPROTONOSUPPORT:
        return "unknown transport (expected tcp://, ipc://, inproc://...)"
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.ENODEV:
        return "no such address or interface to bind"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


class UpstreamSockets:
    """See the module docstring.  ``hub`` (and ``rpc`` with ``rpc_endpoint``) are set before :meth:`open`."""

    hub: "Hub"
    rpc: Optional["Rpc"] = None

    def __init__(self, config: "UpstreamConfig", stats: "Stats",
                 context: Optional[zmq.Context[Any]] = None) -> None:
        self.config = config
        self.stats = stats
        self._own_context = context is None
        self._context = context
        self._loop: Optional["Loop"] = None
        self._sub: Optional[zmq.Socket[Any]] = None
        self._out: Optional[zmq.Socket[Any]] = None
        self._dealer: Optional[zmq.Socket[Any]] = None
        self._monitor: Optional[UpstreamMonitor] = None
        self._rpc_monitor: Optional[UpstreamMonitor] = None  # the DEALER's: /readyz counts it too
        self._catch_all_since: Optional[float] = None  # when b"" was subscribed (gap detection)
        self._gap_logged_at = float("-inf")

    @property
    def can_forward(self) -> bool:
        return self._out is not None

    # -- set-up and tear-down -------------------------------------------------------

    def open(self, loop: "Loop") -> None:
        """Create, connect (or bind) and register the sockets (loop not running yet)."""
        config = self.config
        self._loop = loop
        if self._context is None:
            self._context = zmq.Context()
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, config.rcvhwm)
        self._sub = sub
        # The monitor exists before the first connect or bind, so it sees every event.
        monitor = self._monitor = UpstreamMonitor(sub.get_monitor_socket(), config.bind,
                                                  loop.call_soon_threadsafe, config.upstream_log_interval)
        for endpoint in config.sub_endpoints:
            self._attach(sub, endpoint, "SUB")
            monitor.add(endpoint, sub.getsockopt_string(zmq.LAST_ENDPOINT) if config.bind else endpoint)
        loop.register(monitor.socket, zmq.POLLIN, monitor.on_events)
        if config.push_endpoint or config.pub_endpoint:
            # --pub is an XPUB with XPUB_NODROP: to subscribers it is a PUB, but at the
            # high-water mark its send raises Again (a PUB drops silently), so a full
            # upstream is counted and a Socket.IO ack says so.
            out = self._context.socket(zmq.PUSH if config.push_endpoint else zmq.XPUB)
            out.setsockopt(zmq.LINGER, 0)
            out.setsockopt(zmq.SNDHWM, config.upstream_hwm)
            self._out = out
            if config.pub_endpoint:
                out.setsockopt(zmq.XPUB_NODROP, 1)
                loop.register(out, zmq.POLLIN, self._on_out)
            self._attach(out, config.push_endpoint or config.pub_endpoint or "",
                         "PUSH" if config.push_endpoint else "PUB")
        if config.rpc_endpoint:
            dealer = self._dealer = self._context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, config.upstream_hwm)
            dealer.setsockopt(zmq.IMMEDIATE, 1)  # no peer: send says so at once (no queue for nobody)
            rpc_monitor = self._rpc_monitor = UpstreamMonitor(dealer.get_monitor_socket(), config.bind,
                                                              loop.call_soon_threadsafe,
                                                              config.upstream_log_interval)
            self._attach(dealer, config.rpc_endpoint, "RPC")
            rpc_monitor.add(config.rpc_endpoint,
                            dealer.getsockopt_string(zmq.LAST_ENDPOINT) if config.bind else config.rpc_endpoint)
            loop.register(rpc_monitor.socket, zmq.POLLIN, rpc_monitor.on_events)
            loop.register(dealer, zmq.POLLIN, self._on_rpc)
        loop.register(sub, zmq.POLLIN, self._on_sub)

    def _attach(self, sock: zmq.Socket[Any], endpoint: str, kind: str) -> None:
        bind = self.config.bind
        try:
            if bind:
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(kind, endpoint, "bind" if bind else "connect", _endpoint_reason(exc)) from None

    def close(self) -> None:
        """Close the sockets (and the context, if it is ours); the loop has stopped."""
        for monitor, sock in ((self._monitor, self._sub), (self._rpc_monitor, self._dealer)):
            if monitor is not None:
                monitor.close()
                if self._loop is not None:
                    self._loop.unregister(monitor.socket)
                if sock is not None:
                    sock.disable_monitor()
                monitor.socket.close(linger=0)
        self._monitor = self._rpc_monitor = None
        for sock in (self._sub, self._out, self._dealer):
            if sock is not None:
                if self._loop is not None:
                    self._loop.unregister(sock)  # a no-op for a socket never registered
                sock.close(linger=0)
        self._sub = self._out = self._dealer = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # -- subscriptions (the hub's) -----------------------------------------------------

    def subscribe(self, prefix: bytes) -> None:
        if self._sub is None:
            return
        self._sub.setsockopt(zmq.SUBSCRIBE, prefix)
        log.debug("upstream SUBSCRIBE %r", prefix)
        if not prefix:
            self._catch_all_since = time.monotonic()

    def unsubscribe(self, prefix: bytes) -> None:
        if self._sub is None:
            return
        self._sub.setsockopt(zmq.UNSUBSCRIBE, prefix)
        log.debug("upstream UNSUBSCRIBE %r", prefix)
        if not prefix:
            self._catch_all_since = None

    # -- messages in -------------------------------------------------------------------

    def _on_sub(self, _revents: int) -> None:
        # recv(copy=False) and Frame.more cost a third of recv_multipart() (no getsockopt
        # per part); the parts of a multipart message arrive together, so the rest never blocks.
        assert self._sub is not None
        recv = self._sub.recv
        hub = self.hub
        take = hub.take
        stamped = hub.config.upstream_ids
        NOBLOCK = zmq.NOBLOCK
        plain: List[bytes] = []  # single-part messages, taken together (in order with the rest)
        keep = plain.append
        for _ in range(self.config.drain_budget):
            try:
                frame = recv(NOBLOCK, copy=False)
            except zmq.Again:
                break
            if not frame.more and not stamped:
                keep(frame.bytes)
                continue
            if plain:
                hub.take_payloads(plain)
                plain.clear()
            parts = [frame.bytes]
            while frame.more:
                frame = recv(copy=False)
                parts.append(frame.bytes)
            if stamped:
                # [first, id, rest...] from a sequencer (zmqws.proxy --stamp, or --workers)
                if len(parts) < 2 or len(parts[1]) != 8:
                    self.stats.malformed += 1
                    continue
                msg_id = int.from_bytes(parts[1], "big")
                if msg_id <= hub.last_id:
                    continue  # a duplicate (or a sequencer restart); never go back
                if hub.last_id and msg_id != hub.last_id + 1 and self._catch_all_since is not None:
                    self._upstream_gap(msg_id)
                hub.skip_to(msg_id)
                del parts[1]
            if len(parts) > 1:
                take(parts[0], parts[-1])
            else:
                take(None, parts[0])
        if plain:
            hub.take_payloads(plain)
        hub.catch_up()

    def _upstream_gap(self, msg_id: int) -> None:
        """Upstream ids: the ids between the last one and ``msg_id`` never came although every
        topic is subscribed (a jump under topic filtering is the publisher filtering, not a
        loss): messages lost upstream, at a high-water mark or in a reconnect.  Counted;
        logged once per ``upstream_log_interval``."""
        now = time.monotonic()
        assert self._catch_all_since is not None
        if now - self._catch_all_since < GAP_SETTLE:
            return  # the subscription may not have reached the publisher yet
        last = self.hub.last_id
        missed = msg_id - last - 1
        self.stats.upstream_gaps += 1
        self.stats.upstream_missed += missed
        if now - self._gap_logged_at >= self.config.upstream_log_interval:
            self._gap_logged_at = now
            log.warning("upstream message ids jump from %d to %d: %d messages lost upstream "
                        "(%d gaps, %d messages so far)", last, msg_id, missed,
                        self.stats.upstream_gaps, self.stats.upstream_missed)

    def _on_out(self, _revents: int) -> None:
        """The --pub XPUB's subscription messages: not needed (the XPUB filters by itself),
        read and dropped so that subscribers cannot make them pile up."""
        assert self._out is not None
        recv = self._out.recv
        for _ in range(self.config.drain_budget):
            try:
                recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    # -- messages out --------------------------------------------------------------------

    def forward(self, topic: bytes, client_id: bytes, data: bytes) -> bool:
        """A client message upstream as ``[topic, client id, payload]``; False if not sent."""
        if self._out is None:
            return False
        try:
            self._out.send_multipart([topic, client_id, data], zmq.NOBLOCK)
        except zmq.Again:
            self.stats.upstream_drops += 1  # the upstream socket is full (or PUSH has no peer)
            return False
        self.stats.upstream_messages += 1
        return True

    def send_rpc(self, parts: List[bytes]) -> bool:
        """Frames of the two-way channel to the application; False when the DEALER would block
        (no application connected, or its high-water mark reached)."""
        if self._dealer is None:
            return False
        try:
            self._dealer.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _on_rpc(self, _revents: int) -> None:
        """The application's frames (up to ``drain_budget`` per turn), to the rpc room."""
        assert self._dealer is not None and self.rpc is not None
        recv = self._dealer.recv_multipart
        on_frames = self.rpc.on_frames
        for _ in range(self.config.drain_budget):
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            on_frames(parts)

    def rpc_endpoint(self) -> str:
        """The endpoint the DEALER bound or connected last (a bound ``tcp://...:*`` with its port)."""
        assert self._dealer is not None
        return str(self._dealer.getsockopt_string(zmq.LAST_ENDPOINT))

    def bound_endpoint(self) -> str:
        """The endpoint the SUB socket bound last (``tcp://127.0.0.1:*`` becomes its real port)."""
        assert self._sub is not None
        return str(self._sub.getsockopt_string(zmq.LAST_ENDPOINT))

    # -- state -----------------------------------------------------------------------------

    def status(self, forwarder: Optional[Dict[str, bool]] = None) -> Dict[str, bool]:
        """Each SUB endpoint, and the two-way channel's: connected now (bound: at least one
        peer), from the socket monitors.

        ``forwarder``: the SUB endpoints of a forwarder in front of this gateway
        (``--workers``) as it sees them: each is connected when the forwarder is connected
        to it and this gateway to the forwarder."""
        own = (self._monitor.status() if self._monitor is not None
               else {endpoint: False for endpoint in self.config.sub_endpoints})
        if forwarder is not None:
            linked = all(own.values())
            own = {endpoint: bool(connected) and linked for endpoint, connected in forwarder.items()}
        if self._rpc_monitor is not None:
            own.update(self._rpc_monitor.status())
        return own
