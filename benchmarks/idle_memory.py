"""Memory of idle WebSocket connections: the gateway's RSS with 0 .. N open connections.

Starts zmqws as a subprocess (its SUB socket connected to an endpoint nobody
binds: no messages flow), then opens connections in steps from ``--procs``
client processes (plain blocking sockets; each sends the upgrade request and
reads the 101), and after each step waits ``--settle`` seconds and reads
``VmRSS`` (and ``VmHWM``) of the gateway process from ``/proc/PID/status``.
The connections stay open and idle (the client never writes after the
upgrade) until the end.  Prints a markdown table: connections, RSS MB, RSS
growth since no connections, bytes per connection.

    python benchmarks/idle_memory.py --connections 10000 [--steps 1000,5000,10000] [--procs 4]

The gateway and the clients are separate processes, so each holds only its
own side of the sockets (10 000 fds each), under a 20 000 fd limit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List

REQUEST = ("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def worker(port: int, cmds: "mp.Queue", results: "mp.Queue") -> None:
    """Open connections when told ("open", n); reply with (opened, failed, seconds)."""
    held: List[socket.socket] = []
    req = REQUEST.format(port=port).encode()
    while True:
        cmd = cmds.get()
        if cmd[0] == "stop":
            break
        n = cmd[1]
        t0 = time.monotonic()
        ok = failed = 0
        batch = 100
        for start in range(0, n, batch):
            socks = []
            for _ in range(min(batch, n - start)):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(req)
                socks.append(s)
            for s in socks:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(b"HTTP/1.1 101"):
                    ok += 1
                    held.append(s)
                else:
                    failed += 1
                    s.close()
        results.put((ok, failed, time.monotonic() - t0))
    for s in held:
        s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--steps", default="", help="comma-separated totals (default: 1000, 5000, N)")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    p.add_argument("--gateway-args", default="", help="extra zmqws arguments")
    args = p.parse_args()
    steps = ([int(x) for x in args.steps.split(",") if x] if args.steps
             else sorted({min(1000, args.connections), min(5000, args.connections), args.connections}))

    port, dead = free_port(), free_port()
    log = tempfile.TemporaryFile()
    gw = subprocess.Popen([sys.executable, "-m", "zmqws", "--sub", f"tcp://127.0.0.1:{dead}",
                           "--port", str(port), "--payload", "binary", *args.gateway_args.split()],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=log)
    procs = []
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.05)
        time.sleep(args.settle)
        rows = [(0, rss_kb(gw.pid), 0, 0.0)]
        ctx = mp.get_context("fork")
        results = ctx.Queue()
        cmdqs = []
        for _ in range(args.procs):
            q = ctx.Queue()
            pr = ctx.Process(target=worker, args=(port, q, results), daemon=True)
            pr.start()
            procs.append(pr)
            cmdqs.append(q)
        total = failed_total = 0
        for target in steps:
            add = target - total
            share = [add // args.procs + (1 if i < add % args.procs else 0) for i in range(args.procs)]
            t0 = time.monotonic()
            for q, n in zip(cmdqs, share):
                q.put(("open", n))
            for _ in cmdqs:
                ok, failed, _s = results.get(timeout=300)
                total += ok
                failed_total += failed
            took = time.monotonic() - t0
            time.sleep(args.settle)
            rows.append((total, rss_kb(gw.pid), failed_total, took))
        hwm = rss_kb(gw.pid, "VmHWM")
        base = rows[0][1]
        print(f"zmqws pid {gw.pid}; {args.procs} client processes; settle {args.settle:g} s; "
              f"gateway args: {args.gateway_args or '(defaults)'}\n")
        print("| open connections | gateway VmRSS MB | growth MB | bytes per connection | refused "
              "| time to open the step s |")
        print("|---|---|---|---|---|---|")
        for n, kb, failed, took in rows:
            per = f"{(kb - base) * 1024 / n:,.0f}" if n else "-"
            print(f"| {n} | {kb / 1024:.1f} | {(kb - base) / 1024:.1f} | {per} | {failed} | {took:.1f} |")
        print(f"\npeak VmHWM {hwm / 1024:.1f} MB")
        for q in cmdqs:
            q.put(("stop",))
    finally:
        for pr in procs:
            pr.join(10)
            if pr.is_alive():
                pr.terminate()
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(20)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait()
        log.seek(0)
        err = log.read().decode(errors="replace")
        bad = [line for line in err.splitlines() if "WARNING" in line or "ERROR" in line or "Traceback" in line]
        if bad:
            print("\ngateway log (warnings/errors):\n" + "\n".join(bad[:10]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
