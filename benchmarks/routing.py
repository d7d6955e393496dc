#!/usr/bin/env python3
"""Routing cost: time to route and queue one message, as the number of topics grows.

The gateway's own code path (Hub.take → Router.match → Hub.flush → the
WebSocket wire's encoding → OutputQueues.fanout) runs in-process on fake clients (an output queue each, no sockets),
so what is measured is the routing and queueing work of the loop, without
system calls.  Every client subscribes to its own topic; each message is
published on one topic, so it has exactly one recipient.  If routing cost
grew with the number of topics or clients, the time per message would grow
down the table.

    python benchmarks/routing.py [--messages 200000]
"""

from __future__ import annotations

import argparse
import time

from zmqws.protocol.connection import OutputQueue
from zmqws.gateway import Gateway


class FakeClient:
    """What the fan-out touches on a client: its output queue."""

    __slots__ = ("session", "__weakref__")

    def __init__(self) -> None:
        self.session = OutputQueue()


def measure(topics: int, per_topic: int, messages: int, batch: int) -> float:
    """Microseconds per message routed to the ``per_topic`` clients of one topic."""
    gateway = Gateway(None, 0, history=1000)
    hub = gateway.hub
    wire = gateway.websocket.context.websocket_wire(None)
    by_topic = []
    for t in range(topics):
        members = [FakeClient() for _ in range(per_topic)]
        for client in members:
            hub.router.add(client, [b"topic.%d." % t], "payload", wire)
        by_topic.append(members)
    names = [b"topic.%d.x" % t for t in range(topics)]
    payload = b"x" * 64
    take, send = hub.take, hub.flush
    sent_to = []
    started = time.thread_time()  # CPU time of this thread: robust to other load on the machine
    for i in range(messages):
        t = (i * 7919) % topics
        take(names[t], payload)
        sent_to.append(t)
        if i % batch == batch - 1:
            send()
            for t in sent_to:  # what the writer would write: the queues given output
                for c in by_topic[t]:
                    c.session.out.clear()
                    c.session.out_bytes = 0
            sent_to.clear()
    send()
    took = time.thread_time() - started
    assert gateway.stats.messages_out == messages * per_topic
    return took / messages * 1e6


def naive_scan(topics: int, messages: int) -> float:
    """The alternative: test every client's prefix for every message (CPU µs per message)."""
    prefixes = [b"topic.%d." % t for t in range(topics)]
    names = [b"topic.%d.x" % t for t in range(topics)]
    started = time.thread_time()
    for i in range(messages):
        topic = names[(i * 7919) % topics]
        _ = [p for p in prefixes if topic.startswith(p)]
    return (time.thread_time() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100, help="messages per loop turn")
    args = parser.parse_args()
    print("| topics | clients per topic | clients | CPU µs per message |")
    print("|---|---|---|---|")
    for topics, per_topic in ((10, 1), (1_000, 1), (10_000, 1), (10, 100), (10_000, 10)):
        us = measure(topics, per_topic, args.messages, args.batch)
        print(f"| {topics:,} | {per_topic} | {topics * per_topic:,} | {us:.2f} |")
    print()
    print("For comparison, scanning every client's prefix for each message (no routing table):")
    for topics in (10, 1_000, 10_000):
        print(f"  {topics:>6,} clients: {naive_scan(topics, 2000):8.2f} CPU µs per message")


if __name__ == "__main__":
    main()
