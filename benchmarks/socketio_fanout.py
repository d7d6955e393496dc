"""Socket.IO fan-out benchmark: one ZeroMQ publisher, one Socket.IO server, many Socket.IO
clients (Node) over WebSocket, all on 127.0.0.1; zmqws side by side with python-socketio (AsyncServer on
aiohttp, ``benchmarks/ref_socketio.py``) doing the same job in the same run.

For each stack:

1. a publisher process (this file, ``--role publisher``; XPUB, pinned with the load client)
   binds an ephemeral port;
2. the server under test starts as its own process pinned to ``--gateway-cpu``, its SUB
   socket connected to the publisher (same receive high-water mark for both);
3. the load client (``sio_loadclient.mjs``, Node, pinned to ``--client-cpu``) opens the
   Socket.IO connections over WebSocket only and waits for every CONNECT answer; then the
   publisher waits until the server has subscribed;
4. the publisher sends N text messages of S bytes (a 10-digit sequence number first) at full
   rate or at ``--rate``; the client counts the ``message`` events on every connection,
   checks their order, and stops when every connection has all N, or after ``--idle``
   seconds without an event, or ``--timeout`` seconds;
5. the server's CPU time (``/proc/PID/stat``, from just before the start to the client's end)
   and the client's own CPU time over its receive window are read; every process is stopped.

deliveries/s = events received by all clients / (last arrival - first arrival);
loss = 1 - received / (N x C).  Prints a markdown table (``--json`` writes the raw results).

    python benchmarks/socketio_fanout.py --clients 1000 --size 64 --messages 3000 [--rate R]
        [--client-mode sio|raw]

The load client runs the real socket.io-client by default (``--client-mode sio``); ``raw``
speaks the minimal Engine.IO/Socket.IO handshake on Node's ``ws`` (much cheaper per event)
for when socket.io-client is the bottleneck — watch the client CPU column: near 100 % means
the client, not the server, set the figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import (Scenario, delivery_figures, fmt_rate, free_port, proc_cpu,  # noqa: E402
                    readline, wait_ready)  # shared with the fan-out benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADCLIENT = os.path.join(HERE, "sio_loadclient.mjs")
NODE_DIR = os.path.join(ROOT, "tests", "node")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STACKS = ("zmqws", "python-socketio")


# -- the publisher (--role publisher) ---------------------------------------------------------


def publisher(args: argparse.Namespace) -> None:
    """XPUB: print ENDPOINT, wait for a subscription (SUBSCRIBED), wait for GO on stdin, send
    N text messages '%010d ' + padding, print one JSON line, wait for stdin to close."""
    from publisher import xpub_when_subscribed

    pub = xpub_when_subscribed(args.sndhwm)
    if not sys.stdin.readline():
        return
    n, size = args.messages, args.size
    payloads = [(b"%010d " % i).ljust(size, b"x") for i in range(n)]
    send = pub.send
    t0 = time.perf_counter()
    if args.rate <= 0:
        for p in payloads:
            send(p)
    else:
        start = time.monotonic()
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - start) * args.rate) + 1)
            while i < due:
                send(payloads[i])
                i += 1
            if i < n:
                delay = start + i / args.rate - time.monotonic()
                if delay > 0.0002:
                    time.sleep(delay)
    send_s = time.perf_counter() - t0
    print(json.dumps({"sent": n, "send_s": send_s, "rate": n / send_s if send_s else 0.0}), flush=True)
    sys.stdin.read()
    pub.close(linger=0)
    pub.context.term()


# -- helpers ----------------------------------------------------------------------------------


def node_for_loadclient() -> str:
    """The node binary, once tests/node has socket.io-client and ws (``npm install`` the first time)."""
    node = shutil.which("node")
    if node is None:
        sys.exit(f"{os.path.basename(sys.argv[0])}: node is needed for the Socket.IO load client")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "socket.io-client")):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    return node


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_busy(window: float = 1.0) -> float:
    """CPUs busy (all processes) over ``window`` seconds, from /proc/stat."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)
    a = read()
    time.sleep(window)
    b = read()
    return (os.cpu_count() or 1) * (b[0] - a[0]) / max(1, b[1] - a[1])


def server_command(stack: str, endpoint: str, port: int, rcvhwm: int) -> List[str]:
    if stack == "zmqws":
        return [sys.executable, "-m", "zmqws", "--sub", endpoint, "--port", str(port),
                "--rcvhwm", str(rcvhwm), "--payload", "text", "--no-deflate"]
    if stack == "python-socketio":
        return [sys.executable, os.path.join(HERE, "ref_socketio.py"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)]
    raise ValueError(f"unknown stack {stack!r} (known: {', '.join(STACKS)})")


# -- one scenario -----------------------------------------------------------------------------


def run_scenario(stack: str, clients: int, args: argparse.Namespace, node: str, logdir: str) -> Dict[str, Any]:
    res: Dict[str, Any] = {"stack": stack, "clients": clients, "size": args.size,
                           "messages": args.messages, "rate": args.rate, "client_mode": args.client_mode}
    with Scenario(os.path.join(logdir, f"{stack}-{clients}.log")) as s:
        try:
            endpoint = s.publisher(
                [sys.executable, os.path.abspath(__file__), "--role", "publisher", "--messages", str(args.messages),
                 "--size", str(args.size), "--rate", str(args.rate), "--sndhwm", str(args.sndhwm)], args.client_cpu)
            port = free_port()
            server = s.gateway(server_command(stack, endpoint, port, args.rcvhwm), port, args.gateway_cpu)
            client = s.load_client(
                [node, LOADCLIENT, "--port", str(port), "--conns", str(clients), "--messages", str(args.messages),
                 "--mode", args.client_mode, "--timeout", str(args.timeout), "--idle", str(args.idle),
                 "--connect-timeout", str(args.connect_timeout)], args.client_cpu)
            res["connect_s"] = wait_ready(client, s.pub, args.connect_timeout)
            time.sleep(0.5)
            cpu0 = proc_cpu(server.pid)
            sent = s.go(args.timeout + 60)
            res["offered_rate"] = sent["rate"]
            report = json.loads(readline(client, args.timeout + args.idle + 30, "the load client's report"))
            res["wall_s"] = time.monotonic() - s.t_go
            res["gateway_cpu_s"] = proc_cpu(server.pid) - cpu0
            res["gateway_rss_mb"] = proc_rss_mb(server.pid)
            res["client"] = report
            delivery_figures(res, report, args.messages * clients)
            res["gaps"] = report["gaps"]
            # CPU over the receive window (the server's from GO to the end: a slightly longer span)
            res["gateway_cpu_pct"] = 100.0 * res["gateway_cpu_s"] / max(report["window_s"], 1e-9)
            res["server_alive"] = server.poll() is None
        except Exception as exc:  # a failed scenario is a row of the table
            res["error"] = str(exc)
    res["log_problems"] = [ln for ln in s.log_text().splitlines() if "Traceback" in ln or "ERROR" in ln][:5]
    return res


# -- report -----------------------------------------------------------------------------------


def table(results: List[Dict[str, Any]]) -> str:
    base = {(r["clients"], r["rate"]): r["deliveries_per_s"] for r in results
            if r["stack"] == "python-socketio" and "error" not in r and r["deliveries_per_s"]}
    head = ("| stack | clients | msg B | msgs | offered msg/s | deliveries/s | loss % | gateway CPU s "
            "(% of window) | gateway CPU µs / delivery | gateway RSS MB | client CPU % | vs python-socketio | end |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        offered = "full" if r["rate"] <= 0 else fmt_rate(r["rate"])
        if "error" in r:
            lines.append(f"| {r['stack']} | {r['clients']} | {r['size']} | {r['messages']} | {offered} | - | - "
                         f"| - | - | - | - | - | error: {r['error']} |")
            continue
        if r["rate"] <= 0:
            offered = f"full ({fmt_rate(r['offered_rate'])})"
        b = base.get((r["clients"], r["rate"]))
        # complete: every client got every message; idle/timeout: the client gave up waiting
        # (then "loss" counts what had not arrived yet, dropped or still queued)
        end = r["client"].get("reason", "?")
        ratio = f"{r['deliveries_per_s'] / b:.1f}x" if b else "-"
        lines.append(
            f"| {r['stack']} | {r['clients']} | {r['size']} | {r['messages']} | {offered} "
            f"| {fmt_rate(r['deliveries_per_s'])} | {r['loss_pct']:.2f} "
            f"| {r['gateway_cpu_s']:.2f} ({r['gateway_cpu_pct']:.0f} %) "
            f"| {1e6 * r['gateway_cpu_s'] / max(1, r['received']):.2f} | {r['gateway_rss_mb']:.0f} "
            f"| {r['client_cpu_pct']:.0f} | {ratio} | {end} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("driver", "publisher"), default="driver", help=argparse.SUPPRESS)
    p.add_argument("--stacks", default=",".join(STACKS), help="comma-separated: %(default)s")
    p.add_argument("--clients", default="1000", help="comma-separated client counts (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="payload bytes (at least 11; default: %(default)s)")
    p.add_argument("--messages", type=int, default=3000, help="messages published (default: %(default)s)")
    p.add_argument("--rate", type=float, default=0.0, help="messages/s offered; 0 = as fast as possible")
    p.add_argument("--client-mode", choices=("sio", "raw"), default="sio",
                   help="socket.io-client connections, or minimal Engine.IO on ws (default: %(default)s)")
    p.add_argument("--gateway-cpu", type=int, default=0, help="CPU the server is pinned to (default: 0)")
    p.add_argument("--client-cpu", type=int, default=1,
                   help="CPU the load client and publisher are pinned to (default: 1)")
    p.add_argument("--rcvhwm", type=int, default=100_000)
    p.add_argument("--sndhwm", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = p.parse_args()
    if args.role == "publisher":
        publisher(args)
        return 0
    if args.size < 11:
        p.error("--size must be at least 11 (the sequence number and a space)")
    node = node_for_loadclient()
    if (os.cpu_count() or 1) < 2:
        args.gateway_cpu = args.client_cpu = None
    stacks = [s for s in args.stacks.split(",") if s]
    counts = [int(c) for c in args.clients.split(",") if c]
    print(f"machine busy before the run: {machine_busy():.2f} CPUs", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="sio-fanout-") as logdir:
        for clients in counts:
            for stack in stacks:
                print(f"running {stack} x {clients} clients ...", file=sys.stderr, flush=True)
                r = run_scenario(stack, clients, args, node, logdir)
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "client"}), file=sys.stderr, flush=True)
    print(f"date: {datetime.date.today().isoformat()}  python {platform.python_version()}  "
          f"{os.cpu_count()} CPUs  client: {args.client_mode}")
    print("command: python benchmarks/socketio_fanout.py " + " ".join(sys.argv[1:]))
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
