"""Scale-out benchmark: deliveries per second of ``zmqws --workers N`` on this machine.

For each worker count N (a "scenario"), with the pieces of ``fanout.py``:

1. the publisher (``publisher.py``, XPUB) binds an ephemeral port;
2. ``python -m zmqws --sub ENDPOINT --workers N --payload binary`` starts (N = 1 is the
   plain gateway, no forwarder; N > 1 is the supervisor: the parent's id-stamping
   forwarder and N worker processes sharing the port with SO_REUSEPORT);
3. the C load client (``loadclient.c``) opens C connections and waits until every one
   is upgraded; ``/metrics`` says how the kernel spread them over the workers;
4. the publisher sends M messages of S bytes at full rate (or ``--rate``); the load
   client counts the messages on every connection and checks their order;
5. CPU time is read from ``/proc`` for the gateway (parent and workers), the
   publisher and the load client (which reports its own), plus whatever other
   processes of the machine used meanwhile; every process is stopped.

deliveries/s = messages received by all clients / (last arrival - first arrival).

Nothing is pinned: on a 2-core machine the two workers, the forwarder, the
publisher and the load client share both cores, so the client's CPU share is
reported next to each figure (a saturated client caps the measure).

    python benchmarks/workers.py --workers 1,2 --clients 1000 --size 64 --messages 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fanout import (all_cpu, build_loadclient, fmt_rate, free_port, other_cpu,  # noqa: E402
                    proc_cpu, readline, stop, stop_publisher, wait_port)


def children(pid: int) -> List[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def clients_per_worker(port: int) -> Dict[str, int]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    per = {m.group(1): int(m.group(2)) for m in
           re.finditer(r'^zmqws_clients\{transport="websocket",worker="(\d+)"\} (\d+)$', text, re.M)}
    if not per:
        m = re.search(r'^zmqws_clients\{transport="websocket"\} (\d+)$', text, re.M)
        per = {"-": int(m.group(1))} if m else {}
    return per


def run_scenario(workers: int, args: argparse.Namespace, loadclient: str, logdir: str) -> Dict[str, Any]:
    res: Dict[str, Any] = {"workers": workers, "clients": args.clients, "size": args.size,
                           "messages": args.messages, "rate": args.rate}
    pub = gw = client = None
    log_path = os.path.join(logdir, f"workers-{workers}.log")
    log = open(log_path, "wb")
    try:
        pub = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "publisher.py"), "--messages", str(args.messages),
             "--size", str(args.size), "--rate", str(args.rate), "--sndhwm", str(args.sndhwm)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        endpoint = readline(pub, 10, "publisher endpoint").split()[1]
        port = free_port()
        gw = subprocess.Popen(
            [sys.executable, "-m", "zmqws", "--sub", endpoint, "--port", str(port),
             "--rcvhwm", str(args.rcvhwm), "--payload", "binary", "--workers", str(workers),
             "--max-connections", str(args.clients + 100)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port, gw, 30)
        client = subprocess.Popen(
            [loadclient, "--port", str(port), "--conns", str(args.clients),
             "--messages", str(args.messages), "--sample-every", "10",
             "--timeout", str(args.timeout), "--idle", str(args.idle), "--connect-timeout", "60"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        ready = readline(client, 70, "the clients' upgrades").split()
        if ready[0] != "READY":
            raise RuntimeError(f"load client: {' '.join(ready)}")
        line = readline(pub, 15, "the gateway's subscription")
        if line != "SUBSCRIBED":
            raise RuntimeError(f"publisher: {line}")
        time.sleep(1.5)  # the upgrades settle; every worker's subscription is in; snapshots written
        res["per_worker"] = clients_per_worker(port)
        gateway_pids = [gw.pid] + children(gw.pid)
        cpu0 = {pid: proc_cpu(pid) for pid in gateway_pids}
        others0 = all_cpu()
        t_go = time.monotonic()
        pub.stdin.write(b"GO\n")
        pub.stdin.flush()
        sent = json.loads(readline(pub, args.timeout + 60, "the publisher's report"))
        report = json.loads(readline(client, args.timeout + args.idle + 30, "the load client's report"))
        res["wall_s"] = time.monotonic() - t_go
        gateway_cpu = 0.0
        for pid in gateway_pids:
            try:
                gateway_cpu += proc_cpu(pid) - cpu0[pid]
            except OSError:
                pass
        ours = set(gateway_pids) | {os.getpid(), pub.pid, client.pid}
        res["other_cpu_s"] = other_cpu(others0, all_cpu(), ours)
        res["gateway_cpu_s"] = gateway_cpu
        res["publisher_cpu_s"] = sent["cpu_s"]
        res["offered_rate"] = sent["rate"]
        res["client"] = report
        window = report["window_s"]
        res["received"] = report["received"]
        res["deliveries_per_s"] = report["received"] / window if window > 0 else 0.0
        res["loss_pct"] = 100.0 * (1 - report["received"] / (args.messages * args.clients))
        res["client_cpu_pct"] = 100.0 * report["cpu_window_s"] / window if window > 0 else 0.0
        res["gateway_cpu_pct"] = 100.0 * gateway_cpu / window if window > 0 else 0.0
        res["window_s"] = window
    except Exception as exc:  # a failed scenario is a row, not the end of the run
        res["error"] = str(exc)
    finally:
        stop(client, signal.SIGKILL)
        stop_publisher(pub)
        stop(gw, signal.SIGTERM, 20)
        if gw is not None:
            try:
                os.killpg(gw.pid, signal.SIGKILL)  # anything of the group left (it should be none)
            except ProcessLookupError:
                pass
        log.close()
    res["log"] = log_path
    return res


def table(rows: List[Dict[str, Any]]) -> str:
    base = next((r["deliveries_per_s"] for r in rows if r["workers"] == 1 and "error" not in r), None)
    head = ("| workers | clients | msg B | msgs | deliveries/s | vs 1 worker | loss % | "
            "latency p50 / p99 ms | gateway CPU % | client CPU % | other CPU % | clients per worker |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workers']} | {r['clients']} | {r['size']} | {r['messages']} | - | - | - "
                         f"| - | - | - | - | error: {r['error']} |")
            continue
        c = r["client"]
        ratio = f"{r['deliveries_per_s'] / base:.2f}x" if base else "-"
        per = ", ".join(str(v) for v in r["per_worker"].values())
        other = 100.0 * r["other_cpu_s"] / r["wall_s"] if r["wall_s"] else 0.0
        lines.append(
            f"| {r['workers']} | {r['clients']} | {r['size']} | {r['messages']} "
            f"| {fmt_rate(r['deliveries_per_s'])} | {ratio} | {r['loss_pct']:.2f} "
            f"| {c['lat_p50_ms']:.0f} / {c['lat_p99_ms']:.0f} | {r['gateway_cpu_pct']:.0f} "
            f"| {r['client_cpu_pct']:.0f} | {other:.0f} | {per} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="zmqws --workers N: deliveries per second",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--size", type=int, default=64, help="message size in bytes (>= 16)")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--rate", type=float, default=0.0, help="publish rate in msg/s; 0 = full rate")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario (the median is shown)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--idle", type=float, default=3.0)
    p.add_argument("--rcvhwm", type=int, default=100_000)
    p.add_argument("--sndhwm", type=int, default=100_000)
    p.add_argument("--json", metavar="FILE", help="write the raw results here")
    args = p.parse_args(argv)
    loadclient = build_loadclient()
    logdir = tempfile.mkdtemp(prefix="zmqws-workers-bench-")
    rows = []
    for workers in [int(w) for w in args.workers.split(",") if w]:
        runs = []
        for i in range(args.repeat):
            r = run_scenario(workers, args, loadclient, logdir)
            runs.append(r)
            status = r.get("error") or f"{fmt_rate(r['deliveries_per_s'])} deliveries/s"
            print(f"workers={workers} run {i + 1}/{args.repeat}: {status}", file=sys.stderr, flush=True)
        ok = [r for r in runs if "error" not in r]
        if ok:
            median = statistics.median(r["deliveries_per_s"] for r in ok)
            rows.append(min(ok, key=lambda r: abs(r["deliveries_per_s"] - median)))
        else:
            rows.append(runs[0])
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; {args.clients} clients, {args.size}-byte messages, "
          f"{'full rate' if args.rate <= 0 else f'{args.rate:.0f} msg/s'}; nothing pinned; logs in {logdir}")
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
