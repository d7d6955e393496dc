"""Upstream visibility: ZeroMQ's socket monitor on the SUB socket, read by the gateway's loop.

``zmq_socket_monitor`` makes libzmq report what happens to each endpoint of a
socket as two-part messages on a PAIR socket (pyzmq: ``get_monitor_socket``).
The gateway registers that PAIR socket in its loop; :meth:`UpstreamMonitor.on_events`
drains it without blocking and turns the events into one state per
endpoint (connected or not), log lines and the readiness of ``GET /readyz``.

What libzmq 4.3.5 reports (checked with pyzmq 27):

* connect, peer up: ``CONNECT_DELAYED``, ``CONNECTED`` (value: the fd),
  ``HANDSHAKE_SUCCEEDED``; the endpoint counts as connected only after the
  ZMTP handshake (a TCP listener that is not ZeroMQ never gets there).
* connect, nobody listening: ``CONNECT_DELAYED``, ``CLOSED``,
  ``CONNECT_RETRIED`` (value: the next retry interval in ms), over and over.
* connect, a host name that does not resolve (``tcp://nohost.invalid:5556``):
  ``CONNECT_RETRIED`` alone, with no errno at all; so the monitor looks the
  name up once on a helper thread (never on the loop) to give the reason.
* connect, an ``ipc://`` path nobody listens on: ``CLOSED``, ``CONNECT_RETRIED``.
* connect, a TCP listener that is not ZeroMQ: ``CONNECTED``, then
  ``HANDSHAKE_FAILED_NO_DETAIL`` (value: an errno), ``DISCONNECTED`` and
  retries; or ``HANDSHAKE_FAILED_PROTOCOL`` (value: the ZMTP error) and, in
  that case, no retry at all.
* a peer that goes away: ``DISCONNECTED``, then retries as above.
* bind: ``LISTENING``; per peer ``ACCEPTED`` (value: its fd) and
  ``HANDSHAKE_SUCCEEDED``; ``DISCONNECTED`` (value: the fd) when it leaves.
  A bound endpoint counts as connected while at least one peer is.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

import zmq

__all__ = ["UpstreamMonitor", "RETRY_LOG_INTERVAL"]

log = logging.getLogger("zmqws.upstream")

RETRY_LOG_INTERVAL = 60.0  # seconds between two "still not connected" lines of one endpoint
_DRAIN_BUDGET = 1000       # monitor events handled per loop turn at most
# A monitor event (zmq_socket_monitor, version 1): [event (uint16) + value (uint32), endpoint].
# Parsed here rather than with zmq.utils.monitor, whose import loads ssl (megabytes per process).
_EVENT = struct.Struct("=HI")

_E = zmq.Event
_HANDSHAKE_FAILED = {_E.HANDSHAKE_FAILED_NO_DETAIL, _E.HANDSHAKE_FAILED_PROTOCOL,
                     _E.HANDSHAKE_FAILED_AUTH}
_TCP_HOST = re.compile(r"tcp://(?:[^;/]*;)?\[?([^\]]*?)\]?:(\d+|\*)$")


class _Endpoint:
    """What the monitor knows of one configured endpoint."""

    __slots__ = ("name", "connected", "peers", "retries", "streak_start", "logged_at",
                 "reason", "last_event")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.peers: Set[int] = set()   # bind: the fds of the peers connected now
        self.retries = 0               # connect: retries since the last success
        self.streak_start = 0.0        # when the first of them came
        self.logged_at = 0.0           # when the last "not connected" line was logged
        self.reason = ""
        self.last_event = 0            # the previous event (0: none yet)


def _handshake_detail(kind: int, value: int) -> str:
    """The value of a ``HANDSHAKE_FAILED_*`` event in words: a ZMTP protocol error, an errno
    or a ZAP status code."""
    if kind == _E.HANDSHAKE_FAILED_PROTOCOL:
        try:
            name = _E(value).name or ""
        except ValueError:
            return f"protocol error {value:#x} (not a ZeroMQ peer?)"
        return f"{name.lower().replace('protocol_error_', '')} (not a ZeroMQ peer, or other security?)"
    if kind == _E.HANDSHAKE_FAILED_NO_DETAIL:
        return f"{os.strerror(value).lower() if value else 'no detail'} (not a ZeroMQ peer?)"
    return f"authentication refused (status {value})"


def _host_of(endpoint: str) -> Optional[str]:
    """The host name of a ``tcp://`` endpoint when it is a name (not an address, not ``*``)."""
    match = _TCP_HOST.match(endpoint)
    if not match:
        return None
    host = match.group(1)
    if host in ("", "*") or ":" in host or re.fullmatch(r"[\d.]+", host):
        return None
    return host


def lookup_error(endpoint: str) -> Optional[str]:
    """Why a ``tcp://NAME:PORT`` endpoint cannot be reached, if its name does not resolve
    (``getaddrinfo``: blocking, call it off the loop); None when it resolves."""
    host = _host_of(endpoint)
    if host is None:
        return None
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"DNS lookup of {host} failed: {exc.strerror} (EAI {exc.errno})"
    except (OSError, UnicodeError) as exc:
        return f"DNS lookup of {host} failed: {exc}"
    return None


class UpstreamMonitor:
    """The state of a socket's endpoints from its monitor events (loop thread only).

    ``monitor``: the PAIR socket from ``sock.get_monitor_socket()``, made
    before the socket connects or binds; ``add(endpoint, reported)`` for each
    endpoint (``reported``: the name libzmq uses in events, the socket's
    ``LAST_ENDPOINT`` after a bind); ``call_soon_threadsafe`` to hand a name
    lookup's result back to the loop; ``on_change()`` is called when an
    endpoint becomes connected or not connected.
    """

    def __init__(self, monitor: zmq.Socket[Any], bind: bool,
                 call_soon_threadsafe: Callable[[Callable[[], None]], None],
                 log_interval: float = RETRY_LOG_INTERVAL,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        self.socket = monitor
        self.bind = bind
        self.log_interval = log_interval
        self._call_soon_threadsafe = call_soon_threadsafe
        self._on_change = on_change
        self._endpoints: Dict[str, _Endpoint] = {}   # configured name -> state
        self._by_reported: Dict[str, _Endpoint] = {}  # name in events -> state
        self.closed = False

    def add(self, endpoint: str, reported: Optional[str] = None) -> None:
        state = _Endpoint(endpoint)
        self._endpoints[endpoint] = state
        self._by_reported[reported or endpoint] = state

    def status(self) -> Dict[str, bool]:
        """Each configured endpoint: connected (bind: at least one peer) or not."""
        return {name: state.connected for name, state in self._endpoints.items()}

    def close(self) -> None:
        """Stop reading (the caller disables the monitor and closes the PAIR socket)."""
        self.closed = True

    # -- events ----------------------------------------------------------------

    def on_events(self, _revents: int = 0) -> None:
        """The loop's handler: every event waiting on the PAIR socket, never blocking."""
        for _ in range(_DRAIN_BUDGET):
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2 or len(parts[0]) != _EVENT.size:  # pragma: no cover
                continue
            kind, value = _EVENT.unpack(parts[0])
            state = self._by_reported.get(parts[1].decode("utf-8", "replace"))
            if state is not None and not self.closed:
                self._event(state, kind, value)

    def _event(self, state: _Endpoint, kind: int, value: int) -> None:
        connected = state.connected
        if self.bind:
            self._bind_event(state, kind, value)
        else:
            self._connect_event(state, kind, value)
        state.last_event = kind
        if state.connected != connected and self._on_change is not None:
            self._on_change()

    def _connect_event(self, state: _Endpoint, kind: int, value: int) -> None:
        now = time.monotonic()
        if kind == _E.HANDSHAKE_SUCCEEDED:
            if not state.connected:
                state.connected = True
                if state.retries:
                    log.info("upstream %s: connected after %d retries in %.0f s", state.name,
                             state.retries, now - state.streak_start, extra={"endpoint": state.name})
                else:
                    log.info("upstream %s: connected", state.name, extra={"endpoint": state.name})
            state.retries = 0
            state.logged_at = 0.0
            state.reason = ""
        elif kind == _E.DISCONNECTED:
            if state.connected:
                state.connected = False
                state.logged_at = now  # this line opens the streak of retries that follows
                state.streak_start = now
                log.warning("upstream %s: disconnected; reconnecting", state.name,
                            extra={"endpoint": state.name, "reason": "disconnected"})
        elif kind in _HANDSHAKE_FAILED:
            # libzmq may not retry after this (it did not after a protocol error here): say it now.
            state.reason = f"ZeroMQ handshake failed: {_handshake_detail(kind, value)}"
            self._failed(state, now)
        elif kind == _E.CONNECT_RETRIED:
            if state.last_event == _E.CLOSED:
                state.reason = "connection refused or closed, nobody listening?"
            elif not state.reason:
                state.reason = "cannot connect"
            state.retries += 1
            self._failed(state, now)

    def _failed(self, state: _Endpoint, now: float) -> None:
        """An attempt failed: the first of a streak is logged, then one line per log_interval."""
        if state.logged_at:  # a streak already announced
            if now - state.logged_at >= self.log_interval:
                self._log_retrying(state, now)
            return
        state.streak_start = state.logged_at = now
        if state.last_event in (0, _E.CONNECT_RETRIED) and _host_of(state.name) is not None:
            # No TCP attempt was even made: libzmq could not resolve the name and says
            # nothing more; the first line waits for a lookup of our own, off the loop.
            threading.Thread(target=self._diagnose, args=(state,), name="zmqws-lookup",
                             daemon=True).start()
            return
        self._log_retrying(state, now)

    def _log_retrying(self, state: _Endpoint, now: float) -> None:
        state.logged_at = now
        if state.retries <= 1:
            log.warning("upstream %s: not connected (%s)%s", state.name, state.reason,
                        "; retrying" if state.retries else "",
                        extra={"endpoint": state.name, "reason": state.reason})
        else:
            log.warning("upstream %s: still not connected after %d retries in %.0f s (%s)",
                        state.name, state.retries, now - state.streak_start, state.reason,
                        extra={"endpoint": state.name, "reason": state.reason})

    def _diagnose(self, state: _Endpoint) -> None:
        """On a helper thread: look the endpoint's host name up, report on the loop."""
        reason = lookup_error(state.name)
        self._call_soon_threadsafe(lambda: self._diagnosed(state, reason))

    def _diagnosed(self, state: _Endpoint, reason: Optional[str]) -> None:
        if self.closed or state.connected:
            return
        if reason is not None:
            state.reason = reason
        self._log_retrying(state, time.monotonic())

    def _bind_event(self, state: _Endpoint, kind: int, value: int) -> None:
        if kind == _E.ACCEPTED:
            state.peers.add(value)
            log.info("upstream %s: a peer connected (%d now)", state.name, len(state.peers),
                     extra={"endpoint": state.name})
        elif kind == _E.DISCONNECTED and value in state.peers:
            state.peers.discard(value)
            if state.peers:
                log.info("upstream %s: a peer disconnected (%d left)", state.name, len(state.peers),
                         extra={"endpoint": state.name})
            else:
                log.warning("upstream %s: the last peer disconnected", state.name,
                            extra={"endpoint": state.name, "reason": "disconnected"})
        state.connected = bool(state.peers)

    def not_connected(self) -> List[str]:
        return [name for name, state in self._endpoints.items() if not state.connected]
