"""Fan-out benchmark: one ZeroMQ publisher, one gateway, C WebSocket clients, all on 127.0.0.1.

For each stack and each client count (a "scenario"):

1. a publisher process (``publisher.py``, XPUB, pinned with the load client)
   binds an ephemeral port;
2. the gateway under test starts as its own process, pinned to one CPU
   (``--gateway-cpu``), its SUB socket connected to the publisher with the
   same receive high-water mark for every stack;
3. the load client (``loadclient.c``, compiled here with ``gcc -O2``, pinned
   to ``--client-cpu``) opens C connections and waits until every one is
   upgraded; then the publisher waits until the gateway has subscribed
   (zmqws subscribes upstream only once a client wants the topic);
4. the publisher sends N messages of S bytes (send time and sequence number
   inside; ``--messages auto``, the default, is N = ``--deliveries`` /
   clients) at full rate or at ``--rate``; the client counts the messages on
   every connection, checks their order, samples latency on every 10th
   connection, and stops when every connection has all N, or after
   ``--idle`` seconds without a message, or ``--timeout`` seconds after the
   start;
5. the gateway's CPU time (``/proc/PID/stat``, all threads, from just before
   the start to the client's end) and peak RSS (``VmHWM``) are read, with
   how busy each pinned CPU was while messages arrived (``/proc/stat``,
   softirq included) and how much CPU other processes used meanwhile; then
   every process is stopped.

deliveries/s = messages received by all clients / (last arrival - first
arrival); loss = 1 - received / (N x C).  Prints a markdown table (and
``--json`` writes the raw results).

    python benchmarks/fanout.py --stacks zmqws,websockets,tornado --clients 100,1000 \\
        --size 64 --messages 20000 [--rate R]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
LOADCLIENT_SRC = os.path.join(HERE, "loadclient.c")
LOADCLIENT = os.path.join(HERE, "loadclient")
LOADCOMMON_H = os.path.join(HERE, "loadcommon.h")  # included by loadclient.c and httpclient.c
C_FANOUT_SRC = os.path.join(HERE, "c_fanout.c")
C_FANOUT = os.path.join(HERE, "c_fanout")
CLK_TCK = os.sysconf("SC_CLK_TCK")

STACKS = ("zmqws", "zmqws-flush", "websockets", "tornado", "picows", "node", "c")
FLUSH_INTERVAL_MS = 2.0  # stack zmqws-flush: zmqws with --flush-interval (the default of the flag of that name)
NODE_DIR = os.path.join(HERE, "node")


def gateway_command(stack: str, endpoint: str, port: int, rcvhwm: int,
                    profile_out: Optional[str] = None, deflate: bool = False, timed: bool = False,
                    flush_interval: float = FLUSH_INTERVAL_MS) -> List[str]:
    py = sys.executable
    if stack == "zmqws" and timed:  # the output sweep timed in the process (zmqws_timed.py)
        return [py, os.path.join(HERE, "zmqws_timed.py"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)]
    if stack == "zmqws-flush":
        return gateway_command("zmqws", endpoint, port, rcvhwm) + ["--flush-interval", str(flush_interval)]
    if stack == "zmqws":
        if profile_out:
            return [py, os.path.join(HERE, "zmqws_profiled.py"), "--sub", endpoint,
                    "--port", str(port), "--rcvhwm", str(rcvhwm), "--out", profile_out]
        return [py, "-m", "zmqws", "--sub", endpoint, "--port", str(port),
                "--rcvhwm", str(rcvhwm), "--payload", "binary"]
    if stack == "websockets":
        return [py, os.path.join(HERE, "ref_websockets.py"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)] + (["--deflate"] if deflate else [])
    if stack == "tornado":
        return [py, os.path.join(HERE, "ref_tornado.py"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)]
    if stack == "picows":
        return [py, os.path.join(HERE, "ref_picows.py"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)]
    if stack == "node":
        return [prepare_node(), os.path.join(NODE_DIR, "ref_ws.mjs"), "--sub", endpoint,
                "--port", str(port), "--rcvhwm", str(rcvhwm)]
    if stack == "c":
        return [build_c_fanout(), "--sub", endpoint, "--port", str(port), "--rcvhwm", str(rcvhwm)]
    raise ValueError(f"unknown stack {stack!r} (known: {', '.join(STACKS)})")


# -- helpers ------------------------------------------------------------------------------


def build(binary: str, source: str, *flags: str, headers: Sequence[str] = ()) -> str:
    """Compile ``source`` with gcc -O2 into ``binary`` unless the binary is newer than the source
    and the ``headers`` it includes."""
    newest = max(os.path.getmtime(f) for f in (source, *headers))
    if os.path.exists(binary) and os.path.getmtime(binary) >= newest:
        return binary
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit(f"fanout.py: gcc is needed to build {os.path.relpath(source)}")
    subprocess.run([gcc, "-O2", "-Wall", "-o", binary, source, *flags], check=True)  # libraries last
    return binary


def build_loadclient() -> str:
    """The C load client (needs zlib)."""
    return build(LOADCLIENT, LOADCLIENT_SRC, "-lz", headers=[LOADCOMMON_H])


def build_c_fanout() -> str:
    """The trivial C reference server, stack "c" (needs zmq.h and libcrypto)."""
    return build(C_FANOUT, C_FANOUT_SRC, "-Wno-deprecated-declarations", "-lzmq", "-lcrypto")


def wait_ready(client: subprocess.Popen, pub: subprocess.Popen, connect_timeout: float,
               subscribe_timeout: float = 15) -> float:
    """Wait for the load client's ``READY n seconds`` (every connection open) and then for the
    publisher's ``SUBSCRIBED`` (the gateway's subscription arrived); the connect time in s."""
    ready = readline(client, connect_timeout + 10, "the clients' connections").split()
    if ready[0] != "READY":
        raise RuntimeError(f"load client: {' '.join(ready)}")
    line = readline(pub, subscribe_timeout, "the gateway's subscription")
    if line != "SUBSCRIBED":
        raise RuntimeError(f"publisher: {line}")
    return float(ready[2])


def prepare_node() -> str:
    """The node binary, once benchmarks/node has its packages (``npm ci`` the first time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        sys.exit("fanout.py: the node stack needs Node.js (node and npm)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "zeromq")):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       stdout=subprocess.DEVNULL)
    return node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: Optional[int]):
    def preexec() -> None:
        os.setsid()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return preexec


def readline(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """One line from proc.stdout within timeout (raises RuntimeError otherwise)."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = getattr(proc, "_linebuf", b"")
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"timed out waiting for {what}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{what}: process exited (rc={proc.poll()})")
            buf += chunk
        elif proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited (rc={proc.returncode})")
    line, _, rest = buf.partition(b"\n")
    proc._linebuf = rest  # type: ignore[attr-defined]
    return line.decode()


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited during start-up (rc={proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"gateway not listening on {port} after {timeout} s")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuSampler:
    """Per-CPU busy and softirq time from /proc/stat, sampled every 50 ms on a thread.

    ``busy(cpu, t0, t1)`` is the share of [t0, t1] (``time.monotonic()``, which is
    CLOCK_MONOTONIC like the load client's clock) that the CPU spent busy, softirq
    included: the kernel's loopback TCP work is partly done in softirq, which is not
    charged to any process, so this is the honest measure of a saturated CPU.
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: List[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> Dict[int, tuple]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals] + [0] * 8
                    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                    out[int(name[3:])] = ((user + nice + system + irq + softirq + steal) / CLK_TCK,
                                          softirq / CLK_TCK)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.read()))
            self._stop.wait(self.period)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.read()))

    def _at(self, t: float, cpu: int, field: int) -> float:
        samples = self.samples
        prev = samples[0]
        for cur in samples:
            if cur[0] >= t:
                if cur is prev or cur[0] == prev[0]:
                    return cur[1][cpu][field]
                f = (t - prev[0]) / (cur[0] - prev[0])
                return prev[1][cpu][field] + f * (cur[1][cpu][field] - prev[1][cpu][field])
            prev = cur
        return samples[-1][1][cpu][field]

    def busy(self, cpu: Optional[int], t0: float, t1: float) -> Optional[Dict[str, float]]:
        if cpu is None or t1 <= t0 or not self.samples:
            return None
        return {"busy_pct": 100.0 * (self._at(t1, cpu, 0) - self._at(t0, cpu, 0)) / (t1 - t0),
                "softirq_pct": 100.0 * (self._at(t1, cpu, 1) - self._at(t0, cpu, 1)) / (t1 - t0)}


def all_cpu() -> Dict[int, float]:
    """utime + stime of every process now (seconds), by pid."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = proc_cpu(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def other_cpu(before: Dict[int, float], after: Dict[int, float], ours: set) -> float:
    """CPU seconds used between two snapshots by processes that are not the benchmark's.

    A lower bound: a process that started and ended between the snapshots is missed.
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in ours)


def wait_quiet(max_wait: float, limit: float = 0.1, window: float = 2.0) -> bool:
    """Wait until the machine is idle: under ``limit`` CPUs busy over ``window`` seconds."""
    deadline = time.monotonic() + max_wait
    while True:
        a = CpuSampler.read()
        time.sleep(window)
        b = CpuSampler.read()
        busy = sum(b[cpu][0] - a[cpu][0] for cpu in b) / window
        if busy < limit:
            return True
        if time.monotonic() >= deadline:
            return False


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def stop(proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:  # pragma: no cover
        pass


def stop_publisher(pub: Optional[subprocess.Popen]) -> None:
    """End the publisher: close its stdin (it stops by itself), then SIGTERM if it lingers."""
    if pub is not None and pub.poll() is None:
        try:
            pub.stdin.close()
        except OSError:
            pass
        stop(pub, signal.SIGTERM, 5)


def log_problems(text: str) -> List[str]:
    """Lines of a gateway log that look like trouble."""
    return [line for line in text.splitlines()
            if re.search(r"Traceback|ERROR|CRITICAL|WARNING|Exception|exception", line)]


class Scenario:
    """The processes of one scenario (publisher, gateway, load client, py-spy), each pinned to its
    CPU, and the gateway's log file; ``with Scenario(log_path) as s:`` stops them all on exit
    (the load client first, then py-spy, the gateway, and the publisher last: its going is no
    warning of the gateway's) and closes the log."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.pub: Optional[subprocess.Popen] = None
        self.gw: Optional[subprocess.Popen] = None
        self.client: Optional[subprocess.Popen] = None
        self.spy: Optional[subprocess.Popen] = None
        self.t_go = 0.0

    def __enter__(self) -> "Scenario":
        return self

    def __exit__(self, *exc: Any) -> None:
        stop(self.client, signal.SIGKILL)
        stop(self.spy, signal.SIGINT, 20)
        stop(self.gw, signal.SIGTERM, 15)
        stop_publisher(self.pub)
        self.log.close()

    def publisher(self, command: List[str], cpu: Optional[int]) -> str:
        """Start the publisher; the endpoint it bound (its ``ENDPOINT tcp://...`` line)."""
        self.pub = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pinned(cpu))
        return readline(self.pub, 15, "the publisher's endpoint").split()[1]

    def gateway(self, command: List[str], port: int, cpu: Optional[int]) -> subprocess.Popen:
        """Start the gateway (its output to the log) and wait until it listens on ``port``."""
        self.gw = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                   preexec_fn=pinned(cpu))
        wait_port(port, self.gw, 15)
        return self.gw

    def load_client(self, command: List[str], cpu: Optional[int]) -> subprocess.Popen:
        self.client = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       preexec_fn=pinned(cpu))
        return self.client

    def py_spy(self, out: str, seconds: float, cpu: Optional[int]) -> str:
        """Record the gateway with py-spy for ``seconds`` (raw stacks for spy_summary.py) into
        ``out``; returns its absolute path."""
        out = os.path.abspath(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        assert self.gw is not None
        self.spy = subprocess.Popen(["py-spy", "record", "--format", "raw", "-o", out, "-r", "200",
                                     "-d", str(int(seconds)), "-p", str(self.gw.pid)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=pinned(cpu))
        time.sleep(1.0)  # py-spy attaches
        return out

    def go(self, timeout: float) -> Dict[str, Any]:
        """Tell the publisher to send; its report (a JSON line) once it has sent everything."""
        assert self.pub is not None and self.pub.stdin is not None
        self.t_go = time.monotonic()
        self.pub.stdin.write(b"GO\n")
        self.pub.stdin.flush()
        return json.loads(readline(self.pub, timeout, "the publisher's report"))

    def other_cpu(self, before: Dict[int, float]) -> float:
        """CPU seconds of the processes that are not this scenario's since the ``all_cpu()``
        snapshot ``before``."""
        ours = {os.getpid()} | {p.pid for p in (self.pub, self.gw, self.client, self.spy) if p is not None}
        return other_cpu(before, all_cpu(), ours)

    def log_size(self) -> int:
        """How much the gateway has logged so far."""
        self.log.flush()
        return os.path.getsize(self.log_path)

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def cpu_busy(res: Dict[str, Any], report: Dict[str, Any], sampler: CpuSampler, args: argparse.Namespace) -> None:
    """How busy the gateway's and the load client's CPUs were from the client's first message to its
    last (``res["gateway_cpu_busy"]``, ``res["client_cpu_busy"]``)."""
    if report.get("first_abs_s", -1) > 0:
        t0, t1 = report["first_abs_s"], report["last_abs_s"]
        res["gateway_cpu_busy"] = sampler.busy(args.gateway_cpu, t0, t1)
        res["client_cpu_busy"] = sampler.busy(args.client_cpu, t0, t1)


def delivery_figures(res: Dict[str, Any], report: Dict[str, Any], expected: int) -> None:
    """From the load client's report and ``res["gateway_cpu_s"]``: received, deliveries/s over the
    receive window, loss against ``expected`` deliveries, client CPU % and gateway CPU per delivery."""
    window = report["window_s"]
    received = res["received"] = report["received"]
    res["deliveries_per_s"] = received / window if window > 0 else 0.0
    res["loss_pct"] = 100.0 * (1 - received / expected)
    res["client_cpu_pct"] = 100.0 * report["cpu_window_s"] / window if window > 0 else 0.0
    res["gateway_cpu_us_per_delivery"] = 1e6 * res["gateway_cpu_s"] / received if received else 0.0


# -- one scenario -----------------------------------------------------------------------------


def messages_for(clients: int, args: argparse.Namespace) -> int:
    if args.messages == "auto":
        return max(1000, int(round(args.deliveries / clients, -3)))
    return args.messages


def run_scenario(stack: str, clients: int, args: argparse.Namespace, loadclient: str,
                 logdir: str, sampler: CpuSampler, deflate: bool = False) -> Dict[str, Any]:
    messages = messages_for(clients, args)
    res: Dict[str, Any] = {"stack": stack, "clients": clients, "size": args.size,
                           "messages": messages, "rate": args.rate, "deflate": deflate,
                           "payload": args.payload}
    log_offset = None
    profile_out = None
    with Scenario(os.path.join(logdir, f"{stack}{'-deflate' if deflate else ''}-{clients}.log")) as s:
        try:
            endpoint = s.publisher(
                [sys.executable, os.path.join(HERE, "publisher.py"), "--messages", str(messages),
                 "--size", str(args.size), "--rate", str(args.rate), "--sndhwm", str(args.sndhwm),
                 "--payload", args.payload], args.client_cpu)
            port = free_port()
            if args.profile and stack == "zmqws":
                os.makedirs(args.profile, exist_ok=True)
                profile_out = os.path.join(os.path.abspath(args.profile), f"zmqws-{clients}.prof")
                res["profile"] = profile_out
            gw = s.gateway(gateway_command(stack, endpoint, port, args.rcvhwm, profile_out, deflate,
                                           timed=args.sweep, flush_interval=args.flush_interval),
                           port, args.gateway_cpu)
            client = s.load_client(
                [loadclient, "--port", str(port), "--conns", str(clients),
                 "--messages", str(messages), "--sample-every", str(args.sample_every),
                 "--timeout", str(args.timeout), "--idle", str(args.idle),
                 "--connect-timeout", str(args.connect_timeout), "--pause-us", str(args.client_pause_us),
                 "--deflate", str(2 if deflate and args.deflate_count_only else int(deflate))], args.client_cpu)
            # zmqws subscribes upstream when a client wants a topic; the references at start-up.
            res["connect_s"] = wait_ready(client, s.pub, args.connect_timeout)
            time.sleep(0.3)  # let the last upgrades settle in the gateway

            cpu0 = proc_cpu(gw.pid)
            if args.py_spy and stack == "zmqws":
                res["py_spy"] = s.py_spy(os.path.join(args.py_spy, f"zmqws-{clients}.txt"), args.timeout + 5,
                                         args.client_cpu)
            others0 = all_cpu()
            sent = s.go(args.timeout + 60)
            res["offered_rate"] = sent["rate"]
            res["send_s"] = sent["send_s"]
            report = json.loads(readline(client, args.timeout + args.idle + 30, "the load client's report"))
            res["wall_s"] = time.monotonic() - s.t_go
            res["other_cpu_s"] = s.other_cpu(others0)
            res["gateway_cpu_s"] = proc_cpu(gw.pid) - cpu0
            res["gateway_rss_mb"] = proc_status_kb(gw.pid, "VmHWM") / 1024
            res["publisher_cpu_s"] = proc_cpu(s.pub.pid)
            cpu_busy(res, report, sampler, args)
            log_offset = s.log_size()  # what the gateway logged during the run
            stop(s.spy, signal.SIGINT, 20)
            res["client"] = report
            expected = messages * clients
            delivery_figures(res, report, expected)
            res["gap_loss_pct"] = 100.0 * report["gaps"] / expected
            res["wire_bytes_per_msg"] = (report["wire_bytes"] / report["received"]
                                         if report["received"] else 0.0)
            res["gateway_alive"] = gw.poll() is None
        except Exception as exc:  # report the failure as a row, go on with the next scenario
            res["error"] = str(exc)
    log_text = s.log_text()
    if log_offset is None:
        log_offset = len(log_text)
    res["log"] = s.log_path
    # Trouble during the run, and at shutdown (after the load client is gone: a
    # gateway still writing its backlog to closed connections may complain).
    res["log_problems"] = log_problems(log_text[:log_offset])
    res["log_problems_at_stop"] = log_problems(log_text[log_offset:])
    if profile_out and "profile" in res:
        res["profile_top"] = log_text  # zmqws_profiled.py prints the top functions on exit
    sweep = SWEEP_LINE.search(log_text)  # zmqws_timed.py and c_fanout print it on exit
    if sweep:
        res["sweep_ms"] = {"n": int(sweep[1]), "p50": float(sweep[2]), "p99": float(sweep[3]),
                           "max": float(sweep[4])}
    return res


SWEEP_LINE = re.compile(r"sweep: (\d+) sweeps, p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms")


# -- report ---------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def stream_notes(c: Dict[str, Any]) -> List[str]:
    """Table notes on a C load client's report: deflate not negotiated everywhere, inflate errors,
    sequence gaps, messages out of order."""
    out = []
    if c.get("deflate") and c.get("deflate_conns", 0) < c["conns"]:
        out.append(f"deflate negotiated on {c.get('deflate_conns', 0)} of {c['conns']}")
    if c.get("inflate_errors"):
        out.append(f"{c['inflate_errors']} inflate errors")
    if c["gaps"]:
        out.append(f"{c['gaps']} sequence gaps")
    if c["out_of_order"]:
        out.append(f"{c['out_of_order']} out of order")
    return out


def run_notes(r: Dict[str, Any]) -> List[str]:
    """Table notes on how a scenario ran: trouble in the gateway's log, other processes busy
    during it, the gateway died."""
    out = []
    if r.get("log_problems"):
        out.append(f"{len(r['log_problems'])} log warnings/errors")
    if r.get("wall_s") and r["other_cpu_s"] > 0.05 * r["wall_s"]:
        out.append(f"other processes used {100 * r['other_cpu_s'] / r['wall_s']:.0f} % of a CPU")
    if not r.get("gateway_alive", True):
        out.append("gateway died")
    return out


def label(r: Dict[str, Any]) -> str:
    return r["stack"] + (" + deflate" if r.get("deflate") else "")


def table(results: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    base: Dict[Any, float] = {}
    for r in results:
        if r["stack"] == "websockets" and "error" not in r:
            base[(r["clients"], r["size"], r["rate"], r.get("deflate"))] = r["deliveries_per_s"]
    head = ("| stack | clients | msg B | msgs | offered msg/s | deliveries/s | loss % | "
            "latency p50 / p99 / max ms | gateway CPU s | CPU µs/delivery | wire B/msg | gateway RSS MB | "
            "client CPU % (CPU busy %) | "
            "vs websockets | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        offered = ("full" if r["rate"] <= 0 else fmt_rate(r["rate"]))
        if "error" in r:
            lines.append(f"| {label(r)} | {r['clients']} | {r['size']} | {r['messages']} | {offered} "
                         f"| - | - | - | - | - | - | - | - "
                         f"| - | error: {r['error']} |")
            continue
        c = r["client"]
        if r["rate"] <= 0:
            offered = f"full ({fmt_rate(r['offered_rate'])})"
        else:
            offered = f"{fmt_rate(r['rate'])} ({fmt_rate(r['offered_rate'])})"
        client_cpu = f"{r['client_cpu_pct']:.0f}"
        if r.get("client_cpu_busy"):
            client_cpu += f" ({r['client_cpu_busy']['busy_pct']:.0f})"
        ref = base.get((r["clients"], r["size"], r["rate"], r.get("deflate")))
        ratio = f"{r['deliveries_per_s'] / ref:.2f}x" if ref else "-"
        notes = []
        if r.get("sweep_ms"):
            sw = r["sweep_ms"]
            notes.append(f"in-process sweep p50 / p99 {sw['p50']:.2f} / {sw['p99']:.2f} ms ({sw['n']} sweeps)")
        if r.get("deflate") and args.deflate_count_only:
            notes.append("client counts only (no inflate, no sequence/latency checks)")
        if c["timed_out"]:
            notes.append(f"cut at {args.timeout:.0f} s")
        notes += stream_notes(c)
        if c["closed_by_server"]:
            codes = ", ".join(f"{k}x{v}" for k, v in c["close_codes"].items())
            notes.append(f"closed by server: {codes}")
        if c["eof"] or c["errors"]:
            notes.append(f"{c['eof']} EOF, {c['errors']} errors")
        notes += run_notes(r)
        lines.append(
            f"| {label(r)} | {r['clients']} | {r['size']} | {r['messages']} | {offered} | "
            f"{fmt_rate(r['deliveries_per_s'])} | {r['loss_pct']:.2f} | "
            f"{c['lat_p50_ms']:.1f} / {c['lat_p99_ms']:.1f} / {c['lat_max_ms']:.1f} | "
            f"{r['gateway_cpu_s']:.2f} | {r['gateway_cpu_us_per_delivery']:.2f} | "
            f"{r['wire_bytes_per_msg']:.0f} | {r['gateway_rss_mb']:.0f} | {client_cpu} | "
            f"{ratio} | {'; '.join(notes)} |")
    return "\n".join(lines)


def parse_list(text: str, conv=str) -> list:
    return [conv(x.strip()) for x in text.split(",") if x.strip()]


# -- what the benchmark scripts' main() share ---------------------------------------------------


def script() -> str:
    return os.path.basename(sys.argv[0])


def add_common_args(p: argparse.ArgumentParser, connect_timeout: float) -> None:
    """The options of the benchmarks that pin a gateway and a C load client on one machine."""
    p.add_argument("--connect-timeout", type=float, default=connect_timeout)
    p.add_argument("--sample-every", type=int, default=10,
                   help="latency of every message on every K-th connection")
    p.add_argument("--rcvhwm", type=int, default=100_000, help="the gateways' SUB receive HWM")
    p.add_argument("--gateway-cpu", type=int, default=0, help="CPU the gateway is pinned to (-1: none)")
    p.add_argument("--client-cpu", type=int, default=1,
                   help="CPU the load client and the publisher are pinned to (-1: none)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="before each scenario, wait up to S seconds for the machine to be idle "
                        "(under 10 %% of a CPU busy)")
    p.add_argument("--json", metavar="FILE", help="write the raw results here")
    p.add_argument("--logs", metavar="DIR", help="keep the gateways' logs here (else in a new temp dir)")


def pin_cpus(args: argparse.Namespace) -> int:
    """--gateway-cpu and --client-cpu to None (not pinned) where negative or not on this machine;
    the number of CPUs."""
    ncpu = os.cpu_count() or 1
    for name in ("gateway_cpu", "client_cpu"):
        cpu = getattr(args, name)
        if cpu < 0 or cpu >= ncpu:
            if cpu >= ncpu:
                print(f"{script()}: no CPU {cpu} here; not pinning", file=sys.stderr)
            setattr(args, name, None)
    return ncpu


def log_dir(args: argparse.Namespace) -> str:
    """--logs, or a new temporary directory."""
    logdir = args.logs or tempfile.mkdtemp(prefix=f"zmqws-{os.path.splitext(script())[0]}-")
    os.makedirs(logdir, exist_ok=True)
    return logdir


def quiet_before(max_wait: float) -> None:
    """--quiet-wait: wait up to ``max_wait`` seconds for the machine to be idle (0: not at all)."""
    if max_wait and not wait_quiet(max_wait):
        print(f"{script()}: the machine is still busy after {max_wait:.0f} s; running anyway", file=sys.stderr)


def delivery_summary(r: Dict[str, Any], cpu_per_delivery: bool = False) -> str:
    """A scenario's result in a few words (for progress()): deliveries/s, loss, the gateway's CPU
    per delivery if asked, the client's CPU; or its error."""
    if "error" in r:
        return f"error: {r['error']}"
    cpu = [f"{r['gateway_cpu_us_per_delivery']:.2f} µs/delivery"] if cpu_per_delivery else []
    return ", ".join([f"{fmt_rate(r['deliveries_per_s'])} deliveries/s", f"loss {r['loss_pct']:.2f} %", *cpu,
                      f"client CPU {r['client_cpu_pct']:.0f} %"])


def progress(started: float, t: float, what: str, r: Dict[str, Any], msg: str) -> None:
    """A scenario's line on stderr (seconds since ``started``, ``what``, ``msg``, its own seconds
    since ``t``), then the first trouble its gateway logged."""
    print(f"[{time.monotonic() - started:6.1f} s] {what}: {msg} ({time.monotonic() - t:.1f} s)",
          file=sys.stderr, flush=True)
    for line in r.get("log_problems", [])[:5]:
        print(f"    log: {line}", file=sys.stderr)


def machine_line(ncpu: int, args: Optional[argparse.Namespace] = None) -> str:
    """When and where: date, host, CPUs, Python, and with ``args`` the CPUs pinned."""
    line = f"{now()}; {platform.node()}; {ncpu} CPUs; Python {platform.python_version()}"
    if args is not None:
        line += f"; gateway on CPU {args.gateway_cpu}, load client + publisher on CPU {args.client_cpu}"
    return line


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def write_json(args: argparse.Namespace, results: List[Dict[str, Any]], **more: Any) -> None:
    """--json FILE: the date, the options and the results (and ``more``)."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": now(), "args": vars(args), "results": results, **more}, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="ZeroMQ -> WebSocket fan-out benchmark",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stacks", default="zmqws,websockets,tornado,picows,node",
                   help=f"comma-separated, from: {', '.join(STACKS)}")
    p.add_argument("--clients", default="100,1000", help="comma-separated connection counts")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (>= 16)")
    p.add_argument("--messages", default="auto",
                   help="messages published per scenario, or 'auto': --deliveries / clients")
    p.add_argument("--deliveries", type=float, default=100e6,
                   help="with --messages auto: messages x clients per scenario")
    p.add_argument("--payload", choices=("zeros", "json"), default="zeros",
                   help="what follows the 16-byte header in each message: zeros, or JSON text "
                        "that compresses like real data (publisher.py)")
    p.add_argument("--deflate", choices=("off", "on", "both"), default="off",
                   help="the load client offers permessage-deflate (zmqws negotiates it by "
                        "default, websockets runs with compression=\"deflate\"); 'both' runs "
                        "each stack without, then with, back to back")
    p.add_argument("--deflate-count-only", action="store_true",
                   help="with deflate, the load client does not inflate: it counts the compressed "
                        "messages (no sequence, order or latency checks); for full-rate runs, where "
                        "inflating makes the client the bottleneck")
    p.add_argument("--rate", type=float, default=0.0, help="publish rate in msg/s; 0 = full rate")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="seconds after the start after which a scenario is cut (what arrived is reported)")
    p.add_argument("--idle", type=float, default=2.0,
                   help="seconds without any message (after the first) that end a scenario")
    p.add_argument("--client-pause-us", type=int, default=0,
                   help="the load client sleeps this long between epoll rounds (batches reads)")
    p.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL_MS, metavar="MS",
                   help="stack zmqws-flush: zmqws --flush-interval MS (default: %(default)s)")
    p.add_argument("--sndhwm", type=int, default=100_000, help="the publisher's send HWM")
    p.add_argument("--retries", type=int, default=0,
                   help="run a scenario again (up to N times) when other processes used more "
                        "than 5 %% of a CPU during it")
    p.add_argument("--sweep", action="store_true",
                   help="run zmqws as benchmarks/zmqws_timed.py: the in-process time of each output "
                        "sweep, its p50/p99 in the notes (the C loop always reports its own)")
    p.add_argument("--profile", metavar="DIR", help="run zmqws under cProfile, stats to DIR")
    p.add_argument("--py-spy", metavar="DIR", help="attach py-spy to zmqws, raw stacks to DIR")
    p.add_argument("--loadclient", metavar="PATH",
                   help="use this load client binary instead of building benchmarks/loadclient.c")
    add_common_args(p, connect_timeout=60.0)
    args = p.parse_args(argv)
    if args.size < 16:
        p.error("--size must be at least 16")
    if args.messages != "auto":
        try:
            args.messages = int(args.messages)
        except ValueError:
            p.error("--messages takes a number or 'auto'")
    stacks = parse_list(args.stacks)
    for s in stacks:
        if s not in STACKS:
            p.error(f"unknown stack {s!r}")
    ncpu = pin_cpus(args)

    loadclient = args.loadclient or build_loadclient()
    if "c" in stacks:
        build_c_fanout()
    if "node" in stacks:
        prepare_node()
    logdir = log_dir(args)
    results = []
    started = time.monotonic()
    for clients in parse_list(args.clients, int):
        for stack, deflate in [(s, d) for s in stacks
                               for d in {"off": [False], "on": [True], "both": [False, True]}[args.deflate]]:
            t = time.monotonic()
            for attempt in range(args.retries + 1):
                quiet_before(args.quiet_wait)
                with CpuSampler() as sampler:
                    r = run_scenario(stack, clients, args, loadclient, logdir, sampler, deflate)
                noisy = r.get("wall_s") and r["other_cpu_s"] > 0.05 * r["wall_s"]
                if not noisy or attempt == args.retries:
                    break
                print(f"    {stack} {clients}: other processes used "
                      f"{100 * r['other_cpu_s'] / r['wall_s']:.0f} % of a CPU; again",
                      file=sys.stderr, flush=True)
            r["attempts"] = attempt + 1
            results.append(r)
            progress(started, t, f"{label(r):20} {clients:5} clients", r, delivery_summary(r))

    print(f"\n{machine_line(ncpu, args)}; "
          f"messages per scenario: {args.messages if args.messages != 'auto' else f'{args.deliveries:.3g} / clients'}"
          f" of {args.size} B ({args.payload}), "
          f"{'full rate' if args.rate <= 0 else f'{args.rate:g} msg/s'}; SUB RCVHWM {args.rcvhwm}\n")
    print(table(results, args))
    for r in results:
        if r.get("profile_top"):
            print(f"\ncProfile of zmqws, {r['clients']} clients ({r['profile']}):\n")
            print(r["profile_top"])
    write_json(args, results)
    print(f"\ngateway logs: {logdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
