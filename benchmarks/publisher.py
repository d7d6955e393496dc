"""The fan-out benchmark's publisher: a ZeroMQ XPUB socket that sends N messages when told.

Run by ``fanout.py``; it talks on stdin/stdout:

* prints ``ENDPOINT tcp://127.0.0.1:PORT`` once bound (ephemeral port);
* prints ``SUBSCRIBED`` when the gateway's SUB socket has subscribed (an XPUB
  socket receives the subscription, so nothing is published into the void);
* waits for a line on stdin (``GO``), then sends ``--messages`` messages of
  ``--size`` bytes, at full rate (``--rate 0``) or paced at ``--rate`` msg/s;
* prints one JSON line (``sent``, ``send_s``, ``rate``, its ``cpu_s``) and waits for stdin to
  close before exiting, so queued messages are not lost to the exit.

Each payload starts with the send time (``time.monotonic_ns()``, that is
CLOCK_MONOTONIC, which every process on a Linux machine shares) and the
sequence number, both little-endian unsigned 64-bit, padded with zeros to
``--size`` bytes.

``--payload json`` (for the permessage-deflate runs) fills the bytes after
those 16 with a JSON object that compresses like real data instead of zeros:
an order-book update with repeated keys, decimal prices and sizes, and the
sequence number and an ISO timestamp as fields, padded with spaces to
``--size`` (a message is then the 16-byte binary header followed by the JSON
text; the load client checks the header).  The bodies come from a pool of 256
made at start-up with a seeded random generator; only the ``seq`` and
``time`` fields are formatted per message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import resource
import struct
import sys
import time
from typing import Callable, Optional, Set

import zmq


def json_bodies(size: int) -> list:
    """256 JSON texts (without their opening ``{"seq":..,"time":..,``) of at most size - 60 bytes."""
    rnd = random.Random(7)
    out = []
    for _ in range(256):
        mid = 43000 + rnd.uniform(-500, 500)
        doc = {"type": "l2update", "product_id": "BTC-USD", "changes": []}
        while True:
            side = rnd.choice(("buy", "sell"))
            price = mid + rnd.uniform(-50, 50) * (1 if side == "sell" else -1)
            doc["changes"].append({"side": side, "price": f"{price:.2f}",
                                   "size": f"{rnd.uniform(0, 5):.8f}"})
            text = json.dumps(doc, separators=(",", ":"))[1:].encode()
            if len(text) > size - 60:
                doc["changes"].pop()
                break
        out.append(json.dumps(doc, separators=(",", ":"))[1:].encode())
    return out


def xpub_when_subscribed(sndhwm: int, wanted: Optional[Set[bytes]] = None) -> "zmq.Socket":
    """An XPUB socket on a free loopback port: prints ``ENDPOINT tcp://...``, then waits for the
    first subscription (the gateway's), or until every prefix of ``wanted`` is subscribed, and
    prints ``SUBSCRIBED`` (the driver's protocol)."""
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, sndhwm)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(f"ENDPOINT tcp://127.0.0.1:{port}", flush=True)
    have: Set[bytes] = set()
    while True:
        msg = pub.recv()  # a subscription (b"\x01" + prefix) or an unsubscription (b"\x00" + prefix)
        if msg[:1] == b"\x01":
            have.add(msg[1:])
        else:
            have.discard(msg[1:])
        if wanted is None or wanted <= have:
            break
    print("SUBSCRIBED", flush=True)
    return pub


def send_paced(n: int, rate: float, send_one: Callable[[int], object]) -> None:
    """Call ``send_one(i)`` for i in 0..n-1 at ``rate`` per second (catching up in bursts when late)."""
    start = time.monotonic()
    i = 0
    while i < n:
        due = min(n, int((time.monotonic() - start) * rate) + 1)
        while i < due:
            send_one(i)
            i += 1
        if i < n:
            delay = start + i / rate - time.monotonic()
            if delay > 0.0002:
                time.sleep(delay)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="msg/s; 0 = as fast as possible")
    p.add_argument("--sndhwm", type=int, default=1000)
    p.add_argument("--payload", choices=("zeros", "json"), default="zeros",
                   help="after the 16-byte header: zero padding, or JSON text (see above)")
    args = p.parse_args()
    if args.size < 16:
        p.error("--size must be at least 16 (timestamp + sequence)")

    pub = xpub_when_subscribed(args.sndhwm)
    if not sys.stdin.readline():
        return

    n = args.messages
    pad = bytes(args.size - 16)
    pack = struct.Struct("<QQ").pack
    if args.payload == "json":
        bodies = json_bodies(args.size - 16)
        header = pack

        def pack(t: int, i: int) -> bytes:  # noqa: F811 -- header + JSON, same signature
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
            body = b'{"seq":%d,"time":"%s",' % (i, now[:26].encode()) + bodies[i & 255]
            return header(t, i) + body.ljust(args.size - 16)

        pad = b""
    send = pub.send
    mono = time.monotonic_ns
    t0 = time.perf_counter()
    if args.rate <= 0:
        for i in range(n):
            send(pack(mono(), i) + pad)
    else:
        send_paced(n, args.rate, lambda i: send(pack(mono(), i) + pad))
    send_s = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"sent": n, "send_s": send_s, "rate": n / send_s if send_s else 0.0,
                      "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
    sys.stdin.read()  # until fanout.py closes stdin
    pub.close(linger=0)
    pub.context.term()


if __name__ == "__main__":
    main()
