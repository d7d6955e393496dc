"""The instrument's own latency: publisher.py -> a bare SUB socket, no gateway, no WebSocket.

Runs the fan-out benchmark's publisher (pinned to --client-cpu, as in
fanout.py) and a pyzmq SUB socket in this process (pinned to --gateway-cpu,
where the gateway would be), and reports the latency of every message:
time of ``recv()`` (``time.monotonic_ns()``) minus the send time the
publisher wrote into the payload.  This is the floor under every latency
figure of fanout.py: the ZeroMQ TCP hop plus the publisher's and the
receiver's scheduling, with no gateway and no second hop.

    python benchmarks/hop_latency.py --rate 200 --messages 2000
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))


def pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--gateway-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    args = p.parse_args()

    os.sched_setaffinity(0, {args.gateway_cpu})
    pub = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "publisher.py"), "--messages", str(args.messages),
         "--size", str(args.size), "--rate", str(args.rate), "--sndhwm", "100000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, {args.client_cpu}))
    endpoint = pub.stdout.readline().split()[1].decode()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    assert pub.stdout.readline().strip() == b"SUBSCRIBED"
    time.sleep(0.3)
    pub.stdin.write(b"GO\n")
    pub.stdin.flush()
    unpack = struct.Struct("<QQ").unpack_from
    mono = time.monotonic_ns
    lat = []
    for _ in range(args.messages):
        data = sub.recv()
        t = mono()
        lat.append(t - unpack(data)[0])
    pub.stdin.close()
    pub.wait(10)
    sub.close(0)
    ctx.term()
    lat.sort()
    out = {"messages": len(lat), "rate": args.rate,
           "p50_ms": pct(lat, 0.50) / 1e6, "p99_ms": pct(lat, 0.99) / 1e6, "max_ms": lat[-1] / 1e6}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
