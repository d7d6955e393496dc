"""The output side of the server's connections: each one's queue, written with one ``sendmsg``.

What docs/DESIGN.md ("The loop") asks of the writes:

* **encode once, send many**: :meth:`OutputQueues.fanout` queues the same
  bytes on every client (per client an append and an addition);
* one write per client with new output per loop turn (:meth:`OutputQueues.flush_dirty`,
  an ``after_turn`` hook of the loop): one ``sendmsg`` of many buffers, a
  partial write keeps a ``memoryview`` of the rest, ``POLLOUT`` stays
  registered only while output remains;
* **slow consumers never hurt fast ones**: a queue that would pass
  ``max_queue`` gets the slow-consumer policy: close with 1008 (RFC 6455
  §7.4.1) and count it, or drop the messages and count them.

:class:`OutputQueues` is what the hub writes to (:class:`zmqws.hub.Output`);
the server offers the same methods to the transports.  The end of a connection (closing, lingering,
abort) is :class:`zmqws.connections.Connections`'s.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Protocol, Tuple, Type

from .app import App
from .config import ServerConfig
from .loop import POLLIN, POLLOUT, Loop
from .peer import GONE, HTTP, Client
from .protocol.frames import CLOSE_POLICY_VIOLATION
from .stats import Stats

__all__ = ["OutputQueues", "would_block_errors"]

log = logging.getLogger("zmqws")

IOV_MAX = 1024  # buffers in one sendmsg (the kernel's UIO_MAXIOV)


def would_block_errors(tls: bool) -> Tuple[Type[Exception], ...]:
    """What a non-blocking read or write raises when it would block (TLS adds its own)."""
    if not tls:
        return (BlockingIOError, InterruptedError)
    import ssl  # loaded already: the server has an SSL context
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Connections(Protocol):
    """What the output side needs of the connections (:class:`zmqws.connections.Connections`)."""

    def close_client(self, client: Client, code: int, reason: str) -> None: ...

    def linger(self, client: Client) -> None: ...

    def abort(self, client: Client) -> None: ...

    def resume_reading(self, client: Client) -> None: ...


class OutputQueues:
    """The clients' output queues (``client.session``): queueing, the slow-consumer policy,
    the writes and the poll interest that follows them.  Loop thread only."""

    loop: Loop  # set by the server's start()

    def __init__(self, config: ServerConfig, stats: Stats, app: App, connections: Connections) -> None:
        self.max_queue = config.max_queue
        self.drop_slow = config.slow_client == "drop"  # the slow-consumer policy drops (else it closes)
        self.stats = stats
        self.app = app
        self.connections = connections
        self._would_block = would_block_errors(config.ssl_context is not None)
        self._dirty: Dict[Client, None] = {}   # clients with output queued this turn
        self._refill: Dict[Client, None] = {}  # clients to refill when their queue drains

    def queued(self, client: Client) -> None:
        """Output was queued on ``client``: write it at the end of the turn."""
        self._dirty[client] = None

    def queue(self, client: Client, data: bytes) -> None:
        """Queue encoded bytes on a client; flushed at the end of the turn (loop thread)."""
        client.session.queue(data)
        self._dirty[client] = None

    def forget(self, client: Client) -> None:
        """The client is gone: nothing more to write to it."""
        self._dirty.pop(client, None)

    def fanout(self, frames: bytes, clients: Iterable[Client], count: int) -> Optional[List[Client]]:
        """Queue the same encoded ``frames`` (``count`` messages) on every client (loop thread).

        This is the hot path: per client, an append and an addition; the
        slow-consumer policy applies past ``max_queue``; the output is flushed
        at the end of the turn.  Returns the clients the frames did not fit
        (the policy applied to them), or None.
        """
        size = len(frames)
        limit = self.max_queue
        dirty = self._dirty
        over: Optional[List[Client]] = None
        sent = 0
        for client in clients:
            session = client.session
            if session.out_bytes + size > limit and session.out_bytes:
                if over is None:
                    over = []
                over.append(client)
                continue
            session.out.append(frames)
            session.out_bytes += size
            dirty[client] = None
            sent += 1
        stats = self.stats
        stats.messages_out += sent * count
        stats.bytes_out += sent * size
        if over:
            for client in over:
                self._slow_client(client, count)
        return over

    def _slow_client(self, client: Client, count: int, force_close: bool = False) -> None:
        """The slow-consumer policy (its queue would pass ``max_queue``); ``force_close``:
        close whatever the policy (what is queued is not droppable, e.g. pongs)."""
        self.stats.drops += count
        if self.drop_slow and not force_close:
            self.stats.dropped_slow += count
            return
        self.stats.slow_closed += 1
        session = client.session
        out = session.out
        head = out[0] if out and isinstance(out[0], memoryview) else None
        session.discard_output(head)
        log.info("client %s: slow consumer (over %d bytes queued), closing with 1008",
                 client.id, self.max_queue,
                 extra={"client": client.id, "code": CLOSE_POLICY_VIOLATION, "reason": "slow consumer"})
        self.connections.close_client(client, CLOSE_POLICY_VIOLATION, "slow consumer")

    def close_slow(self, client: Client) -> None:
        """Close a client as a slow consumer (1008), whatever the policy."""
        self._slow_client(client, 0, force_close=True)

    @staticmethod
    def queued_bytes(client: Client) -> int:
        """Bytes queued on ``client`` and not written yet."""
        return client.session.out_bytes

    def refill_when_drained(self, client: Client, wanted: bool) -> None:
        """Call ``app.on_refill(client)`` once its queue drains below half of ``max_queue``."""
        if wanted:
            self._refill[client] = None
        else:
            self._refill.pop(client, None)

    # -- writing ----------------------------------------------------------------

    def flush_dirty(self) -> None:
        """After each turn: one write per client with new output (not those waiting for POLLOUT)."""
        if not self._dirty:
            return
        dirty = self._dirty
        self._dirty = {}
        would_block, refill = self._would_block, self._refill
        for client in dirty:
            if client.want_write or client.phase == GONE:
                continue
            out = client.session.out
            if len(out) != 1:
                self.flush(client)
                continue
            # The common case inline (a fan-out sweep does it for every client): one
            # buffer, sent whole, nothing waiting on the queue's draining.
            try:
                sent = client.sock.send(out[0])
            except would_block:
                sent = 0
            except OSError:
                self.connections.abort(client)
                continue
            if sent == len(out[0]) and not (client.paused or client.close_after_flush or client in refill):
                out.clear()
                client.session.out_bytes = 0
            else:
                self._sent(client, sent)

    def write_now(self, client: Client) -> None:
        """Write a client's queue now, not with what the rest of the turn queues."""
        if self._dirty.pop(client, 0) is None and not client.want_write and client.phase != GONE:
            self.flush(client)

    def flush(self, client: Client) -> None:
        """One ``sendmsg`` of the client's queue; POLLOUT stays registered only while output remains."""
        out = client.session.out
        sent = 0
        if out:
            try:
                if len(out) == 1:  # send() costs less than a one-buffer sendmsg()
                    sent = client.sock.send(out[0])
                elif client.tls:
                    # SSL sockets have no sendmsg: one record-sized batch per write.
                    sent = client.sock.send(b"".join(out[:64]))
                else:
                    sent = client.sock.sendmsg(out if len(out) <= IOV_MAX else out[:IOV_MAX])
            except self._would_block:
                pass
            except OSError:
                self.connections.abort(client)
                return
        self._sent(client, sent)

    def _sent(self, client: Client, sent: int) -> None:
        """Trim ``sent`` bytes off the client's queue; wait for POLLOUT while some remain."""
        session = client.session
        out = session.out
        if sent:
            session.out_bytes -= sent
            i = 0
            while sent >= len(out[i]):
                sent -= len(out[i])
                i += 1
                if i == len(out):
                    break
            else:
                out[i] = memoryview(out[i])[sent:]
            del out[:i]
        if client.paused and session.out_bytes <= self.max_queue and client.phase == HTTP and not client.waiting:
            self.connections.resume_reading(client)
            if client.phase == GONE:
                return
            out = client.session.out
        if client in self._refill and session.out_bytes <= self.max_queue >> 1:
            self._refill.pop(client, None)
            self.app.on_refill(client)
        if out:
            self.want_write(client, True)
            return
        self.want_write(client, False)
        if client.close_after_flush:
            self.connections.linger(client)

    # -- poll interest ------------------------------------------------------------

    def want_write(self, client: Client, want: bool) -> None:
        """Poll the client for output (or no longer)."""
        if client.want_write != want:
            client.want_write = want
            self.poll_events(client)

    def poll_events(self, client: Client) -> None:
        """Poll for input unless reading is paused, for output while some is pending."""
        reading = not (client.paused or client.waiting)
        self.loop.modify(client.fd, (POLLIN if reading else 0) | (POLLOUT if client.want_write else 0))
