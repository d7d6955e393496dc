"""Per-client topics: cost per message as the number of topics grows, zmqws beside a per-channel map.

The question: with every client on a topic of its own (plus a few shared
ones), does the gateway's cost per message stay flat as the topics go from
a thousand to ten thousand?  And how does it compare with the routing of
Pushpin and Fanout, a hash map from each channel to its set of connections?

**End to end**, for each client count C and each stack, in the same run:

* ``topics_publisher.py`` (XPUB, pinned to ``--client-cpu``) binds;
* the gateway starts, pinned to ``--gateway-cpu``: ``zmqws`` (``python -m
  zmqws``; keepalive pings off, as the reference sends none; caps on
  connections and upstream prefixes raised to fit) or ``channels``
  (``ref_channels.py``: picows, the fastest Python stack of ``fanout.py``,
  with a per-channel dict, exact match; it subscribes upstream per channel as
  zmqws does per prefix);
* the C load client (``loadclient.c``, pinned with the publisher) opens C
  connections, 200 handshakes at a time; connection i asks for
  ``/?topic=u<i>.&topic=s<i mod 100>.``: its own topic and one of
  ``--shared`` (100) shared topics, so C + 100 topics in all;
* once the gateway has subscribed to every topic, its idle CPU is read over
  ``--idle-window`` seconds, then the publisher sends ``--rate`` (1000) msg/s
  for ``--duration`` seconds: a share ``--shared-share`` of them on a shared
  topic chosen at random (C / 100 recipients each), the others on a client's
  own topic chosen at random (one recipient).  With share 0.5 (half and
  half), deliveries grow with C (500 + 5 C per second); with share 0 every
  message has one recipient whatever C, so the cost per message shows the
  routing alone; both run by default;
* each topic is numbered on its own and the load client checks the order
  and gaps of each of a connection's two streams (``--seq-streams 2``),
  samples the latency of every message on every 10th connection, and stops
  ``--idle`` seconds after the last message.

Figures: the gateway's CPU time (``/proc``, all threads) from the start of
sending to the load client's end, per published message and per delivery;
loss = 1 - received / the deliveries the publisher's messages call for;
latency p50/p99 (send to read, CLOCK_MONOTONIC across processes); the
gateway's CPU while idle with its connections open.  "vs channels" is zmqws's
CPU per message over the reference's at the same C and share.

**In process** (as ``routing.py``), for 100 .. 100 000 own topics (+ 100
shared): zmqws's ``Router.match`` (a message's routes) beside
``dict.get`` (a channel's set), and the whole hub path (``Hub.take`` +
``Hub.flush``: ids, history, routes, the frame, the output queues) beside
a dict look-up + the frame + the same queueing, per message on an own topic,
one message per loop turn (at 1000 msg/s a turn seldom has more).  CPU time
of this thread, so other load on the machine counts little.

``--py-spy DIR`` records zmqws's stacks while it publishes (``spy_summary.py``
summarises them).

    python benchmarks/topics.py                       # 1000, 3000, 10000 clients; about 4 min
    python benchmarks/topics.py --clients 500 --duration 3 --shared-share 0.5 --inprocess-topics 100,1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from fanout import (Scenario, add_common_args, all_cpu, build_loadclient, free_port, log_dir, log_problems,
                    machine_line, parse_list, pin_cpus, proc_cpu, proc_status_kb, progress, quiet_before,
                    readline, run_notes, wait_ready, write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
STACKS = ("zmqws", "channels")
PATH_TEMPLATE = "/?topic=u%i.&topic=s%m."  # loadclient.c: %i the connection's index, %m it modulo --path-mod


def gateway_command(stack: str, endpoint: str, port: int, clients: int, args: argparse.Namespace) -> List[str]:
    py = sys.executable
    if stack == "zmqws":
        return [py, "-m", "zmqws", "--sub", endpoint, "--port", str(port), "--rcvhwm", str(args.rcvhwm),
                "--payload", "binary", "--ping-interval", "0", "--max-connections", str(clients + 1000),
                "--max-upstream-prefixes", "0"]
    if stack == "channels":
        return [py, os.path.join(HERE, "ref_channels.py"), "--sub", endpoint, "--port", str(port),
                "--rcvhwm", str(args.rcvhwm)]
    raise ValueError(f"unknown stack {stack!r}")


# -- end to end -------------------------------------------------------------------------------


def run_scenario(stack: str, clients: int, share: float, args: argparse.Namespace, loadclient: str,
                 logdir: str) -> Dict[str, Any]:
    res: Dict[str, Any] = {"stack": stack, "clients": clients, "topics": clients + min(clients, args.shared),
                           "shared_share": share, "rate": args.rate}
    with Scenario(os.path.join(logdir, f"{stack}-{clients}-{share:g}.log")) as s:
        try:
            endpoint = s.publisher(
                [sys.executable, os.path.join(HERE, "topics_publisher.py"), "--clients", str(clients),
                 "--shared", str(args.shared), "--shared-share", str(share), "--rate", str(args.rate),
                 "--duration", str(args.duration), "--size", str(args.size)], args.client_cpu)
            port = free_port()
            gw = s.gateway(gateway_command(stack, endpoint, port, clients, args), port, args.gateway_cpu)
            client = s.load_client(
                [loadclient, "--port", str(port), "--conns", str(clients), "--messages", "0",
                 "--path-template", PATH_TEMPLATE, "--path-mod", str(args.shared), "--seq-streams", "2",
                 "--sample-every", str(args.sample_every), "--idle", str(args.idle),
                 "--timeout", str(args.duration + args.idle_window + 120), "--connect-timeout",
                 str(args.connect_timeout)], args.client_cpu)
            # the publisher's SUBSCRIBED: the gateway has subscribed to every topic
            res["connect_s"] = wait_ready(client, s.pub, args.connect_timeout, subscribe_timeout=120)
            time.sleep(0.5)
            cpu_a = proc_cpu(gw.pid)
            time.sleep(args.idle_window)
            res["idle_cpu_pct"] = 100.0 * (proc_cpu(gw.pid) - cpu_a) / args.idle_window

            if args.py_spy and stack == "zmqws":
                res["py_spy"] = s.py_spy(os.path.join(args.py_spy, f"zmqws-{clients}-{share:g}.txt"),
                                         int(args.duration + args.idle) + 5, args.client_cpu)
            others0 = all_cpu()
            cpu0 = proc_cpu(gw.pid)
            sent = s.go(args.duration + 60)
            report = json.loads(readline(client, args.idle + 150, "the load client's report"))
            res["wall_s"] = time.monotonic() - s.t_go
            res["gateway_cpu_s"] = proc_cpu(gw.pid) - cpu0
            res["other_cpu_s"] = s.other_cpu(others0)
            res["gateway_rss_mb"] = proc_status_kb(gw.pid, "VmHWM") / 1024
            res["gateway_alive"] = gw.poll() is None
            res["publisher"] = sent
            res["client"] = report
            received = report["received"]
            res["loss_pct"] = 100.0 * (1 - received / sent["deliveries"]) if sent["deliveries"] else 0.0
            res["cpu_us_per_msg"] = 1e6 * res["gateway_cpu_s"] / sent["sent"]
            res["cpu_us_per_delivery"] = 1e6 * res["gateway_cpu_s"] / received if received else 0.0
        except Exception as exc:  # a failed scenario is a row; go on with the next
            res["error"] = str(exc)
    res["log_problems"] = log_problems(s.log_text())
    res["log"] = s.log_path
    return res


def e2e_table(results: List[Dict[str, Any]]) -> str:
    ref = {(r["clients"], r["shared_share"]): r["cpu_us_per_msg"]
           for r in results if r["stack"] == "channels" and "error" not in r}
    head = ("| stack | clients | topics | shared share | msgs sent (msg/s) | deliveries | loss % | "
            "latency p50 / p99 / max ms | idle CPU % | gateway CPU s | CPU µs/msg | CPU µs/delivery | "
            "vs channels | connect s | RSS MB | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        start = f"| {r['stack']} | {r['clients']:,} | {r['topics']:,} | {r['shared_share']:g} |"
        if "error" in r:
            lines.append(start + " - |" * 11 + f" error: {r['error']} |")
            continue
        c, p = r["client"], r["publisher"]
        base = ref.get((r["clients"], r["shared_share"]))
        notes = []
        if c["gaps"] or c["out_of_order"]:
            notes.append(f"{c['gaps']} gaps, {c['out_of_order']} out of order")
        if c["closed_by_server"] or c["eof"] or c["errors"]:
            notes.append(f"{c['closed_by_server']} closed by server, {c['eof']} EOF, {c['errors']} errors")
        if c["timed_out"]:
            notes.append("client timed out")
        notes += run_notes(r)
        ratio = f"{r['cpu_us_per_msg'] / base:.2f}x" if base else "-"
        lines.append(
            start + f" {p['sent']:,} ({p['rate']:.0f}) | {c['received']:,} of {p['deliveries']:,} | "
            f"{r['loss_pct']:.2f} | {c['lat_p50_ms']:.1f} / {c['lat_p99_ms']:.1f} / {c['lat_max_ms']:.1f} | "
            f"{r['idle_cpu_pct']:.1f} | {r['gateway_cpu_s']:.2f} | {r['cpu_us_per_msg']:.1f} | "
            f"{r['cpu_us_per_delivery']:.2f} | {ratio} | {r['connect_s']:.1f} | {r['gateway_rss_mb']:.0f} | "
            f"{'; '.join(notes)} |")
    return "\n".join(lines)


# -- in process -------------------------------------------------------------------------------


def timed(fn: Any, *args: Any) -> float:
    """CPU seconds of this thread that ``fn(*args)`` took."""
    t0 = time.thread_time()
    fn(*args)
    return time.thread_time() - t0


def inprocess(own: int, shared: int, messages: int) -> Dict[str, float]:
    """zmqws's router and hub beside a per-channel dict, for ``own`` clients each on ``u<i>.`` and
    ``s<i mod shared>.``: CPU µs per message (and per delivery for the shared topics)."""
    from routing import FakeClient  # benchmarks/routing.py: a client as the fan-out sees it
    from zmqws.gateway import Gateway
    from zmqws.protocol.frames import OP_BINARY, frame_header

    gateway = Gateway(None, 0, history=1000, payload_mode="binary")
    hub = gateway.hub
    wire = gateway.websocket.context.websocket_wire(None)
    clients = [FakeClient() for _ in range(own)]
    channels: Dict[bytes, Dict[Any, None]] = {}
    for i, client in enumerate(clients):
        names = [b"u%d." % i, b"s%d." % (i % shared)]
        hub.router.add(client, names, "payload", wire)
        for name in names:
            channels.setdefault(name, {})[client] = None
    shared = min(shared, own)
    own_topics = [b"u%d." % i for i in range(own)]
    shared_topics = [b"s%d." % j for j in range(shared)]
    n_shared = max(100, messages * shared // own)  # about as many deliveries as the own-topic messages
    picks = [(i * 7919) % own for i in range(messages)]  # a stride through the topics
    shared_picks = [i % shared for i in range(n_shared)]
    payload = bytes(64)
    take, flush, match, get = hub.take, hub.flush, hub.router.match, channels.get
    dirty: Dict[Any, None] = {}

    def drain(members: Any) -> None:  # what the writer does after the turn: the queues emptied
        for client in members:
            client.session.out.clear()
            client.session.out_bytes = 0

    def routes_only(topics: List[bytes], picked: List[int]) -> None:
        for i in picked:
            for _route in match(topics[i]):
                pass

    def dict_only(topics: List[bytes], picked: List[int]) -> None:
        for i in picked:
            for _client in get(topics[i], ()):
                pass

    def hub_path(topics: List[bytes], picked: List[int]) -> None:
        for i in picked:
            topic = topics[i]
            take(topic, payload)
            flush()
            drain(channels[topic])

    def dict_path(topics: List[bytes], picked: List[int]) -> None:
        for i in picked:
            topic = topics[i]
            members = get(topic)
            if members:
                frame = frame_header(OP_BINARY, len(payload)) + payload
                size = len(frame)
                for client in members:  # what OutputQueues.fanout does per client
                    session = client.session
                    session.out.append(frame)
                    session.out_bytes += size
                    dirty[client] = None
            drain(members)

    per_group = own / shared
    return {
        "own_topics": own, "shared_topics": shared, "messages": messages, "shared_messages": n_shared,
        "match_us": 1e6 * timed(routes_only, own_topics, picks) / messages,
        "dict_get_us": 1e6 * timed(dict_only, own_topics, picks) / messages,
        "hub_us": 1e6 * timed(hub_path, own_topics, picks) / messages,
        "dict_path_us": 1e6 * timed(dict_path, own_topics, picks) / messages,
        "hub_shared_us_per_delivery": 1e6 * timed(hub_path, shared_topics, shared_picks) / n_shared / per_group,
        "dict_shared_us_per_delivery": 1e6 * timed(dict_path, shared_topics, shared_picks) / n_shared / per_group,
    }


def inprocess_table(rows: List[Dict[str, Any]]) -> str:
    head = ("| own topics (+ shared) | Router.match µs/msg | dict.get µs/msg | zmqws hub path µs/msg | "
            "dict path µs/msg | hub / dict | shared topic: zmqws µs/delivery | dict µs/delivery |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['own_topics']:,} (+ {r['shared_topics']}) | {r['match_us']:.3f} | {r['dict_get_us']:.3f} | "
            f"{r['hub_us']:.2f} | {r['dict_path_us']:.2f} | {r['hub_us'] / r['dict_path_us']:.1f}x | "
            f"{r['hub_shared_us_per_delivery']:.2f} | {r['dict_shared_us_per_delivery']:.2f} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stacks", default="zmqws,channels", help=f"comma-separated, from: {', '.join(STACKS)}")
    p.add_argument("--clients", default="1000,3000,10000",
                   help="comma-separated client counts (each client has its own topic); '' = no end-to-end run")
    p.add_argument("--shared", type=int, default=100, help="shared topics; client i is also on s<i mod this>.")
    p.add_argument("--shared-share", default="0.5,0",
                   help="comma-separated shares of the messages published on shared topics")
    p.add_argument("--rate", type=float, default=1000.0, help="messages published per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per scenario")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (>= 16)")
    p.add_argument("--idle", type=float, default=2.0, help="the load client stops this long after the last message")
    p.add_argument("--idle-window", type=float, default=2.0,
                   help="seconds over which the gateway's idle CPU is read before publishing")
    p.add_argument("--inprocess-topics", default="100,1000,10000,100000",
                   help="own-topic counts of the in-process comparison; '' = none")
    p.add_argument("--inprocess-messages", type=int, default=100_000)
    p.add_argument("--py-spy", metavar="DIR",
                   help="record zmqws with py-spy while it publishes, raw stacks to DIR (spy_summary.py reads "
                        "them); py-spy pauses the process to sample it: its CPU figures then run high")
    p.add_argument("--loadclient", metavar="PATH", help="use this load client binary instead of building one")
    add_common_args(p, connect_timeout=120.0)
    args = p.parse_args(argv)
    stacks = parse_list(args.stacks)
    if any(s not in STACKS for s in stacks) or args.size < 16 or args.shared < 1:
        p.error(f"--stacks from {', '.join(STACKS)}; --size >= 16; --shared >= 1")
    ncpu = pin_cpus(args)

    results: List[Dict[str, Any]] = []
    client_counts = parse_list(args.clients, int)
    if client_counts:
        loadclient = args.loadclient or build_loadclient()
        logdir = log_dir(args)
        started = time.monotonic()
        for clients in client_counts:
            for share in parse_list(args.shared_share, float):
                for stack in stacks:  # side by side: the stacks of one size and share back to back
                    quiet_before(args.quiet_wait)
                    t = time.monotonic()
                    r = run_scenario(stack, clients, share, args, loadclient, logdir)
                    results.append(r)
                    msg = (f"error: {r['error']}" if "error" in r else
                           f"{r['cpu_us_per_msg']:.1f} CPU µs/msg, loss {r['loss_pct']:.2f} %")
                    progress(started, t, f"{stack:8} {clients:6} clients, share {share:g}", r, msg)
        print(f"gateway logs: {logdir}", file=sys.stderr)
    rows = [inprocess(n, args.shared, args.inprocess_messages) for n in parse_list(args.inprocess_topics, int)]

    print(f"\n{machine_line(ncpu)}")
    if results:
        print(f"\nEnd to end: {args.rate:g} msg/s of {args.size} B for {args.duration:g} s; client i on u<i>. "
              f"and s<i mod {args.shared}>.; gateway on CPU {args.gateway_cpu}, load client + publisher on "
              f"CPU {args.client_cpu}\n")
        print(e2e_table(results))
    if rows:
        print(f"\nIn process: CPU µs per message on an own topic (one recipient), one message per turn; "
              f"shared topic: per delivery ({args.shared} shared topics)\n")
        print(inprocess_table(rows))
    write_json(args, results, inprocess=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
