"""The topics benchmark's publisher: messages spread over per-client and shared topics.

Run by ``topics.py``; it talks on stdin/stdout as ``publisher.py`` does:

* prints ``ENDPOINT tcp://127.0.0.1:PORT`` once bound, ``SUBSCRIBED`` once the
  gateway has subscribed to every topic its clients want (``--clients`` own topics
  ``u0.`` .. ``u<C-1>.`` and the shared topics ``s0.`` .. that have a client;
  client i is on ``u<i>.`` and ``s<i mod --shared>.``), so no message goes
  into the void;
* waits for a line on stdin (``GO``), then sends ``--rate`` × ``--duration``
  multipart messages ``[topic, payload]`` paced at ``--rate``; a share
  ``--shared-share`` of them (spread evenly in time) go to a shared topic
  chosen at random, the others to an own topic chosen at random (seeded);
* prints one JSON line (``sent``, ``own``, ``shared``, ``deliveries``: the
  messages the clients should get in all, ``send_s``, ``rate``, ``cpu_s``)
  and waits for stdin to close.

The payload is ``publisher.py``'s: the send time and a sequence number
(little-endian 64-bit each), padded with zeros to ``--size``.  Each topic is
numbered on its own, and each client has two topics, so the sequence number's
top byte names the stream (0: its own topic, 1: its shared topic) and the load
client (``--seq-streams 2``) checks each stream's order and gaps apart.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import time

from publisher import send_paced, xpub_when_subscribed

SHARED_STREAM = 1 << 56  # the top byte of the sequence number: 1 for the shared topics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, required=True, help="clients, each on its own topic")
    p.add_argument("--shared", type=int, default=100, help="shared topics (client i on s<i mod this>.)")
    p.add_argument("--shared-share", type=float, default=0.5, help="share of the messages on shared topics")
    p.add_argument("--rate", type=float, default=1000.0, help="msg/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sndhwm", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.size < 16 or args.clients < 1 or args.shared < 1 or not 0 <= args.shared_share <= 1:
        p.error("need --size >= 16, --clients >= 1, --shared >= 1, 0 <= --shared-share <= 1")

    clients, shared = args.clients, min(args.shared, args.clients)  # a shared topic nobody is on: unused
    own_topics = [b"u%d." % i for i in range(clients)]
    shared_topics = [b"s%d." % j for j in range(shared)]
    group = [len(range(j, clients, args.shared)) for j in range(shared)]  # clients on each shared topic
    pub = xpub_when_subscribed(args.sndhwm, set(own_topics) | set(shared_topics))
    if not sys.stdin.readline():
        return

    n = int(args.rate * args.duration)
    own_seq, shared_seq = [0] * clients, [0] * shared
    counts = {"own": 0, "shared": 0, "deliveries": 0}
    rnd = random.Random(args.seed)
    pad = bytes(args.size - 16)
    pack = struct.Struct("<QQ").pack
    send, mono, share = pub.send_multipart, time.monotonic_ns, args.shared_share

    def send_one(k: int) -> None:
        if int((k + 1) * share) > int(k * share):  # the shared ones, spread evenly
            j = rnd.randrange(shared)
            send([shared_topics[j], pack(mono(), SHARED_STREAM | shared_seq[j]) + pad])
            shared_seq[j] += 1
            counts["shared"] += 1
            counts["deliveries"] += group[j]
        else:
            i = rnd.randrange(clients)
            send([own_topics[i], pack(mono(), own_seq[i]) + pad])
            own_seq[i] += 1
            counts["own"] += 1
            counts["deliveries"] += 1

    t0 = time.perf_counter()
    send_paced(n, args.rate, send_one)
    send_s = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"sent": n, **counts, "send_s": send_s, "rate": n / send_s if send_s else 0.0,
                      "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
    sys.stdin.read()  # until topics.py closes stdin
    pub.close(linger=0)
    pub.context.term()


if __name__ == "__main__":
    main()
