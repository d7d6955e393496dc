"""Every attack tried on the gateway, one test per attack (issue: hostile input).

Each test plays the attacker against a real gateway on 127.0.0.1 and asserts
the specified answer (an HTTP status, a close code, a Socket.IO
CONNECT_ERROR) and that nothing else was harmed: the bound held, the loop
kept answering, other clients kept their messages.  Each one fails on the
code before the fix.  The numbers follow the findings in
``docs/reliability.md`` ("Hostile input").
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import List

from conftest import RawWebSocket, http_exchange, upgrade_request, wait_until

# -- 1. Socket.IO topic rights bypass --------------------------------------------------------


# -- 2. Pipelined HTTP requests queue responses without bound ------------------------------

def _http_client_of(gateway, predicate=lambda client: True):
    """The gateway's client objects (loop-thread data read from the test: a snapshot)."""
    return [c for c in list(gateway._clients.values()) if predicate(c)]


def _read_responses(sock: socket.socket, count: int, timeout: float = 10.0) -> List[bytes]:
    """Read ``count`` complete responses (each has a Content-Length) or until EOF; their heads."""
    data = b""
    heads: List[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while len(heads) < count and time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
            if len(rest) >= length:
                heads.append(head)
                data = rest[length:]
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return heads


def test_2_pipelined_requests_never_read_stay_bounded(make_gateway):
    max_queue = 256 << 10
    gateway = make_gateway(None, max_queue=max_queue)
    one = len(http_exchange(gateway.port, b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n")[2]) + 512
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gateway.port))
        sock.sendall(b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2000)  # ~70 KB, never read
        wait_until(lambda: gateway.stats.pipeline_paused >= 1, message="reading paused")
        time.sleep(0.3)
        queued = max(c.session.out_bytes for c in _http_client_of(gateway))
        assert queued <= max_queue + one, queued
        status, _, _ = http_exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 200


def test_2_pipelining_client_gets_every_answer_then_the_cap_closes(make_gateway):
    gateway = make_gateway(None, max_queue=64 << 10, max_requests_per_connection=60)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /zmqws.js HTTP/1.1\r\nHost: localhost\r\n\r\n" * 80)
        heads = _read_responses(sock, 80)
        assert len(heads) == 60  # the 60th said "Connection: close", then the server closed
        assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
        assert b"Connection: close" in heads[-1] and b"Connection: keep-alive" in heads[-2]
        sock.settimeout(5)
        assert sock.recv(1) == b""
    assert gateway.stats.pipeline_paused >= 1 and gateway.stats.requests_capped == 1


# -- 3. Resume replay past --max-queue -------------------------------------------------------


# -- 4. Engine.IO sessions without bound -----------------------------------------------------


# -- 5. Topics per client without bound, quadratic bookkeeping -------------------------------


# -- 6. One exception in the send path wedges routes -----------------------------------------


# -- 7. accept() at the file-descriptor limit -------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthz(port: int) -> int:
    return http_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")[0]


def test_7_descriptor_limit_neither_spins_nor_floods_the_log(spawn):
    low_limit = ("import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
                 "runpy.run_module('zmqws', run_name='__main__', alter_sys=True)")
    process = spawn(sys.executable, "-c", low_limit, "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")).group(1))
    sockets = []
    try:
        for _ in range(100):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        before = _cpu_seconds(process.popen.pid)
        time.sleep(2)
        assert _cpu_seconds(process.popen.pid) - before < 0.5
        assert process.lines["stderr"].qsize() < 20
        for sock in sockets[:50]:
            sock.close()
        assert _healthz(port) == 200
    finally:
        for sock in sockets:
            sock.close()


class _FullListener:
    """A listening socket whose accept() fails with EMFILE while the gateway holds its reserve
    descriptor: what a process at its descriptor limit sees."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.real = gateway._listener
        self.full = True

    def accept(self):
        if self.full and self.gateway._reserve_fd is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_7_accept_at_the_limit_refuses_and_rests(make_gateway):
    gateway = make_gateway(None)
    listener = gateway._listener = _FullListener(gateway)
    turns = gateway.loop.turns
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            assert sock.recv(12) == b"HTTP/1.1 503"  # refused at once, before any request
    assert gateway.loop.turns - turns < 200  # no busy loop on the ready listener
    assert gateway.stats.refused == 3 and gateway.stats.accept_errors == 3
    listener.full = False
    wait_until(lambda: gateway._reserve_fd is not None, message="the reserve descriptor back")
    assert _healthz(gateway.port) == 200


# -- 8. A bad Socket.IO recovery offset ------------------------------------------------------


# -- 9. Malformed input and tracebacks -------------------------------------------------------


# -- 10. Writing upstream outside one's rights ----------------------------------------------


# -- 11. /metrics with --token ----------------------------------------------------------------

def test_11_metrics_needs_the_token(make_gateway):
    from zmqws.auth import token_authenticator
    from zmqws.__main__ import build_gateway, build_parser

    def metrics(port: int, auth: str = "", query: str = "") -> tuple:
        request = f"GET /metrics{query} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n".encode()
        return http_exchange(port, request)[:2]

    clients_token = make_gateway(None, authenticate=token_authenticator("client-secret"))
    status, headers = metrics(clients_token.port)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert metrics(clients_token.port, "Authorization: Bearer client-secret\r\n")[0] == 200
    own_token = make_gateway(None, authenticate=token_authenticator("client-secret"),
                             metrics_token="scrape-secret")
    assert metrics(own_token.port, "Authorization: Bearer client-secret\r\n")[0] == 401
    assert metrics(own_token.port, query="?token=scrape-secret")[0] == 200
    assert own_token.stats.forbidden == 1
    # The command line: --token protects /metrics too.
    args = build_parser().parse_args(["--demo", "--port", "0", "--token", "t0ken"])
    cli = build_gateway(args, [], first_id=1, close_timeout=1.0).start()
    try:
        assert metrics(cli.port)[0] == 401
        assert metrics(cli.port, "Authorization: Bearer t0ken\r\n")[0] == 200
    finally:
        cli.stop(timeout=1.0)


# -- 12. DNS rebinding and cross-site WebSocket ----------------------------------------------

def _status(port: int, path: str, host: str, method: str = "GET", extra: str = "", body: bytes = b"") -> int:
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body:
        request += f"Content-Length: {len(body)}\r\n"
    return http_exchange(port, request.encode() + b"\r\n" + body)[0]


def test_12_loopback_gateway_answers_its_own_names_only(make_gateway):
    gateway = make_gateway(None)
    port = gateway.port
    for path in ("/", "/healthz", "/poll?since=0", "/events", "/socket.io/?EIO=4&transport=polling"):
        assert _status(port, path, "evil.example") == 403, path
        assert _status(port, path, f"evil.example:{port}") == 403, path
    assert http_exchange(port, upgrade_request(host=f"evil.example:{port}"))[0] == 403
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST",
                 "127.0.0.1:8443"):  # a local proxy's port
        assert _status(port, "/healthz", host) == 200, host
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(upgrade_request(host=f"localhost:{port}"))
        assert sock.recv(12) == b"HTTP/1.1 101"
    assert gateway.stats.host_refused == 11
    named = make_gateway(None, allow_hosts=["app.example", "other.example:8443"])
    assert _status(named.port, "/healthz", "app.example:443") == 200
    assert _status(named.port, "/healthz", "other.example:8443") == 200
    assert _status(named.port, "/healthz", "other.example") == 403
    assert _status(named.port, "/healthz", f"localhost:{named.port}") == 200
    assert _status(named.port, "/healthz", "evil.example") == 403


def test_12_engineio_requests_with_a_sid_keep_the_origin_check(make_gateway):
    gateway = make_gateway(None, allow_origins=["http://good.example"])
    port = gateway.port
    good = "Origin: http://good.example\r\n"
    status, _, body = http_exchange(port, f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                                          f"Host: localhost\r\n{good}\r\n".encode())
    assert status == 200
    sid = json.loads(body[1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    evil = "Origin: http://evil.example\r\n"
    assert _status(port, path, "localhost", "POST", evil, b"40") == 403
    assert _status(port, path, "localhost", "GET", evil) == 403
    assert _status(port, path, "localhost", "POST", good, b"40") == 200


# -- 13. Loss nobody is told about ------------------------------------------------------------


# -- 14. Bodies, dotfiles, static reads, hung workers, far-future since ---------------------

def test_14a_bodies_only_where_one_is_taken(make_gateway):
    gateway = make_gateway(None)
    for head in (b"POST /poll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 900000\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
                 b"GET /events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(head)  # the body never comes: the answer must not wait for it
            assert sock.recv(12) == b"HTTP/1.1 413", head
    assert gateway.stats.bodies_refused == 3
    status, _, body = http_exchange(gateway.port, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                                                  b"Host: localhost\r\n\r\n")
    sid = json.loads(body[1:])["sid"]
    assert _status(gateway.port, f"/socket.io/?EIO=4&transport=polling&sid={sid}", "localhost",
                   "POST", "", b"40") == 200


def _get(port: int, path: str) -> tuple:
    status, _, body = http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return status, body


def test_14b_static_dir_hides_dotfiles_and_reads_off_the_loop(make_gateway, tmp_path, monkeypatch):
    import zmqws.files

    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".htpasswd").write_text("admin:x")
    os.symlink(tmp_path / ".env", tmp_path / "env.txt")  # a visible name for a dotfile
    page = tmp_path / "page.txt"
    page.write_text("one")
    opened: List[str] = []

    def counting_open(*args, **kwargs):
        opened.append(threading.current_thread().name)
        return open(*args, **kwargs)

    monkeypatch.setattr(zmqws.files, "open", counting_open, raising=False)
    gateway = make_gateway(None, static_dir=str(tmp_path))
    for path in ("/.env", "/.git/config", "/sub/.htpasswd", "/env.txt", "/%2eenv"):
        assert _get(gateway.port, path)[0] == 404, path
    for _ in range(20):
        assert _get(gateway.port, "/page.txt") == (200, b"one")
    assert len(opened) == 1 and opened[0].startswith("zmqws-files")  # one read, off the loop
    page.write_text("two!")
    os.utime(page, (time.time() + 5, time.time() + 5))
    wait_until(lambda: _get(gateway.port, "/page.txt") == (200, b"two!"), message="the new content")
    assert len(opened) == 2 and opened[1].startswith("zmqws-files")


def test_14c_a_hung_worker_is_killed_and_replaced(spawn):
    parent = spawn(sys.executable, "-m", "zmqws", "--demo", "--workers", "2", "--port", "0",
                   "--worker-timeout", "2", "--close-timeout", "1")
    match = parent.wait_for_line("stderr", r"listening on port (\d+) with 2 workers \(pids (\d+), (\d+)\)",
                                 timeout=30)
    port, hung = int(match.group(1)), int(match.group(2))
    os.kill(hung, signal.SIGSTOP)  # its loop answers nothing any more (nor does it die)
    try:
        parent.wait_for_line("stderr", rf"pid {hung}\) is hung", timeout=15)
        parent.wait_for_line("stderr", rf"pid {hung}\) exited with status -9; restarting", timeout=5)
        assert _healthz(port) == 200
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
        parent.popen.send_signal(signal.SIGTERM)
        parent.popen.wait(15)


def test_14d_since_beyond_the_last_id_is_a_gap_not_a_wait(make_gateway):
    gateway = make_gateway(None)
    gateway.publish("old", "t")
    wait_until(lambda: gateway.last_id >= 1, message="a message taken")
    far = 10 ** 15
    status, headers, body = http_exchange(gateway.port, f"GET /poll?since={far} HTTP/1.1\r\n"
                                                        f"Host: localhost\r\n\r\n".encode())
    last = int(headers["x-zmqws-last-id"])
    assert status == 200 and json.loads(body) == [{"gap": [last + 1, far]}]
    ws = RawWebSocket(gateway.port)
    try:
        ws.handshake(f"/?since={far}&format=json")
        _, _, notice = ws.recv_frame()
        assert json.loads(notice)["gap"][1] == far
        gateway.publish("new", "t")
        _, _, message = ws.recv_frame()
        assert json.loads(message)["data"] == "new"
    finally:
        ws.close()


# -- The token file ----------------------------------------------------------------------------
