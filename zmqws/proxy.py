"""``python -m zmqws.proxy``: a ZeroMQ XSUB/XPUB forwarder for fan-out trees of gateways.

    publishers ──PUB──► [XSUB  zmqws.proxy  XPUB] ──► gateway A, gateway B, ... (SUB)

Both sockets bind.  Publishers connect to the XSUB endpoint, gateways
(``zmqws --sub``) connect to the XPUB endpoint; messages flow down and
subscriptions flow up, so a topic that only gateway B wants is still filtered
at the publishers.

* Plain mode is ``zmq.proxy(xsub, xpub, capture)``: libzmq's own forwarder,
  in C, with an optional capture socket (``--capture ENDPOINT``, a PUB that
  gets a copy of everything).
* ``--stamp`` forwards in Python and inserts a message id (8 bytes,
  big-endian) as the second part of every message, so that every gateway
  behind the proxy (``zmqws --upstream-ids``) numbers messages alike and a
  client may resume (``?since=``) on any of them.  ``--stats S`` logs the
  counts every S seconds (also a Python forwarding mode): messages forwarded,
  and messages dropped (that a gateway whose queue was full did not get).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Sequence

import zmq

from .monitor import UpstreamMonitor

__all__ = ["Sequencer", "run_proxy", "main"]

log = logging.getLogger("zmqws.proxy")


class Sequencer:
    """An XSUB/XPUB forwarder that stamps ids; runs on its own thread until :meth:`stop`.

    ``xsub``: endpoints publishers use; ``xpub``: endpoints gateways use.
    ``connect_xsub``: connect the XSUB side to publishers' bound endpoints
    instead of binding (what ``zmqws --workers`` does).  ``first_id``: the
    first id given (default: derived from the clock, so that ids keep
    growing across restarts).  ``status_file``: watch the XSUB side's
    endpoints with the socket monitor (log lines as a gateway logs them) and
    keep ``{endpoint: connected}`` in this JSON file (what ``zmqws --workers``
    gives its workers for ``/readyz`` and ``/metrics``).
    """

    def __init__(self, xsub: Sequence[str], xpub: Sequence[str], *, stamp: bool = True,
                 connect_xsub: bool = False, capture: Optional[str] = None,
                 first_id: Optional[int] = None, context: Optional[zmq.Context[Any]] = None,
                 hwm: int = 100_000, status_file: Optional[str] = None) -> None:
        self._context = context or zmq.Context.instance()
        self.stamp = stamp
        # Microseconds since the epoch: larger than any id an earlier run gave at <1 M msg/s.
        self.next_id = first_id if first_id is not None else int(time.time() * 1_000_000)
        self.forwarded = 0
        self.dropped = 0  # messages a gateway's full queue missed (the others still got them)
        self.subscriptions = 0
        self._xsub = self._context.socket(zmq.XSUB)
        self._xpub = self._context.socket(zmq.XPUB)
        self._capture = self._context.socket(zmq.PUB) if capture else None
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        self._xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # forward every (un)subscription upstream
        self.status_file = status_file
        self._calls: Deque[Callable[[], None]] = collections.deque()
        self.monitor = (UpstreamMonitor(self._xsub.get_monitor_socket(), not connect_xsub,
                                        self._calls.append, on_change=self._write_status)
                        if status_file else None)
        # An XPUB drops silently for a subscriber whose queue is full; with XPUB_NODROP the
        # send raises Again instead (and sends to nobody), so a drop is seen: see _send.
        self._xpub.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            for endpoint in xsub:
                (self._xsub.connect if connect_xsub else self._xsub.bind)(endpoint)
                if self.monitor is not None:
                    self.monitor.add(endpoint, endpoint if connect_xsub else
                                     self._xsub.getsockopt_string(zmq.LAST_ENDPOINT))
            for endpoint in xpub:
                self._xpub.bind(endpoint)
            if self._capture is not None:
                self._capture.setsockopt(zmq.LINGER, 0)
                self._capture.bind(capture)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"zmqws.proxy: cannot set up sockets: {exc}") from None
        self.xpub_endpoints = [self._xpub.getsockopt(zmq.LAST_ENDPOINT).decode()]
        if self.monitor is not None:
            self._write_status()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Sequencer":
        self._thread = threading.Thread(target=self.run, name="zmqws-proxy", daemon=True)
        self._thread.start()
        return self

    def _write_status(self) -> None:
        """``{endpoint: connected}`` to ``status_file`` (atomically: write, then rename)."""
        if self.monitor is None or self.status_file is None:
            return
        tmp = self.status_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.monitor.status(), f)
            os.replace(tmp, self.status_file)
        except OSError as exc:
            log.warning("cannot write the upstream status to %s: %s", self.status_file, exc)

    def run(self) -> None:
        """Forward until :meth:`stop`: messages down (stamped), subscriptions up."""
        poller = zmq.Poller()
        poller.register(self._xsub, zmq.POLLIN)
        poller.register(self._xpub, zmq.POLLIN)
        monitor = self.monitor
        if monitor is not None:
            poller.register(monitor.socket, zmq.POLLIN)
        xsub, xpub, capture = self._xsub, self._xpub, self._capture
        while not self._stop.is_set():
            while self._calls:  # name lookups' answers (see UpstreamMonitor)
                self._calls.popleft()()
            for sock, _ in poller.poll(200):
                if monitor is not None and sock is monitor.socket:
                    monitor.on_events()
                    continue
                if sock is xpub:
                    for _ in range(1000):
                        try:
                            xsub.send_multipart(xpub.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        self.subscriptions += 1
                    continue
                for _ in range(1000):
                    try:
                        parts = xsub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self.stamp:
                        parts.insert(1, self.next_id.to_bytes(8, "big"))
                        self.next_id += 1
                    self._send(parts)
                    if capture is not None:
                        capture.send_multipart(parts, zmq.NOBLOCK)
        self.close()

    def _send(self, parts: List[bytes]) -> None:
        """Forward one message; one that a gateway's full queue cannot take is counted in
        ``dropped`` (not ``forwarded``) and still sent to the gateways that have room
        (the proxy never waits for a slow gateway)."""
        xpub = self._xpub
        try:
            xpub.send_multipart(parts, zmq.NOBLOCK)
            self.forwarded += 1
            return
        except zmq.Again:
            pass
        self.dropped += 1
        xpub.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            xpub.send_multipart(parts, zmq.NOBLOCK)
        finally:
            xpub.setsockopt(zmq.XPUB_NODROP, 1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        if self.monitor is not None and not self.monitor.socket.closed:
            self.monitor.close()
            if not self._xsub.closed:
                self._xsub.disable_monitor()
            self.monitor.socket.close(linger=0)
        for sock in (self._xsub, self._xpub, self._capture):
            if sock is not None and not sock.closed:
                sock.close(linger=0)


def _steerable_proxy(front: zmq.Socket[Any], back: zmq.Socket[Any], capture: Optional[zmq.Socket[Any]],
                     control: zmq.Socket[Any]) -> None:
    """The proxy thread: signals are for the main thread (an EINTR here would restart
    libzmq's proxy in the middle of a multipart message)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    zmq.proxy_steerable(front, back, capture, control)


def run_proxy(xsub: Sequence[str], xpub: Sequence[str], capture: Optional[str] = None) -> None:
    """Plain mode: libzmq's ``zmq.proxy`` between a bound XSUB and a bound XPUB (blocks).

    The proxy runs on a thread (``zmq.proxy_steerable``) while the calling thread waits, so
    that a signal is always seen: libzmq's proxy loop, run on the main thread, misses a
    signal that arrives while it is forwarding rather than polling.  KeyboardInterrupt
    (SIGINT, or SIGTERM as :func:`main` sets it up) stops the proxy and propagates.
    """
    context: zmq.Context[Any] = zmq.Context.instance()
    front = context.socket(zmq.XSUB)
    back = context.socket(zmq.XPUB)
    cap = context.socket(zmq.PUB) if capture else None
    for sock in (front, back):  # the Sequencer's queues, not libzmq's default 1000 (a burst drops)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
    try:
        for endpoint in xsub:
            front.bind(endpoint)
        for endpoint in xpub:
            back.bind(endpoint)
        if cap is not None:
            cap.bind(capture)
    except zmq.ZMQError as exc:
        raise ValueError(f"zmqws.proxy: cannot bind: {exc}") from None
    address = f"inproc://zmqws-proxy-control-{id(front)}"
    control = context.socket(zmq.PAIR)
    control.bind(address)
    steer = context.socket(zmq.PAIR)
    steer.connect(address)
    thread = threading.Thread(target=_steerable_proxy, args=(front, back, cap, steer),
                              name="zmqws-proxy", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        control.send(b"TERMINATE")
        thread.join(5)
        if not thread.is_alive():  # never close sockets under a running proxy
            for sock in (front, back, cap, steer, control):
                if sock is not None:
                    sock.close(linger=0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zmqws.proxy",
        description="Forward ZeroMQ messages from publishers (XSUB) to many gateways (XPUB); "
                    "subscriptions flow back up. Both sides bind.")
    parser.add_argument("--xsub", action="append", required=True, metavar="ENDPOINT",
                        help="endpoint publishers connect to, e.g. tcp://*:5555 (repeatable)")
    parser.add_argument("--xpub", action="append", required=True, metavar="ENDPOINT",
                        help="endpoint gateways connect to with --sub, e.g. tcp://*:5556 (repeatable)")
    parser.add_argument("--capture", metavar="ENDPOINT",
                        help="also publish a copy of every message on this PUB endpoint")
    parser.add_argument("--stamp", action="store_true",
                        help="insert a message id as the second part of every message, for "
                             "gateways run with --upstream-ids (Python forwarding)")
    parser.add_argument("--stats", type=float, default=0.0, metavar="S",
                        help="log message and subscription counts every S seconds (Python forwarding)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        if not args.stamp and not args.stats:
            log.info("forwarding %s -> %s (zmq.proxy)", args.xsub, args.xpub)
            run_proxy(args.xsub, args.xpub, args.capture)
            return 0
        proxy = Sequencer(args.xsub, args.xpub, stamp=args.stamp, capture=args.capture).start()
        log.info("forwarding %s -> %s%s", args.xsub, args.xpub, " with ids" if args.stamp else "")
        while True:
            time.sleep(args.stats or 3600)
            if args.stats:
                log.info("forwarded %d messages, %d missed by a full gateway queue "
                         "(dropped), %d subscription changes",
                         proxy.forwarded, proxy.dropped, proxy.subscriptions)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
