"""The I/O loop: one ``zmq.Poller`` that polls raw sockets and ZeroMQ sockets together.

Everything that does I/O in zmqws runs on the thread that runs
:meth:`Loop.run`.  Other threads talk to it only through
:meth:`Loop.call_soon_threadsafe`, which appends to a thread-safe deque and
wakes the poller through a socketpair registered in it.

Each turn: poll, dispatch the ready sockets' handlers, run due timers and
queued calls, then the ``after_turn`` hooks (where the server flushes the
output that the turn produced, so that each client gets one ``sendmsg`` per
turn whatever the turn queued for it).

Raw file descriptors (the listening and client sockets) live in an epoll set
where the OS has one, and the epoll descriptor itself is polled by the
``zmq.Poller`` beside the ZeroMQ sockets.  ``zmq.Poller.poll`` costs time in
proportion to what is registered in it (about 150 µs per 1000 here) and its
``unregister`` is O(n) (closing 5000 clients at once stalled the loop for
3 s); epoll costs in proportion to the ready descriptors, and adding or
removing one is O(1).  Without epoll everything goes into the ``zmq.Poller``.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import select
import socket
import threading
import time
from time import perf_counter
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Tuple

import zmq

__all__ = ["Loop", "Timer"]

log = logging.getLogger("zmqws")

# Plain ints: pyzmq's constants are enum flags, and ``|``/``&`` of those build enum members
# (a few µs a turn per ready descriptor on the hot path).
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
POLLERR = int(zmq.POLLERR)

_EPOLL = getattr(select, "epoll", None)
if _EPOLL is not None:
    # Hang-ups and errors wake the reader, which then sees EOF or the error itself.
    _EPOLL_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | getattr(select, "EPOLLRDHUP", 0)
    _EPOLL_OUT = select.EPOLLOUT


def _to_epoll(events: int) -> int:
    return (_EPOLL_IN if events & POLLIN else 0) | (_EPOLL_OUT if events & POLLOUT else 0)


def _from_epoll(mask: int) -> int:
    return (POLLIN if mask & _EPOLL_IN else 0) | (POLLOUT if mask & _EPOLL_OUT else 0)


class Timer:
    """A handle for :meth:`Loop.call_later`; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """A single-threaded poll loop over raw file descriptors and ZeroMQ sockets."""

    def __init__(self, use_epoll: bool = True) -> None:
        self.poller = zmq.Poller()
        self._epoll = _EPOLL() if use_epoll and _EPOLL is not None else None
        if self._epoll is not None:
            self.poller.register(self._epoll.fileno(), POLLIN)
        self._handlers: Dict[Any, Callable[[int], None]] = {}
        self._timers: List[Tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._calls: Deque[Callable[[], Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self.after_turn: List[Callable[[], None]] = []
        self.running = False
        self.thread_id: "int | None" = None
        self.turns = 0
        self.busy_seconds = 0.0  # time spent in turns (outside poll), for /metrics
        self.max_turn_seconds = 0.0
        self.register(self._wake_r.fileno(), POLLIN, self._on_wake)

    # -- registration ---------------------------------------------------------

    def register(self, obj: Any, events: int, handler: Callable[[int], None]) -> None:
        """Poll ``obj`` (a file descriptor or a ZeroMQ socket) for ``events``; call ``handler(revents)``."""
        self._handlers[obj] = handler
        if self._epoll is not None and isinstance(obj, int):
            self._epoll.register(obj, _to_epoll(events))
        else:
            self.poller.register(obj, events)

    def modify(self, obj: Any, events: int) -> None:
        """Poll a registered ``obj`` for ``events`` instead (callers skip calls that change nothing)."""
        if self._epoll is not None and isinstance(obj, int):
            self._epoll.modify(obj, _to_epoll(events))
        else:
            self.poller.modify(obj, events)

    def unregister(self, obj: Any) -> None:
        """Stop polling ``obj``; call it before closing a file descriptor."""
        if self._handlers.pop(obj, None) is not None:
            if self._epoll is not None and isinstance(obj, int):
                try:
                    self._epoll.unregister(obj)
                except OSError:  # already closed: the kernel dropped it from the set
                    pass
            else:
                self.poller.unregister(obj)

    # -- scheduling -----------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        """Run ``callback`` on the loop after ``delay`` seconds (loop thread only)."""
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the loop thread at its next turn; callable from any thread."""
        self._calls.append(callback)
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (already woken) or closed (loop gone)

    def in_loop_thread(self) -> bool:
        return self.thread_id == threading.get_ident()

    def _on_wake(self, _revents: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._wake_lock:
            self._wake_pending = False

    # -- running --------------------------------------------------------------

    def run(self) -> None:
        """Turn until :meth:`stop`; handler errors are logged, never fatal to the loop."""
        self.running = True
        self.thread_id = threading.get_ident()
        poll = self.poller.poll
        epoll = self._epoll
        epoll_fd = epoll.fileno() if epoll is not None else -1
        handlers = self._handlers
        timers = self._timers
        calls = self._calls
        while self.running:
            timeout = 1000
            if calls:
                timeout = 0
            elif timers:
                timeout = max(0, min(1000, int((timers[0][0] - time.monotonic()) * 1000) + 1))
            try:
                ready = poll(timeout)
            except zmq.ZMQError as exc:  # pragma: no cover - EINTR on some platforms
                if exc.errno == errno.EINTR:
                    continue
                raise
            self.turns += 1
            started = perf_counter()
            if epoll is not None:
                ready = self._expand(ready, epoll_fd)
            for obj, revents in ready:
                handler = handlers.get(obj)
                if handler is not None:
                    try:
                        handler(revents)
                    except Exception:  # a handler bug must not stop the loop
                        log.exception("error in the handler of %r", obj)
            if timers and timers[0][0] <= time.monotonic():
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    timer = heapq.heappop(timers)[2]
                    if not timer.cancelled:
                        self._safely(timer.callback)
            while calls:
                self._safely(calls.popleft())
            for hook in self.after_turn:
                self._safely(hook)
            took = perf_counter() - started
            self.busy_seconds += took
            if took > self.max_turn_seconds:
                self.max_turn_seconds = took

    def _expand(self, ready: List[Tuple[Any, int]], epoll_fd: int) -> List[Tuple[Any, int]]:
        """Replace the epoll descriptor's readiness by the ready descriptors in its set."""
        out: List[Tuple[Any, int]] = []
        epoll = self._epoll
        assert epoll is not None
        for obj, revents in ready:
            if obj == epoll_fd:
                out.extend((fd, _from_epoll(mask)) for fd, mask in epoll.poll(0, 4096))
            else:
                out.append((obj, revents))
        return out

    @staticmethod
    def _safely(callback: Callable[[], Any]) -> None:
        try:
            callback()
        except Exception:
            log.exception("error in loop callback %r", callback)

    def stop(self) -> None:
        """Make :meth:`run` return after the current turn (loop thread, or via call_soon_threadsafe)."""
        self.running = False

    def close(self) -> None:
        """Release the wake-up sockets (after :meth:`run` has returned)."""
        self.unregister(self._wake_r.fileno())
        self._wake_r.close()
        self._wake_w.close()
        if self._epoll is not None:
            self.poller.unregister(self._epoll.fileno())
            self._epoll.close()
