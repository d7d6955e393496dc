"""Request/reply round trips: zmqws ``--rpc`` beside python-socketio acks, in one run.

Each stack gets the same clients, the same number of requests, the same load client:

* **zmqws**: ``python -m zmqws --rpc tcp://127.0.0.1:P`` and an application in its own process
  (a pyzmq ROUTER that answers each ``request`` at once with its payload, ``reply ... ok``);
  a client sends ``{"rpc": N, "topic": "bench.echo", "data": ...}`` and waits for
  ``{"reply": N, "data": ...}``.
* **python-socketio**: ``socketio.AsyncServer(async_mode="aiohttp")`` (as
  ``ref_socketio.py`` sets it up) whose ``req`` handler returns its argument, which
  python-socketio sends back as the ack; a client sends ``42N["req", ...]`` (EVENT with ack id N,
  Socket.IO v5 over Engine.IO v4 WebSocket) and waits for ``43N[...]``.

The load client is the same for both (``websockets`` asyncio connections, split over
``--client-procs`` processes): every connection sends one request, waits for its answer, sends
the next (closed loop: requests/s is what the server sustains at that concurrency), until the
connection has done its share of ``--requests``.  Round trip = from just before the send to the
answer's arrival, in the client.  The clients' CPU is reported (% of one core, summed over their
processes): near 100 % per process means the client, not the server, was the limit.  Gateway CPU
= user+system seconds of the server process(es) during the measured window (zmqws: the gateway;
the application's own is shown apart).

    pip install -e '.[bench]'       # python-socketio, aiohttp, websockets
    python benchmarks/rpc_roundtrip.py --clients 100 1000 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STACKS = ("zmqws", "python-socketio")
PAYLOAD = "x" * 32


# -- the servers (run as roles of this file, each in its own process) --------------------------


def run_app(endpoint: str) -> None:
    """The two-way application: a ROUTER answering every request at once with its payload."""
    import zmq

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    print("READY", flush=True)
    while True:
        frames = router.recv_multipart()
        if len(frames) >= 6 and frames[1] == b"request":
            router.send_multipart([frames[0], b"reply", frames[2], frames[3], b"ok", frames[5]])


def run_sio(port: int) -> None:
    """python-socketio on aiohttp; the ``req`` handler's return value is the ack."""
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False,
                               engineio_logger=False)

    @sio.on("req")
    async def req(_sid: str, data: object) -> object:
        return data

    app = web.Application()
    sio.attach(app)
    print("READY", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, backlog=4096, access_log=None, print=None)


# -- the load client ---------------------------------------------------------------------------


async def zmqws_conn(port: int, count: int, latencies: List[float], ready: asyncio.Event,
                     go: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/?format=json&topic=none.",
                                  max_queue=None, compression=None, open_timeout=60) as ws:
        ready.set()
        await go.wait()
        for n in range(count):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"rpc": n, "topic": "bench.echo", "data": PAYLOAD}))
            while True:
                doc = json.loads(await ws.recv())
                if doc.get("reply") == n:
                    break
            assert "data" in doc, doc
            latencies.append(time.perf_counter() - t0)


async def sio_conn(port: int, count: int, latencies: List[float], ready: asyncio.Event,
                   go: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                                  max_queue=None, compression=None, open_timeout=60) as ws:
        assert (await ws.recv()).startswith("0{")
        await ws.send("40")
        while not (await ws.recv()).startswith("40"):
            pass
        ready.set()
        await go.wait()
        for n in range(count):
            t0 = time.perf_counter()
            await ws.send(f'42{n}["req",{json.dumps(PAYLOAD)}]')
            while True:
                frame = await ws.recv()
                if frame == "2":
                    await ws.send("3")
                elif frame.startswith(f"43{n}["):
                    break
            latencies.append(time.perf_counter() - t0)


async def client_main(stack: str, port: int, conns: int, requests: int) -> None:
    """Open ``conns`` connections, print READY, wait for a line on stdin, run, print a JSON line."""
    conn = zmqws_conn if stack == "zmqws" else sio_conn
    per, extra = divmod(requests, conns)
    latencies: List[float] = []
    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(conns)]
    tasks = []
    for i in range(conns):
        tasks.append(asyncio.create_task(conn(port, per + (i < extra), latencies, readies[i], go)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # no SYN flood at the listen backlog
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0, t0 = _self_cpu(), time.perf_counter()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    window, cpu = time.perf_counter() - t0, _self_cpu() - cpu0
    print(json.dumps({"latencies": latencies, "window": window, "cpu": cpu}), flush=True)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the driver --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv: List[str], wait_for: "re.Pattern[str]", stream: str = "stdout",
          env: Optional[Dict[str, str]] = None) -> Tuple[subprocess.Popen, "re.Match[str]"]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                            text=True, env=env)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            break
        match = wait_for.search(line)
        if match:
            return proc, match
    proc.kill()
    raise RuntimeError(f"{argv[:4]} did not print {wait_for.pattern}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def servers(stack: str) -> Tuple[List[subprocess.Popen], int]:
    """The server process(es) of a stack (the measured one first) and the port clients use."""
    me = [sys.executable, os.path.abspath(__file__)]
    if stack == "python-socketio":
        port = free_port()
        proc, _ = start(me + ["--role", "sio", "--port", str(port)], re.compile("READY"))
        time.sleep(1.0)  # run_app listens just after READY
        return [proc], port
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    app, _ = start(me + ["--role", "app", "--endpoint", endpoint], re.compile("READY"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    gateway, match = start([sys.executable, "-m", "zmqws", "--rpc", endpoint, "--port", "0",
                            "--client-rate", "1000000"],
                           re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/"), "stderr", env)
    return [gateway, app], int(match.group(1))


def run_one(stack: str, clients: int, requests: int, procs: int) -> Dict[str, object]:
    server_procs, port = servers(stack)
    loaders: List[subprocess.Popen] = []
    try:
        for i in range(procs):
            conns = clients // procs + (i < clients % procs)
            share = requests // procs + (i < requests % procs)
            loader, _ = start([sys.executable, os.path.abspath(__file__), "--role", "client", "--stack", stack,
                               "--port", str(port), "--conns", str(conns), "--requests", str(share)],
                              re.compile("READY"))
            loaders.append(loader)
        cpu0 = [proc_cpu(p.pid) for p in server_procs]
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write("go\n")
            loader.stdin.flush()
        results = []
        for loader in loaders:
            assert loader.stdout is not None
            results.append(json.loads(loader.stdout.readline()))
        cpu = [proc_cpu(p.pid) - c for p, c in zip(server_procs, cpu0)]
    finally:
        for proc in loaders + server_procs:
            stop(proc)
    latencies = sorted(x for r in results for x in r["latencies"])
    window = max(r["window"] for r in results)
    return {"stack": stack, "clients": clients, "requests": len(latencies), "rps": len(latencies) / window,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "server_cpu_s": cpu[0], "app_cpu_s": cpu[1] if len(cpu) > 1 else None,
            "client_cpu_pct": 100 * sum(r["cpu"] for r in results) / window, "procs": procs, "window_s": window}


def table(rows: List[Dict[str, object]]) -> str:
    out = ["| stack | clients | requests | requests/s | p50 ms | p99 ms | gateway CPU s | application CPU s "
           "| client CPU % (processes) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        app = f"{r['app_cpu_s']:.2f}" if r["app_cpu_s"] is not None else "(in the server)"
        out.append(f"| {r['stack']} | {r['clients']} | {r['requests']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} "
                   f"| {r['p99_ms']:.2f} | {r['server_cpu_s']:.2f} | {app} "
                   f"| {r['client_cpu_pct']:.0f} ({r['procs']}) |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--requests", type=int, default=20000, help="requests per run (each stack, each client count)")
    p.add_argument("--client-procs", type=int, default=2, help="load client processes")
    p.add_argument("--role", choices=("driver", "app", "sio", "client"), default="driver", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stack", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--conns", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "app":
        return run_app(args.endpoint)
    if args.role == "sio":
        return run_sio(args.port)
    if args.role == "client":
        return asyncio.run(client_main(args.stack, args.port, args.conns, args.requests))
    rows = []
    for clients in args.clients:
        for stack in STACKS:
            rows.append(run_one(stack, clients, args.requests, args.client_procs))
            print(f"# {stack} {clients} clients: {rows[-1]['rps']:,.0f} requests/s", file=sys.stderr, flush=True)
    print(f"date: {datetime.date.today().isoformat()}  python {platform.python_version()}  "
          f"cpus: {os.cpu_count()}")
    print("command: python benchmarks/rpc_roundtrip.py " + " ".join(sys.argv[1:]))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
