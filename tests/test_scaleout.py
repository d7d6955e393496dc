"""Scale-out: ``--workers N`` (SO_REUSEPORT, the parent's id-stamping forwarder, restarts,
SIGTERM), a real nginx in front of a gateway (WebSocket, SSE, long-polling), and
``python -m zmqws.proxy`` (XSUB/XPUB, subscriptions upstream, ``--stamp`` ids).

Every child process is started in its own session (process group) and the
finalizers kill whatever of that group is left; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import zmq
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from zmqws.gateway import Gateway

from conftest import ws_client

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


# -- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited (status {proc.returncode}) before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on port {port} after {timeout} s") from None
            time.sleep(0.02)


def ws_connect(url: str, **options):
    """:func:`conftest.ws_client`, with more time to open (workers restart under the tests) and
    no receive queue limit (clients here read in bursts)."""
    options.setdefault("open_timeout", 10)
    options.setdefault("max_queue", None)
    return ws_client(url, **options)


def proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, ppid, pgid) of a live process, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def group_members(pgid: int) -> List[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[2] == pgid:
                found.append(int(name))
    return found


def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} still alive: {group_members(pgid)}")
        time.sleep(0.02)


def children_of(pid: int) -> List[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[1] == pid:
                found.append(int(name))
    return found


class Child:
    """A child process in its own process group; its stderr (and stdout) lines are collected."""

    def __init__(self, argv: List[str], *, cwd: Path = ROOT) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> "re.Match[str]":
        """The first line (from index ``start``) matching ``pattern``; fail after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n"
                                         + "".join(self.lines[-60:]))
                self._cond.wait(min(remaining, 0.1))

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def stop(self) -> None:
        """Finalizer: SIGKILL to whatever is left of the process group, then reap."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture
def spawn():
    started: List[Child] = []

    def start(*argv: str) -> Child:
        child = Child(list(argv))
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


class Publisher:
    """A PUB socket (bound) and a thread publishing ``b"<seq>"`` at ``rate`` messages per second."""

    def __init__(self, context: zmq.Context, rate: float) -> None:
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.rate = rate
        self.next_seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate) + 1
            while self.next_seq < due:
                self.socket.send(b"%d" % self.next_seq)
                self.next_seq += 1
            self._stop.wait(max(0.0, start + self.next_seq / self.rate - time.monotonic()))

    def stop(self) -> int:
        """Stop publishing; the last sequence number sent."""
        self._stop.set()
        self._thread.join(5)
        return self.next_seq - 1

    def close(self) -> None:
        self.stop()
        self.socket.close(linger=0)


def get_metrics(port: int) -> str:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def per_worker(metrics: str, name: str, labels: str = "") -> Dict[int, int]:
    """``name{labels,worker="PID"} value`` lines → {pid: value}."""
    prefix = re.escape(name + "{" + (labels + "," if labels else "") + 'worker="')
    return {int(m.group(1)): int(float(m.group(2)))
            for m in re.finditer(prefix + r'(\d+)"\} (\S+)', metrics)}


# -- --workers ---------------------------------------------------------------------------

WORKERS_LINE = r"listening on port (\d+) with 2 workers \(pids (\d+), (\d+)\)"
CLIENTS = 200
RATE = 200.0


class SeqClient:
    """One WebSocket client of the workers test: records (id, seq) and resumes with ?since=."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.got: List[Tuple[int, int]] = []  # (id, seq), across reconnects
        self.connections = 0
        self.closes: List[Optional[int]] = []
        self.gap_notices: List[str] = []
        self.open = asyncio.Event()

    @property
    def last_id(self) -> int:
        return self.got[-1][0] if self.got else 0

    async def run(self, port: int, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            url = f"ws://127.0.0.1:{port}/?format=json"
            if self.got:
                url += f"&since={self.last_id}"
            try:
                async with ws_connect(url) as ws:
                    self.connections += 1
                    self.open.set()
                    async for text in ws:
                        doc = json.loads(text)
                        if "gap" in doc:
                            self.gap_notices.append(text)
                            continue
                        self.got.append((doc["id"], int(doc["data"])))
                    self.closes.append(ws.close_code)
            except ConnectionClosed as exc:  # no close frame: 1006
                self.closes.append(exc.rcvd.code if exc.rcvd else 1006)
            except (OSError, InvalidHandshake, asyncio.TimeoutError):
                if stopping.is_set():
                    return
                await asyncio.sleep(0.05)  # the port is briefly unanswered: try again


def test_workers_share_the_port_resume_across_workers_and_restart(spawn, zmq_context, wait_until):
    publisher = Publisher(zmq_context, RATE).start()
    try:
        _run_workers_scenario(spawn, publisher, wait_until)
    finally:
        publisher.close()


def _run_workers_scenario(spawn, publisher: Publisher, wait_until) -> None:
    parent = spawn(sys.executable, "-m", "zmqws", "--sub", publisher.endpoint, "--workers", "2",
                   "--port", "0", "--format", "json", "--linger", "30", "--close-timeout", "1", "-v")
    match = parent.wait_for(WORKERS_LINE, timeout=20)
    port, first_pids = int(match.group(1)), {int(match.group(2)), int(match.group(3))}
    assert set(children_of(parent.pid)) >= first_pids

    clients = [SeqClient(i) for i in range(CLIENTS)]
    timeline: Dict[str, object] = {}

    async def scenario() -> None:
        stopping = asyncio.Event()
        tasks = [asyncio.create_task(c.run(port, stopping)) for c in clients]
        loop = asyncio.get_running_loop()

        async def until(predicate, timeout: float, what: str) -> None:
            deadline = loop.time() + timeout
            while True:
                done = predicate()
                if asyncio.iscoroutine(done):
                    done = await done
                if done:
                    return
                if loop.time() > deadline:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                         f"{timeline}; log:\n{parent.output()[-2000:]}")
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(asyncio.gather(*(c.open.wait() for c in clients)), 30)
            # Every client receives (its worker is subscribed), then the common start point:
            # the first message published after that, which every client must see.
            await until(lambda: all(c.got for c in clients), 15, "a first message on every client")
            start_seq = publisher.next_seq
            await until(lambda: all(c.got[-1][1] >= start_seq for c in clients), 10,
                        "the fence message on every client")
            timeline["start_seq"] = start_seq

            # Both workers serve clients (/metrics sums the workers' snapshots, per worker too).
            # (a snapshot is up to a second old: wait until the answering worker sees them all)
            async def both_serving() -> bool:
                text = await loop.run_in_executor(None, get_metrics, port)
                per = per_worker(text, "zmqws_clients", 'transport="websocket"')
                timeline["per_worker"] = per
                total = re.search(r'^zmqws_clients\{transport="websocket"\} (\d+)$', text, re.M)
                return (set(per) == first_pids and sum(per.values()) == CLIENTS and all(per.values())
                        and total is not None and int(total.group(1)) == CLIENTS)
            await until(both_serving, 10, "both workers in /metrics with every client")
            per = timeline["per_worker"]

            # kill -9 one worker: its clients are dropped, reconnect with ?since= and resume.
            victim = min(first_pids)
            survivor = max(first_pids)
            dropped = per[victim]
            before = {c.index: c.connections for c in clients}
            os.kill(victim, signal.SIGKILL)
            await until(lambda: sum(c.connections - before[c.index] for c in clients) >= dropped,
                        15, f"the {dropped} clients of the killed worker to reconnect")
            moved = [c for c in clients if c.connections > before[c.index]]
            timeline["moved"] = len(moved)
            assert len(moved) == dropped, (len(moved), dropped)

            # The parent restarts the worker: a new pid appears in /metrics.
            new_pid_line = await loop.run_in_executor(
                None, lambda: parent.wait_for(r"worker \d \(pid %d\) exited with status -9; restarting"
                                              % victim, timeout=10))
            assert new_pid_line

            async def restarted() -> bool:
                text = await loop.run_in_executor(None, get_metrics, port)
                pids = set(per_worker(text, "zmqws_loop_turns_total")) - first_pids
                timeline["new_pids"] = pids
                return bool(pids) and pids <= set(children_of(parent.pid))
            await until(restarted, 15, "a new worker pid (a child of the parent) in /metrics")
            assert survivor in set(per_worker(get_metrics(port), "zmqws_loop_turns_total"))

            # Some more messages after the restart, then the end; every client has everything.
            mark = publisher.next_seq
            await until(lambda: all(c.got[-1][1] >= mark + 100 for c in clients), 15,
                        "100 more messages after the restart on every client")
            end_seq = publisher.stop()
            timeline["end_seq"] = end_seq
            await until(lambda: all(c.got[-1][1] >= end_seq for c in clients), 10,
                        "the last message on every client")
            timeline["survivor"] = survivor
        finally:
            stopping.set()
            timeline["children_before_stop"] = set(children_of(parent.pid))
            # SIGTERM to the parent: each worker closes its clients with 1001, then everything exits.
            parent.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            finally:
                for task in tasks:
                    task.cancel()

    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(scenario(), 80))
    timeline["seconds"] = time.monotonic() - t0

    # Exit 0, and nothing of the group left (workers, forwarder, any helper process).
    assert parent.popen.wait(15) == 0, parent.output()[-3000:]
    wait_until(lambda: not group_members(parent.pid), timeout=5, message="every worker to exit")
    for pid in timeline["children_before_stop"]:
        assert proc_stat(pid) is None, f"process {pid} survived the parent"
    assert "all workers stopped" in parent.output()

    start_seq, end_seq = timeline["start_seq"], timeline["end_seq"]
    expected_seqs = list(range(start_seq, end_seq + 1))
    offsets = set()
    for c in clients:
        tail = [(i, s) for i, s in c.got if s >= start_seq]
        seqs = [s for _, s in tail]
        assert seqs == expected_seqs, (
            f"client {c.index} ({c.connections} connections): "
            f"{len(seqs)} of {len(expected_seqs)}, first differences at "
            f"{next((k for k, (a, b) in enumerate(zip(seqs, expected_seqs)) if a != b), None)}")
        ids = [i for i, _ in tail]
        assert all(b == a + 1 for a, b in zip(ids, ids[1:])), f"client {c.index}: ids not contiguous"
        offsets.add(ids[0] - seqs[0])
        assert not c.gap_notices, (c.index, c.gap_notices)
        assert c.closes[-1] == 1001, (c.index, c.closes)
    # Ids agree across workers (the parent's forwarder stamps them): the same message has the
    # same id on every client, whichever worker(s) served it.
    assert len(offsets) == 1, offsets
    moved = [c for c in clients if c.connections > 1]
    assert len(moved) == timeline["moved"]
    assert all(1006 in c.closes for c in moved)
    print(f"workers scenario: {timeline}")


def test_workers_sigterm_to_the_whole_group_is_still_graceful(spawn, zmq_context, run_async,
                                                              wait_until):
    """systemd's default KillMode=control-group sends SIGTERM to every process of the unit; each
    worker then gets two (systemd's and the parent's): still one graceful stop, 1001 to all."""
    publisher = Publisher(zmq_context, 50.0).start()
    try:
        parent = spawn(sys.executable, "-m", "zmqws", "--sub", publisher.endpoint, "--workers", "2",
                       "--port", "0", "--close-timeout", "2")
        port = int(parent.wait_for(WORKERS_LINE, timeout=20).group(1))

        async def scenario() -> List[Optional[int]]:
            clients = [await ws_connect(f"ws://127.0.0.1:{port}/") for _ in range(40)]
            await asyncio.gather(*(asyncio.wait_for(ws.recv(), 10) for ws in clients))
            os.killpg(parent.pid, signal.SIGTERM)

            async def close_code(ws) -> Optional[int]:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    return ws.close_code
            return await asyncio.gather(*(close_code(ws) for ws in clients))

        codes = run_async(scenario(), timeout=30)
        assert parent.popen.wait(15) == 0, parent.output()[-3000:]
        assert codes == [1001] * len(codes), codes
        wait_until(lambda: not group_members(parent.pid), timeout=5, message="every process to exit")
    finally:
        publisher.close()


def _tls_upgrade_status(port: int, token: Optional[str]) -> int:
    """The status of a WebSocket opening handshake over TLS (any certificate accepted)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    path = "/" if token is None else f"/?token={token}"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            return int(sock.recv(64).split(b" ", 2)[1])


def test_workers_rebuild_their_tls_context_and_token_hook(spawn, zmq_context, tmp_path):
    """An SSL context and a token hook cannot be sent to a spawned worker: each worker builds
    them again from --certfile/--keyfile and --token-file, and serves wss:// with the tokens."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token *\n")
    publisher = Publisher(zmq_context, 20.0).start()
    try:
        parent = spawn(sys.executable, "-m", "zmqws", "--sub", publisher.endpoint, "--workers", "2",
                       "--port", "0", "--close-timeout", "1", "--certfile", str(cert), "--keyfile", str(key),
                       "--token-file", str(tokens))
        port = int(parent.wait_for(WORKERS_LINE, timeout=20).group(1))
        # The kernel spreads connections over both workers: 2 * 16 of them reach each one
        # but for a chance of 2 ** -15.
        assert {_tls_upgrade_status(port, "reader-token") for _ in range(16)} == {101}
        assert {_tls_upgrade_status(port, None) for _ in range(16)} == {401}
        parent.popen.send_signal(signal.SIGTERM)
        assert parent.popen.wait(15) == 0, parent.output()[-3000:]
    finally:
        publisher.close()


# -- nginx in front of a gateway ---------------------------------------------------------

NGINX_CONF = """\
# Generated by tests/test_scaleout.py; the same blocks as docs/deployment.md.
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    # "Connection: upgrade" when the client asks for an upgrade, else "close".
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream zmqws {{
        server 127.0.0.1:{upstream_port};
    }}

    server {{
        listen 127.0.0.1:{port};

        # WebSocket (and the page, /metrics, ...)
        location / {{
            proxy_pass http://zmqws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}

        # Server-Sent Events: no buffering, a long read timeout
        location /events {{
            proxy_pass http://zmqws;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 3600s;
        }}

        # Long-polling: held up to --poll-timeout (25 s) by the gateway
        location /poll {{
            proxy_pass http://zmqws;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def _check_three_transports(port: int, gw: Gateway, pub, run_async, wait_until) -> None:
    """Through the reverse proxy on ``port``: WebSocket, SSE and long-polling deliver."""
    # WebSocket through the proxy: the upgrade passes, every message arrives in order.
    async def websocket() -> List[dict]:
        async with ws_connect(f"ws://127.0.0.1:{port}/?topic=ws.&format=json") as ws:
            for i in range(20):
                pub.send_multipart([b"ws.x", b"m%d" % i])
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(20)]

    docs = run_async(websocket())
    assert [d["data"] for d in docs] == [f"m{i}" for i in range(20)]
    assert all(d["topic"] == "ws.x" for d in docs)

    # Server-Sent Events through the proxy: the stream is not buffered.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/events?topic=sse.&format=json")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/event-stream")
        wait_until(lambda: gw.stats.sse_connections == 1, message="the SSE stream in the gateway")
        for i in range(5):
            pub.send_multipart([b"sse.x", b"e%d" % i])
        events: List[dict] = []
        ids: List[int] = []
        while len(events) < 5:
            line = response.readline().decode()
            assert line, "the event stream ended"
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            elif line.startswith("id: "):
                ids.append(int(line[4:]))
        assert [e["data"] for e in events] == [f"e{i}" for i in range(5)]
        assert ids == [e["id"] for e in events]
    finally:
        conn.close()

    # Long-polling through the proxy: a held request is answered when a message comes; then a
    # poll with ?since= is answered at once from the history.
    held_before = gw.stats.polls_held
    result: Dict[str, object] = {}

    def poll(path: str) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            c.request("GET", path)
            r = c.getresponse()
            result["status"], result["body"] = r.status, json.loads(r.read())
        finally:
            c.close()

    waiter = threading.Thread(target=poll, args=("/poll?topic=poll.",))
    waiter.start()
    try:
        wait_until(lambda: gw.stats.polls_held == held_before + 1, message="the poll to be held")
        pub.send_multipart([b"poll.x", b"p0"])
    finally:
        waiter.join(15)
    assert not waiter.is_alive()
    assert result["status"] == 200
    first = result["body"]
    assert [d["data"] for d in first] == ["p0"]
    for i in (1, 2, 3):
        pub.send_multipart([b"poll.x", b"p%d" % i])
    wait_until(lambda: gw.last_id >= first[0]["id"] + 3, message="the gateway to take p1..p3")
    poll(f"/poll?topic=poll.&since={first[0]['id']}")
    assert [d["data"] for d in result["body"]] == ["p1", "p2", "p3"]



@pytest.fixture
def nginx(tmp_path):
    """``nginx(upstream_port)`` → the port of a real nginx proxying to it; stopped at teardown."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light or nginx)")
    started: List[Child] = []

    def start(upstream_port: int) -> int:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        # As root, nginx's worker would run as "nobody", which cannot enter pytest's tmp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, port=port,
                                          upstream_port=upstream_port))
        usage = subprocess.run([NGINX, "-h"], capture_output=True, text=True, timeout=10)
        early_log = ["-e", str(prefix / "error.log")] if "-e filename" in usage.stderr + usage.stdout else []
        child = Child([NGINX, *early_log, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
        started.append(child)
        try:
            wait_port(port, 10, child.popen)
        except AssertionError:
            errors = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            raise AssertionError(f"nginx did not start: {child.output()} {errors}") from None
        return port

    yield start
    for child in started:
        # SIGTERM is nginx's fast shutdown (SIGQUIT would wait for the open streams).
        child.stop()
        wait_group_gone(child.pid)


def test_nginx_proxies_websocket_sse_and_long_polling(nginx, make_gateway, pub, wait_subscribed,
                                                       run_async, wait_until, tmp_path):
    gw = make_gateway(pub.endpoint, poll_timeout=10.0)
    wait_subscribed(pub, gw)
    port = nginx(gw.port)

    _check_three_transports(port, gw, pub, run_async, wait_until)

    # Everything went through nginx: the upgrade (101), the stream and the polls.
    log = tmp_path / "nginx" / "access.log"  # a request is logged when it ends
    patterns = [r'"GET /\?topic=ws\.&format=json HTTP/1\.1" 101 ',
                r'"GET /events\?topic=sse\.&format=json HTTP/1\.1" 200 ',
                r'"GET /poll\?topic=poll\. HTTP/1\.1" 200 ',
                r'"GET /poll\?topic=poll\.&since=\d+ HTTP/1\.1" 200 ']
    wait_until(lambda: all(re.search(p, log.read_text()) for p in patterns), timeout=5,
               message="nginx's access log to show the upgrade, the stream and the polls")


HAPROXY = shutil.which("haproxy")

HAPROXY_CONF = """\
# Generated by tests/test_scaleout.py; the same blocks as docs/deployment.md.
global
    maxconn 4096                # HAProxy needs about 2 file descriptors per connection
    {extra_global}

defaults
    mode http
    timeout connect 5s
    timeout client 60s          # a client silent this long (no WebSocket: requests, SSE reads)
    timeout server 60s          # > --poll-timeout (25 s) and --sse-heartbeat (15 s)
    timeout http-request 10s
    timeout tunnel 1h           # WebSocket after the 101 (replaces client/server timeouts)
    timeout client-fin 5s
    {extra_defaults}

frontend zmqws_in
    bind 127.0.0.1:{port}
    default_backend zmqws

backend zmqws
    balance leastconn
    option forwardfor
    option httpchk GET /readyz
    http-check expect status 200
    server gw1 127.0.0.1:{upstream_port} check inter 2s
"""


@pytest.mark.parametrize("variant", ["default", "http-server-close"])
def test_haproxy_proxies_websocket_sse_and_long_polling(variant, make_gateway, pub, wait_subscribed,
                                                        run_async, wait_until, spawn, tmp_path):
    """The HAProxy configuration of docs/deployment.md (skipped when haproxy is missing)."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    gw = make_gateway(pub.endpoint, poll_timeout=10.0)
    wait_subscribed(pub, gw)
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(
        port=port, upstream_port=gw.port, extra_global="",
        extra_defaults="option http-server-close" if variant == "http-server-close" else ""))
    checked = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=10)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    haproxy = spawn(HAPROXY, "-db", "-f", str(conf))
    wait_port(port, 10, haproxy.popen)
    _check_three_transports(port, gw, pub, run_async, wait_until)


# -- python -m zmqws.proxy ---------------------------------------------------------------


class ProxyPublisher:
    """The publishers' side of the proxy: an XPUB socket connected to the proxy's XSUB, so that
    the subscriptions the proxy forwards upstream can be seen (``b"\\x01" + prefix``)."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.subscriptions: List[bytes] = []

    def send(self, payload: bytes) -> None:  # for conftest's wait_subscribed
        self.socket.send(payload)

    def send_multipart(self, parts) -> None:
        self.socket.send_multipart(parts)

    def drain(self) -> List[bytes]:
        """Subscription messages received so far (kept in ``subscriptions``)."""
        while self.socket.poll(0, zmq.POLLIN):
            self.subscriptions.append(self.socket.recv())
        return self.subscriptions

    def wait_subscription(self, message: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while message not in self.drain():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{message!r} did not arrive upstream within {timeout} s; "
                                     f"seen {self.subscriptions!r}")
            self.socket.poll(int(remaining * 1000) + 1, zmq.POLLIN)

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
def zmqws_proxy(spawn, zmq_context):
    """``zmqws_proxy(*options)`` → (ProxyPublisher, the XPUB endpoint gateways connect to)."""
    publishers: List[ProxyPublisher] = []

    def start(*options: str) -> Tuple[ProxyPublisher, str, Child]:
        xsub, xpub = free_port(), free_port()
        child = spawn(sys.executable, "-m", "zmqws.proxy", "--xsub", f"tcp://127.0.0.1:{xsub}",
                      "--xpub", f"tcp://127.0.0.1:{xpub}", *options)
        child.wait_for(r"forwarding \[", timeout=10)
        publisher = ProxyPublisher(zmq_context, f"tcp://127.0.0.1:{xsub}")
        publishers.append(publisher)
        return publisher, f"tcp://127.0.0.1:{xpub}", child

    yield start
    for publisher in publishers:
        publisher.close()


class Inbox:
    """A WebSocket client (json format) whose messages a task reads into a queue."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.queue: "asyncio.Queue[dict]" = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                self.queue.put_nowait(json.loads(text))
        except ConnectionClosed:
            pass

    async def get(self, timeout: float = 5.0) -> dict:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def take(self, count: int, timeout: float = 5.0) -> List[dict]:
        return [await self.get(timeout) for _ in range(count)]

    def pending(self) -> List[dict]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


async def fence(publisher: ProxyPublisher, inboxes: List[Inbox], topic: bytes,
                timeout: float = 10.0) -> None:
    """Publish probes on ``topic`` until each client got one, then a fence message, and read
    every client up to it: what is published next reaches every client."""
    deadline = time.monotonic() + timeout
    while not all(inbox.queue.qsize() for inbox in inboxes):
        if time.monotonic() > deadline:
            raise AssertionError(f"probes did not reach every client within {timeout} s")
        publisher.send_multipart([topic, b"probe"])
        await asyncio.sleep(0.02)
    publisher.send_multipart([topic, b"fence"])
    for inbox in inboxes:
        while (await inbox.get(timeout))["data"] != "fence":
            pass


async def collect(url: str, count: int, opened: asyncio.Event, timeout: float = 10.0) -> List[str]:
    async with ws_connect(url) as ws:
        opened.set()
        return [await asyncio.wait_for(ws.recv(), timeout) for _ in range(count)]


def test_proxy_fans_out_to_two_gateways_and_forwards_subscriptions_upstream(
        zmqws_proxy, make_gateway, wait_subscribed, run_async):
    publisher, xpub, proxy = zmqws_proxy()
    # linger=0: a prefix no client wants is unsubscribed at once (the fence's "everything" too).
    gw_a = make_gateway(xpub, linger=0)
    gw_b = make_gateway(xpub, linger=0)
    for gw in (gw_a, gw_b):
        wait_subscribed(publisher, gw)  # both SUB sockets connected through the proxy

    # Four clients (two per gateway) want "common."; once the publisher sees that subscription,
    # the proxy carries it, and one PUB -> XSUB -> XPUB -> SUB path per gateway keeps order.
    async def scenario() -> List[List[str]]:
        opened = [asyncio.Event() for _ in range(4)]
        urls = [f"ws://127.0.0.1:{gw.port}/?topic=common." for gw in (gw_a, gw_a, gw_b, gw_b)]
        tasks = [asyncio.create_task(collect(url, 300, ev)) for url, ev in zip(urls, opened)]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in opened)), 10)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, publisher.wait_subscription, b"\x01common.")
        await asyncio.sleep(0.2)  # the proxy's XPUB has both gateways' subscriptions by now
        for i in range(300):
            publisher.send_multipart([b"common.x", b"%d" % i])
            if i % 50 == 0:
                await asyncio.sleep(0)
        return await asyncio.wait_for(asyncio.gather(*tasks), 15)

    received = run_async(scenario(), timeout=30)
    for got in received:
        assert got == [str(i) for i in range(300)]

    # A topic that only gateway B wants reaches the publisher only once a client of B wants it.
    assert b"\x01only-b." not in publisher.drain()
    assert gw_a.subscriptions() == [] and gw_b.subscriptions() == []

    async def only_b() -> List[str]:
        async with ws_connect(f"ws://127.0.0.1:{gw_a.port}/?topic=common.") as on_a, \
                ws_connect(f"ws://127.0.0.1:{gw_b.port}/?topic=only-b.") as on_b:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, publisher.wait_subscription, b"\x01only-b.")
            assert gw_b.subscriptions() == [b"only-b."]
            assert gw_a.subscriptions() == [b"common."]
            publisher.send_multipart([b"only-b.x", b"for B"])
            publisher.send_multipart([b"common.x", b"for A"])
            got_b = await asyncio.wait_for(on_b.recv(), 5)
            got_a = await asyncio.wait_for(on_a.recv(), 5)
            return [got_b, got_a]

    (got_b, got_a) = run_async(only_b(), timeout=20)
    assert (got_b, got_a) == ("for B", "for A")
    # Gateway A never took the only-b. message: the filtering happened upstream of it.
    assert [m.payload for m in gw_a.history.after(0) if m.topic.startswith(b"only-b.")] == []
    assert [m.payload for m in gw_b.history.after(0) if m.topic.startswith(b"only-b.")] == [b"for B"]
    # The client of B left: with linger=0 the proxy forwards the unsubscription upstream.
    publisher.wait_subscription(b"\x00only-b.")
    assert proxy.popen.poll() is None


# The gateways behind --stamp run with their default first id (first_id=None: conftest's
# make_gateway otherwise sets 1), as `zmqws --upstream-ids` does.


def test_proxy_stamp_gives_the_same_ids_on_every_gateway_and_resume_works_on_any(
        zmqws_proxy, make_gateway, wait_subscribed, run_async):
    publisher, xpub, _proxy = zmqws_proxy("--stamp")
    gw_a = make_gateway(xpub, upstream_ids=True, first_id=None)
    gw_b = make_gateway(xpub, upstream_ids=True, first_id=None)
    for gw in (gw_a, gw_b):
        wait_subscribed(publisher, gw)

    async def scenario() -> Tuple[List[dict], List[dict], List[dict]]:
        async with ws_connect(f"ws://127.0.0.1:{gw_a.port}/?topic=s.&format=json") as ws_a, \
                ws_connect(f"ws://127.0.0.1:{gw_b.port}/?topic=s.&format=json") as ws_b:
            on_a, on_b = Inbox(ws_a), Inbox(ws_b)
            await fence(publisher, [on_a, on_b], b"s.x")
            for i in range(100):
                publisher.send_multipart([b"s.x", b"%d" % i])
            docs_a, docs_b = await on_a.take(100), await on_b.take(100)
        # A client of A that saw up to the 50th message resumes on B: the rest from B's
        # history, with the same ids, then live.
        since = docs_a[49]["id"]
        async with ws_connect(f"ws://127.0.0.1:{gw_b.port}/?topic=s.&format=json&since={since}") as ws:
            resumed = Inbox(ws)
            publisher.send_multipart([b"s.x", b"live"])
            return docs_a, docs_b, await resumed.take(51)

    docs_a, docs_b, resumed = run_async(scenario(), timeout=30)
    assert [d["data"] for d in docs_a] == [str(i) for i in range(100)]
    assert docs_a == docs_b  # same data, same ids, same topics
    ids = [d["id"] for d in docs_a]
    assert ids == list(range(ids[0], ids[0] + 100))  # one id per message, in order
    assert resumed[:50] == docs_a[50:]
    assert resumed[50]["data"] == "live" and resumed[50]["id"] == ids[-1] + 1


def test_proxy_stamp_resume_on_a_new_gateway_reports_the_gap(zmqws_proxy, make_gateway,
                                                             wait_subscribed, run_async):
    """A gateway that never took the ids after ``since`` (a new gateway, a restarted worker)
    says so with a gap notice; it must not resume silently."""
    publisher, xpub, _proxy = zmqws_proxy("--stamp")
    gw_a = make_gateway(xpub, upstream_ids=True, first_id=None)
    wait_subscribed(publisher, gw_a)

    async def scenario() -> Tuple[List[dict], List[dict], List[dict]]:
        async with ws_connect(f"ws://127.0.0.1:{gw_a.port}/?topic=s.&format=json") as ws_a:
            on_a = Inbox(ws_a)
            await fence(publisher, [on_a], b"s.x")
            for i in range(20):
                publisher.send_multipart([b"s.x", b"%d" % i])
            docs = await on_a.take(20)
            gw_c = make_gateway(xpub, upstream_ids=True, first_id=None)  # new: it never saw those 20
            since = docs[9]["id"]  # the client saw up to the 10th message on A
            url = f"ws://127.0.0.1:{gw_c.port}/?topic=s.&format=json&since={since}"
            async with ws_connect(url) as ws_c:
                on_c = Inbox(ws_c)
                # C subscribes upstream now; publish until C takes something.
                while on_c.queue.empty():
                    publisher.send_multipart([b"s.x", b"later"])
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)
                return docs, on_a.pending(), on_c.pending()

    docs, later_a, got_c = run_async(scenario(), timeout=30)
    since = docs[9]["id"]
    assert "gap" in got_c[0], got_c[:3]
    first, last = got_c[0]["gap"]
    assert first == since + 1 and last >= docs[-1]["id"]
    rest = got_c[1:]
    assert rest and all(d["data"] == "later" for d in rest)
    assert last == rest[0]["id"] - 1  # the gap ends just before the first id C took
    # and what C delivers is what A delivered, with the same ids
    assert rest == [d for d in later_a if d["id"] >= rest[0]["id"]]


def test_proxy_stamp_resume_on_a_gateway_behind_gives_no_duplicates(zmqws_proxy, make_gateway,
                                                                    wait_subscribed, run_async):
    """A client resumes on a gateway that has not yet taken the ids it saw elsewhere: it gets
    every later message once, none it had (the gateway catches up first)."""
    publisher, xpub, _proxy = zmqws_proxy("--stamp")
    gw_a = make_gateway(xpub, upstream_ids=True, first_id=None)
    gw_b = make_gateway(xpub, upstream_ids=True, first_id=None, drain_budget=1)  # one message per loop turn
    for gw in (gw_a, gw_b):
        wait_subscribed(publisher, gw)

    async def scenario() -> Tuple[List[dict], List[dict]]:
        async with ws_connect(f"ws://127.0.0.1:{gw_a.port}/?topic=s.&format=json") as ws_a, \
                ws_connect(f"ws://127.0.0.1:{gw_b.port}/?topic=s.&format=json") as ws_b:
            on_a, on_b = Inbox(ws_a), Inbox(ws_b)
            await fence(publisher, [on_a, on_b], b"s.x")
            # B falls behind: its loop is busy for a moment while 300 messages come.
            gw_b.loop.call_soon_threadsafe(lambda: time.sleep(0.5))
            await asyncio.sleep(0.05)
            for i in range(300):
                publisher.send_multipart([b"s.x", b"%d" % i])
            docs = await on_a.take(300)
            since = docs[-1]["id"]  # the client saw everything on A, then moves to B
            url = f"ws://127.0.0.1:{gw_b.port}/?topic=s.&format=json&since={since}"
            async with ws_connect(url) as ws:
                moved = Inbox(ws)
                publisher.send_multipart([b"s.x", b"live"])
                got = [await moved.get()]
                await asyncio.sleep(0.2)
                return docs, got + moved.pending()

    docs, got = run_async(scenario(), timeout=30)
    assert [d["data"] for d in got] == ["live"], [d["data"] for d in got][:5]
    assert got[0]["id"] == docs[-1]["id"] + 1


@pytest.mark.parametrize("mode", [(), ("--stamp",), ("--capture", "CAPTURE")],
                         ids=["plain", "stamp", "capture"])
def test_proxy_forwards_and_stops_on_sigterm_while_busy(zmqws_proxy, zmq_context, mode):
    """Messages flow (and with --capture a copy too); SIGTERM in the middle of a stream stops
    the proxy at once with status 0 (libzmq's proxy loop on the main thread could miss it)."""
    capture = f"tcp://127.0.0.1:{free_port()}"
    publisher, xpub, proxy = zmqws_proxy(*[capture if m == "CAPTURE" else m for m in mode])
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(xpub)
    subs = [sub]
    if "CAPTURE" in mode:
        copy = zmq_context.socket(zmq.SUB)
        copy.setsockopt(zmq.LINGER, 0)
        copy.setsockopt(zmq.SUBSCRIBE, b"")
        copy.connect(capture)
        subs.append(copy)
    publisher.wait_subscription(b"\x01")
    deadline = time.monotonic() + 10
    for sock in subs:  # the slow joiner: send until each has a message
        while not sock.poll(10, zmq.POLLIN):
            assert time.monotonic() < deadline, "nothing came through the proxy"
            publisher.send_multipart([b"t", b"x"])
        parts = sock.recv_multipart()
        while len(parts) == 1 and parts[0][:1] in (b"\x00", b"\x01"):
            # libzmq's zmq.proxy also copies the subscriptions (b"\x01" + prefix) to the capture
            parts = sock.recv_multipart()
        assert parts[0] == b"t" and parts[-1] == b"x", (mode, parts, proxy.output())
        assert len(parts) == (3 if "--stamp" in mode else 2)  # [topic, id, payload] with --stamp
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            for _ in range(200):
                publisher.send_multipart([b"t", b"x" * 32])
            time.sleep(0.001)

    pumping = threading.Thread(target=pump)
    pumping.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        proxy.popen.send_signal(signal.SIGTERM)
        try:
            status = proxy.popen.wait(5)
        except subprocess.TimeoutExpired:
            status = "still running 5 s after SIGTERM"
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        pumping.join(5)
    assert status == 0, proxy.output()
    assert elapsed < 2.0
    wait_group_gone(proxy.pid)


def test_workers_with_upstream_ids_keep_the_ids_of_the_stamping_proxy(zmqws_proxy, make_gateway,
                                                                      wait_subscribed, spawn, run_async):
    """publishers -> zmqws.proxy --stamp -> a gateway and a `--workers 2 --upstream-ids` group:
    the same message has the same id everywhere, so a client may resume on either."""
    publisher, xpub, _proxy = zmqws_proxy("--stamp")
    gw = make_gateway(xpub, upstream_ids=True, first_id=None)
    wait_subscribed(publisher, gw)
    group = spawn(sys.executable, "-m", "zmqws", "--sub", xpub, "--workers", "2", "--upstream-ids",
                  "--port", "0", "--format", "json", "--close-timeout", "1")
    port = int(group.wait_for(WORKERS_LINE, timeout=20).group(1))

    async def scenario() -> Tuple[List[dict], List[dict]]:
        async with ws_connect(f"ws://127.0.0.1:{gw.port}/?topic=s.&format=json") as ws_a, \
                ws_connect(f"ws://127.0.0.1:{port}/?topic=s.") as ws_b:
            on_a, on_b = Inbox(ws_a), Inbox(ws_b)
            await fence(publisher, [on_a, on_b], b"s.x")
            for i in range(50):
                publisher.send_multipart([b"s.x", b"%d" % i])
            return await on_a.take(50), await on_b.take(50)

    docs_a, docs_b = run_async(scenario(), timeout=30)
    assert [d["data"] for d in docs_b] == [str(i) for i in range(50)]
    assert docs_a == docs_b


def test_proxy_plain_mode_keeps_a_burst(zmqws_proxy, zmq_context):
    """50 000 messages at full rate to a subscriber slower than the proxy: none is dropped
    (the forwarder's queues are as deep as --stamp's, not libzmq's default 1000)."""
    publisher, xpub, _proxy = zmqws_proxy()
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(xpub)
    publisher.wait_subscription(b"\x01")
    deadline = time.monotonic() + 10
    while not sub.poll(10, zmq.POLLIN):  # the slow joiner
        assert time.monotonic() < deadline, "nothing came through the proxy"
        publisher.send_multipart([b"probe", b""])
    publisher.send_multipart([b"fence", b""])
    while sub.recv_multipart()[0] != b"fence":
        pass
    n = 50_000
    payload = b"x" * 64
    for i in range(n):
        publisher.send_multipart([b"t", b"%d" % i, payload])
    got = 0
    while got < n and sub.poll(2000, zmq.POLLIN):
        parts = sub.recv_multipart()
        assert parts[1] == b"%d" % got, (got, parts[:2])  # in order, none missing
        got += 1
    assert got == n


def test_proxy_stamp_long_poll_on_a_new_gateway_reports_the_gap(zmqws_proxy, make_gateway,
                                                                 wait_subscribed, run_async):
    """The same for a long-poll: held until the new gateway takes a message, then answered
    with a gap notice first (the ids it never saw), then what it took."""
    publisher, xpub, _proxy = zmqws_proxy("--stamp")
    gw_a = make_gateway(xpub, upstream_ids=True, first_id=None)
    wait_subscribed(publisher, gw_a)

    async def seen_on_a() -> List[dict]:
        async with ws_connect(f"ws://127.0.0.1:{gw_a.port}/?topic=s.&format=json") as ws_a:
            on_a = Inbox(ws_a)
            await fence(publisher, [on_a], b"s.x")
            for i in range(20):
                publisher.send_multipart([b"s.x", b"%d" % i])
            return await on_a.take(20)

    docs = run_async(seen_on_a(), timeout=30)
    since = docs[9]["id"]
    gw_c = make_gateway(xpub, upstream_ids=True, first_id=None)  # it never saw those 20
    result: Dict[str, object] = {}

    def poll() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gw_c.port, timeout=15)
        try:
            conn.request("GET", f"/poll?topic=s.&since={since}")
            response = conn.getresponse()
            result["status"], result["body"] = response.status, json.loads(response.read())
        finally:
            conn.close()

    waiter = threading.Thread(target=poll)
    waiter.start()
    deadline = time.monotonic() + 10
    while waiter.is_alive() and time.monotonic() < deadline:
        publisher.send_multipart([b"s.x", b"later"])  # C subscribes when the poll comes
        waiter.join(0.05)
    waiter.join(5)
    assert result.get("status") == 200, result
    body = result["body"]
    assert "gap" in body[0], body[:3]
    first, last = body[0]["gap"]
    assert first == since + 1 and last >= docs[-1]["id"]
    assert body[1:] and all(d["data"] == "later" for d in body[1:])
    assert last == body[1]["id"] - 1
