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
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import sys
import time

import zmq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="msg/s; 0 = as fast as possible")
    p.add_argument("--sndhwm", type=int, default=1000)
    args = p.parse_args()
    if args.size < 16:
        p.error("--size must be at least 16 (timestamp + sequence)")

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, args.sndhwm)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(f"ENDPOINT tcp://127.0.0.1:{port}", flush=True)
    pub.recv()  # the first subscription (b"\x01" + prefix)
    print("SUBSCRIBED", flush=True)
    if not sys.stdin.readline():
        return

    n = args.messages
    pad = bytes(args.size - 16)
    pack = struct.Struct("<QQ").pack
    send = pub.send
    mono = time.monotonic_ns
    t0 = time.perf_counter()
    if args.rate <= 0:
        for i in range(n):
            send(pack(mono(), i) + pad)
    else:
        rate = args.rate
        start = time.monotonic()
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                send(pack(mono(), i) + pad)
                i += 1
            if i < n:
                delay = start + i / rate - time.monotonic()
                if delay > 0.0002:
                    time.sleep(delay)
    send_s = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"sent": n, "send_s": send_s, "rate": n / send_s if send_s else 0.0,
                      "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
    sys.stdin.read()  # until fanout.py closes stdin
    pub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
