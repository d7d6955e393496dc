"""Transports benchmark: every zmqws transport beside plain WebSocket, in one run.

The same job for each transport: one ZeroMQ publisher (``publisher.py``: 64-byte messages
holding their send time and sequence number), one zmqws gateway, C clients of that
transport, all on 127.0.0.1; at a paced rate (100 msg/s by default) and at full rate.
For each rate and each transport (a "scenario"):

1. the publisher (pinned to ``--client-cpu``) binds an ephemeral port;
2. a new zmqws gateway (``python -m zmqws --payload binary``, pinned to ``--gateway-cpu``)
   subscribes to it; ``ws-deflate`` runs it with ``--deflate-threshold`` (0 by default: every
   message compressed), the others with ``--no-deflate``;
3. the load client of the transport (pinned with the publisher) opens C connections:

   * ``ws``, ``ws-deflate``: ``loadclient.c`` (``--deflate 1``: offers permessage-deflate
     and inflates every message; ``--deflate-count-only``: counts without inflating);
   * ``sse``, ``poll``: ``httpclient.c`` (``GET /events``, the stream's ``event: binary``
     events, base64; ``GET /poll?since=ID`` again and again on keep-alive connections, the
     JSON array's base64 ``data``);
   * ``sio-ws``: ``sio_loadclient.mjs`` over WebSocket (``--sio-client raw``, the default:
     the minimal Engine.IO handshake on Node's ``ws``; ``sio``: real socket.io-client);
   * ``sio-polling``: ``httpclient.c --mode eio`` (``--sio-polling-client c``, the default:
     Engine.IO v4 long-polling sessions by hand, GETs on one keep-alive connection, "40" and
     pongs POSTed on another) or ``sio_loadclient.mjs`` with socket.io-client and
     ``transports: ["polling"]`` (``sio``: what an application runs, but one Node process
     cannot keep up with 1000 sessions at 100 msg/s);

   every message reaches a client as publisher.py's binary payload (a binary frame, a
   base64 SSE event or JSON string, a Socket.IO binary attachment);
4. once the client is ready, the publisher has the gateway's subscription and the gateway's
   ``/metrics`` counts C clients of the transport, the publisher sends N messages (``--rate``
   x ``--duration``, or ``--full-messages`` at full rate); every client checks each
   connection's sequence numbers, samples latency on every 10th connection, and stops when
   every connection has all N, or after ``--idle`` seconds without a message, or after
   ``--timeout`` seconds;
5. the gateway's CPU time (``/proc``, from just before the first message to the client's
   report), its ``/metrics`` counters over the run (drops, gap notices, requests), and how
   busy each pinned CPU was are read; every process is stopped.

deliveries/s = messages received by all clients / (last arrival - first arrival); loss =
1 - received / (N x C); CPU µs / delivery = gateway CPU s / messages received; "vs ws" =
that figure over plain WebSocket's at the same rate in the same run.  A markdown table on
stdout, ``--json FILE`` for the raw results.

    python benchmarks/transports.py                                      # 1000 clients, 100 msg/s and full rate
    python benchmarks/transports.py --clients 100 --duration 3 --transports ws,sse,poll --rates 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import (LOADCOMMON_H, CpuSampler, Scenario, add_common_args, all_cpu, build,  # noqa: E402
                    build_loadclient, cpu_busy, delivery_figures, delivery_summary, fmt_rate, free_port,
                    gateway_command, log_dir, log_problems, machine_line, parse_list, pin_cpus, proc_cpu,
                    proc_status_kb, progress, quiet_before, readline, run_notes, stream_notes, wait_ready,
                    write_json)
from socketio_fanout import LOADCLIENT as SIO_LOADCLIENT, node_for_loadclient  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HTTPCLIENT_SRC = os.path.join(HERE, "httpclient.c")
HTTPCLIENT = os.path.join(HERE, "httpclient")

#: transport -> the gateway's name for its clients in ``zmqws_clients{transport=...}``
TRANSPORTS = {"ws": "websocket", "ws-deflate": "websocket", "sse": "sse", "poll": "poll",
              "sio-ws": "socketio", "sio-polling": "socketio-polling"}
BASE = "ws"  # the reference of the "vs ws" column

#: counters read from /metrics before and after a run (their difference is reported)
COUNTERS = {
    "zmq_messages": "zmqws_zmq_messages_total",
    "messages_out": "zmqws_messages_out_total",
    "drops": "zmqws_dropped_messages_total",
    "slow_closed": 'zmqws_drops_total{cause="slow_consumer_closed"}',
    "gap_notices": "zmqws_resume_gaps_total",
    "http_requests": "zmqws_http_requests_total",
    "requests_capped": "zmqws_requests_capped_total",
    "protocol_errors": "zmqws_protocol_errors_total",
    "loop_busy_s": "zmqws_loop_busy_seconds_total",
    "loop_turns": "zmqws_loop_turns_total",
}


def build_httpclient() -> str:
    """The C load client of the HTTP transports (SSE, long-poll, Engine.IO long-polling)."""
    return build(HTTPCLIENT, HTTPCLIENT_SRC, headers=[LOADCOMMON_H])


# -- the gateway's /metrics ----------------------------------------------------------------


def read_metrics(port: int) -> Dict[str, float]:
    """``GET /metrics`` of the gateway: ``{"name{labels}": value}``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Host": "localhost"})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_clients(port: int, transport: str, count: int, timeout: float) -> None:
    """Wait until the gateway counts ``count`` clients of ``transport`` (held polls included)."""
    key = f'zmqws_clients{{transport="{TRANSPORTS[transport]}"}}'
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = read_metrics(port).get(key, 0.0)
        if seen >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway counts {seen:.0f} of {count} {TRANSPORTS[transport]} clients")


def counter_deltas(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    out = {name: after.get(key, 0.0) - before.get(key, 0.0) for name, key in COUNTERS.items()}
    out["queued_bytes_at_end"] = after.get("zmqws_queued_bytes", 0.0)
    out["loop_turn_max_s"] = after.get("zmqws_loop_turn_max_seconds", 0.0)
    return out


# -- the processes of a scenario ---------------------------------------------------------


def gateway_args(transport: str, endpoint: str, port: int, args: argparse.Namespace) -> List[str]:
    """zmqws as fanout.py runs it (binary frames), deflate only for ws-deflate."""
    deflate = (["--deflate-threshold", str(args.deflate_threshold)] if transport == "ws-deflate"
               else ["--no-deflate"])
    return gateway_command("zmqws", endpoint, port, args.rcvhwm) + deflate + shlex.split(args.gateway_args)


def client_args(transport: str, port: int, clients: int, messages: int, args: argparse.Namespace,
                tools: Dict[str, str]) -> List[str]:
    """The load client of a transport."""
    common = ["--port", str(port), "--conns", str(clients), "--messages", str(messages),
              "--sample-every", str(args.sample_every), "--timeout", str(args.timeout),
              "--idle", str(args.idle), "--connect-timeout", str(args.connect_timeout)]
    if transport in ("ws", "ws-deflate"):
        deflate = 0 if transport == "ws" else 2 if args.deflate_count_only else 1
        return [tools["loadclient"], *common, "--deflate", str(deflate)]
    if transport in ("sse", "poll"):
        return [tools["httpclient"], "--mode", transport, *common]
    mode, sio_transport = (args.sio_client, "websocket") if transport == "sio-ws" else ("sio", "polling")
    if transport == "sio-polling" and args.sio_polling_client == "c":
        return [tools["httpclient"], "--mode", "eio", *common]
    return [tools["node"], SIO_LOADCLIENT, *common, "--mode", mode, "--transport", sio_transport]


def normalised(report: Dict[str, Any]) -> Dict[str, Any]:
    """The Node client's report with the C clients' field names."""
    report.setdefault("complete_conns", report.get("complete", 0))
    report.setdefault("timed_out", report.get("reason") == "timeout")
    for key in ("eof", "errors", "gap_notices", "closed_by_server", "out_of_order", "http_errors"):
        report.setdefault(key, 0)
    return report


def run_scenario(transport: str, rate: float, args: argparse.Namespace, tools: Dict[str, str],
                 logdir: str, sampler: CpuSampler) -> Dict[str, Any]:
    clients = args.clients
    messages = args.full_messages if rate <= 0 else max(1, int(rate * args.duration))
    res: Dict[str, Any] = {"transport": transport, "clients": clients, "rate": rate, "messages": messages,
                           "size": args.size, "payload": args.payload}
    log_offset = None
    with Scenario(os.path.join(logdir, f"{transport}-{clients}-{rate:g}.log")) as s:
        try:
            endpoint = s.publisher(
                [sys.executable, os.path.join(HERE, "publisher.py"), "--messages", str(messages),
                 "--size", str(args.size), "--rate", str(rate), "--sndhwm", str(args.sndhwm),
                 "--payload", args.payload], args.client_cpu)
            port = free_port()
            gw = s.gateway(gateway_args(transport, endpoint, port, args), port, args.gateway_cpu)
            client = s.load_client(client_args(transport, port, clients, messages, args, tools), args.client_cpu)
            res["connect_s"] = wait_ready(client, s.pub, args.connect_timeout)
            wait_clients(port, transport, clients, 15)
            time.sleep(0.3)  # the last connections settle
            metrics0 = read_metrics(port)
            if args.py_spy:
                res["py_spy"] = s.py_spy(os.path.join(args.py_spy, f"{transport}-{rate:g}.txt"),
                                         args.duration + args.timeout + 10, args.client_cpu)
            others0 = all_cpu()
            cpu0 = proc_cpu(gw.pid)
            sent = s.go(args.timeout + 60)
            report = normalised(json.loads(readline(client, args.timeout + args.idle + 30,
                                                    "the load client's report")))
            res["gateway_cpu_s"] = proc_cpu(gw.pid) - cpu0
            res["wall_s"] = time.monotonic() - s.t_go
            res["other_cpu_s"] = s.other_cpu(others0)
            res["gateway_rss_mb"] = proc_status_kb(gw.pid, "VmHWM") / 1024
            res["gateway"] = counter_deltas(metrics0, read_metrics(port))
            res["offered_rate"] = sent["rate"]
            res["publisher_cpu_s"] = sent["cpu_s"]
            log_offset = s.log_size()
            res["client"] = report
            cpu_busy(res, report, sampler, args)
            delivery_figures(res, report, messages * clients)
            res["gateway_cpu_pct"] = 100.0 * res["gateway_cpu_s"] / res["wall_s"]
            res["gateway_alive"] = gw.poll() is None
        except Exception as exc:  # a failed scenario is a row of the table; the run goes on
            res["error"] = str(exc)
    text = s.log_text()
    res["log"] = s.log_path
    res["log_problems"] = log_problems(text[:log_offset] if log_offset is not None else text)
    return res


# -- report ---------------------------------------------------------------------------------


def notes(r: Dict[str, Any], args: argparse.Namespace) -> List[str]:
    c, g = r["client"], r["gateway"]
    out = []
    if r["client_cpu_pct"] >= 90:
        out.append("client-bound")
    if c["timed_out"]:
        out.append(f"cut at {args.timeout:.0f} s")
    elif c["complete_conns"] < c["conns"]:
        out.append(f"ended: {args.idle:g} s without a message, {c['complete_conns']} of {c['conns']} complete")
    if g["queued_bytes_at_end"]:
        out.append(f"{g['queued_bytes_at_end'] / 1e6:.1f} MB still queued in the gateway")
    out += stream_notes(c)
    if c["gap_notices"] or g["gap_notices"]:
        out.append(f"gap notices: {c['gap_notices']} read, {g['gap_notices']:.0f} sent")
    if g["drops"] or g["slow_closed"]:
        out.append(f"gateway drops {g['drops']:.0f}, slow closes {g['slow_closed']:.0f}")
    if g["loop_busy_s"] >= 0.9 * r["wall_s"]:
        out.append(f"gateway loop saturated (busy {100 * g['loop_busy_s'] / r['wall_s']:.0f} % of the run, "
                   f"longest turn since start {1000 * g['loop_turn_max_s']:.0f} ms)")
    if r["transport"] in ("poll", "sio-polling") and r["received"]:
        out.append(f"{r['received'] / max(1.0, g['http_requests']):.1f} deliveries per HTTP request")
    if g["zmq_messages"] < r["messages"]:
        out.append(f"gateway took {g['zmq_messages']:.0f} of {r['messages']} from ZeroMQ")
    if c["closed_by_server"] or c["eof"] or c["errors"] or c["http_errors"]:
        out.append(f"{c['closed_by_server']} closed by server, {c['eof']} EOF, {c['errors']} errors, "
                   f"{c['http_errors']} HTTP errors")
    return out + run_notes(r)


def table(results: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    base = {r["rate"]: r["gateway_cpu_us_per_delivery"] for r in results
            if r["transport"] == BASE and "error" not in r and r["received"]}
    head = ("| transport | offered msg/s | deliveries (of msgs x clients) | deliveries/s | loss % "
            "| latency p50 / p99 ms | wire B / msg | gateway CPU s (% of run) | CPU µs / delivery | vs ws | "
            f"≤ {args.max_ratio:g}x ws, 0 % loss paced | client CPU % (CPU {args.client_cpu} busy %) | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        offered = "full" if r["rate"] <= 0 else f"{r['rate']:g}"
        if "error" in r:
            lines.append(f"| {r['transport']} | {offered} | - (of {r['messages']} x {r['clients']}) "
                         f"| - | - | - | - | - | - | - | no | - | error: {r['error']} |")
            continue
        c = r["client"]
        if r["rate"] <= 0:
            offered = f"full ({fmt_rate(r['offered_rate'])})"
        ref = base.get(r["rate"])
        ratio = r["gateway_cpu_us_per_delivery"] / ref if ref else None
        met = (ratio <= args.max_ratio and (r["rate"] <= 0 or (r["loss_pct"] == 0 and c["gaps"] == 0))
               if ratio is not None else None)
        latency = (f"{c['lat_p50_ms']:.1f} / {c['lat_p99_ms']:.1f}" if c.get("lat_samples") else "-")
        wire = f"{c['wire_bytes'] / r['received']:.0f}" if c.get("wire_bytes") and r["received"] else "-"
        client_cpu = f"{r['client_cpu_pct']:.0f}"
        if r.get("client_cpu_busy"):
            client_cpu += f" ({r['client_cpu_busy']['busy_pct']:.0f})"
        lines.append(
            f"| {r['transport']} | {offered} | {fmt_rate(r['received'])} (of {r['messages']} x {r['clients']}) "
            f"| {fmt_rate(r['deliveries_per_s'])} | {r['loss_pct']:.2f} | {latency} | {wire} "
            f"| {r['gateway_cpu_s']:.2f} ({r['gateway_cpu_pct']:.0f} %) "
            f"| {r['gateway_cpu_us_per_delivery']:.2f} | {f'{ratio:.2f}x' if ratio else '-'} "
            f"| {'-' if met is None else 'yes' if met else 'no'} | {client_cpu} | {'; '.join(notes(r, args))} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help=f"comma-separated, from: {', '.join(TRANSPORTS)} ({BASE} is the reference)")
    p.add_argument("--clients", type=int, default=1000, help="connections (sessions) per scenario")
    p.add_argument("--rates", default="100,0",
                   help="comma-separated publish rates in msg/s, one scenario each; 0 = full rate")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of publishing at a paced rate (messages = rate x duration)")
    p.add_argument("--full-messages", type=int, default=10000, help="messages published at full rate")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (>= 16)")
    p.add_argument("--payload", choices=("zeros", "json"), default="zeros",
                   help="after the 16-byte header: zeros, or JSON text (publisher.py)")
    p.add_argument("--deflate-threshold", type=int, default=0,
                   help="the ws-deflate gateway's --deflate-threshold (its default, 128, would send "
                        "64-byte messages uncompressed)")
    p.add_argument("--deflate-count-only", action="store_true",
                   help="ws-deflate: the load client counts compressed messages without inflating "
                        "them (no sequence or latency checks)")
    p.add_argument("--sio-client", choices=("raw", "sio"), default="raw",
                   help="sio-ws: the minimal Engine.IO client on ws, or real socket.io-client "
                        "(sio-polling: see --sio-polling-client)")
    p.add_argument("--sio-polling-client", choices=("c", "sio"), default="c",
                   help="sio-polling: Engine.IO long-polling in C (httpclient.c --mode eio), or "
                        "socket.io-client in Node")
    p.add_argument("--gateway-args", default="", help="more zmqws options for every gateway, one string")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds after the clients are ready after which a scenario is cut")
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds without any message (after the first) that end a scenario")
    p.add_argument("--sndhwm", type=int, default=100_000, help="the publisher's send HWM")
    p.add_argument("--max-ratio", type=float, default=1.5,
                   help="the target: CPU per delivery at most this times plain WebSocket's")
    p.add_argument("--py-spy", metavar="DIR",
                   help="record the gateway with py-spy, raw stacks to DIR/TRANSPORT-RATE.txt "
                        "(summarise with spy_summary.py)")
    add_common_args(p, connect_timeout=60.0)
    args = p.parse_args(argv)
    transports = parse_list(args.transports)
    for t in transports:
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t!r}")
    if args.size < 16:
        p.error("--size must be at least 16")
    rates = parse_list(args.rates, float)
    ncpu = pin_cpus(args)

    tools = {"loadclient": build_loadclient(), "httpclient": build_httpclient()}
    if "sio-ws" in transports or ("sio-polling" in transports and args.sio_polling_client == "sio"):
        tools["node"] = node_for_loadclient()
    logdir = log_dir(args)
    # the reference first, so that each rate's rows can be compared with it as they come
    order = ([BASE] if BASE in transports else []) + [t for t in transports if t != BASE]
    results = []
    started = time.monotonic()
    for rate in rates:
        for transport in order:
            quiet_before(args.quiet_wait)
            t = time.monotonic()
            with CpuSampler() as sampler:
                r = run_scenario(transport, rate, args, tools, logdir, sampler)
            results.append(r)
            progress(started, t, f"{transport:12} {'full' if rate <= 0 else f'{rate:g}/s':>7}", r,
                     delivery_summary(r, cpu_per_delivery=True))

    print(f"\n{machine_line(ncpu, args)}; "
          f"{args.clients} clients; {args.size} B messages ({args.payload}); paced: rate x {args.duration:g} s, "
          f"full rate: {args.full_messages} messages\n")
    print("command: python benchmarks/transports.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print()
    print(table(results, args))
    write_json(args, results)
    print(f"\ngateway logs: {logdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
