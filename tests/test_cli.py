"""Subprocess tests of the command line (``python -m zmqws``) and of examples/echo_server.py."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from zmqws.cli import build_parser, config_from_args, parse_args
from zmqws.gateway import Gateway

from conftest import sigint_not_ignored, wait_until, ws_connect

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")


def run_cli(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqws", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


# -- argument handling ---------------------------------------------------------------------


def test_help_mentions_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    options = [opt for action in build_parser()._actions for opt in action.option_strings
               if opt.startswith("--")]
    assert len(options) >= 18
    for option in options:
        assert option in result.stdout, option


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"zmqws \d+\.\d+\.\d+\s*", result.stdout)


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if "error:" in line]


def test_no_source_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("zmqws: error:"), result.stderr
    assert "--sub" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ["--demo", "--port", "70000"],
    ["--demo", "--max-queue", "lots"],
    ["--demo", "--ping-interval", "-1"],
    ["--demo", "--payload", "json"],
], ids=["port-range", "size", "negative-seconds", "choice"])
def test_bad_option_values_are_usage_errors(args):
    result = run_cli(*args)
    assert result.returncode == 2
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("zmqws: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_endpoint_is_one_line_error():
    result = run_cli("--sub", "nonsense://x", "--port", "0")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zmqws: error:")
    assert "nonsense://x" in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_error(busy_port):
    result = run_cli("--sub", "tcp://127.0.0.1:5", "--port", str(busy_port))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zmqws: error:")
    assert "address already in use" in lines[0]
    assert str(busy_port) in lines[0]


def test_port_in_use_with_demo_is_one_line_error(busy_port):
    result = run_cli("--demo", "--port", str(busy_port))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zmqws: error:"), result.stderr


# -- a running gateway ------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_serves_messages_and_stops_on_signal(spawn, run_async, signum):
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))
    process.wait_for_line("stdout", re.compile(rf"open http://127\.0\.0\.1:{port}/"))

    async def main():
        async with ws_connect(port) as ws:
            seqs = []
            for _ in range(3):
                message = json.loads(await ws.recv())
                assert isinstance(message["seq"], int)
                seqs.append(message["seq"])
            assert seqs == sorted(seqs)
            sent_at = time.monotonic()
            process.popen.send_signal(signum)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            return sent_at

    sent_at = run_async(main())
    returncode = process.popen.wait(timeout=5)
    assert returncode == 0
    assert time.monotonic() - sent_at < 5
    stderr = process.rest("stderr")
    assert "Traceback" not in stderr
    assert "stopped after" in stderr


def _signal_at_listening(signum: int) -> "tuple[int, str]":
    """Start the demo, send ``signum`` the instant the "listening" line is out; (code, stderr)."""
    with sigint_not_ignored():
        popen = subprocess.Popen([sys.executable, "-m", "zmqws", "--demo", "--port", "0"], cwd=ROOT,
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        fd = popen.stderr.fileno()
        data = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in data:  # no reader thread: signal with the least delay
            remaining = deadline - time.monotonic()
            assert remaining > 0, data
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, data
                data += chunk
        popen.send_signal(signum)
        _out, rest = popen.communicate(timeout=5)
        return popen.returncode, (data + rest).decode("utf-8", "replace")
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(5)
        popen.stderr.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_right_after_startup_is_a_clean_stop(signum):
    """A signal as soon as the "listening" line is out (before run() waits) still stops cleanly.

    Before the fix, the KeyboardInterrupt raised by the signal escaped from
    main() in this window: a traceback and death by SIGINT (-2), no graceful stop.
    """
    for _ in range(4):
        returncode, stderr = _signal_at_listening(signum)
        assert returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "stopped after" in stderr


def test_demo_page_is_served(spawn, http_exchange):
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))
    status, headers, body = http_exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200 and b"WebSocket" in body
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=5) == 0


def _post_rpc(http_exchange, port: int, doc: dict):
    body = json.dumps(doc).encode()
    return http_exchange(port, b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def test_demo_answers_requests_with_its_application(spawn, http_exchange):
    """--demo is its own --rpc application: demo.echo, demo.time, an error for other topics."""
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))
    # the DEALER connects after the port listens: 503 (no application connected) until then
    wait_until(lambda: _post_rpc(http_exchange, port, {"topic": "demo.time", "data": None})[0] != 503,
               message="the demo application connected")
    status, _, body = _post_rpc(http_exchange, port, {"topic": "demo.echo", "data": {"n": 1}})
    assert status == 200 and json.loads(body)["echo"] == {"n": 1}
    status, _, body = _post_rpc(http_exchange, port, {"topic": "demo.time", "data": None})
    assert status == 200 and abs(json.loads(body)["time"] - time.time()) < 60
    status, _, body = _post_rpc(http_exchange, port, {"topic": "orders.new", "data": 1})
    assert status == 502 and "demo.echo" in json.loads(body)["error"]
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=5) == 0


def test_demo_with_rpc_uses_the_given_application(spawn, http_exchange):
    """--demo --rpc E: the gateway's DEALER goes to E, not to the demo application (none here:
    an immediate 503)."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--rpc", endpoint, "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))
    status, _, body = _post_rpc(http_exchange, port, {"topic": "demo.time", "data": None})
    assert status == 503, body
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=5) == 0


def test_echo_server_example(spawn, run_async):
    process = spawn(sys.executable, str(ROOT / "examples" / "echo_server.py"), "--port", "0")
    match = process.wait_for_line("stdout", re.compile(r"echo server on ws://127\.0\.0\.1:(\d+)/"))
    port = int(match.group(1))

    async def main():
        async with ws_connect(port) as ws:
            await ws.send("echo me")
            assert await ws.recv() == "echo me"
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"
    run_async(main())
    process.popen.terminate()
    process.popen.wait(timeout=5)


# -- errors that say what to fix, --check --------------------------------------------------------


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """Two self-signed certificates and their keys, and a file that is no PEM at all."""
    folder = tmp_path_factory.mktemp("pems")
    files = {}
    for name in ("a", "b"):
        cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=x",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        files[f"{name}-cert"], files[f"{name}-key"] = str(cert), str(key)
    files["text"] = str(folder / "text.pem")
    Path(files["text"]).write_text("hello\n")
    files["missing"] = str(folder / "missing.pem")
    files["folder"] = str(folder)
    return files


def _one_error_line(result: subprocess.CompletedProcess, status: int = 1) -> str:
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zmqws: error: "), result.stderr
    return lines[0][len("zmqws: error: "):]


@pytest.mark.parametrize("args, expected", [
    (["--certfile", "{a-cert}", "--keyfile", "{missing}"], "--keyfile {missing}: No such file or directory"),
    (["--certfile", "{missing}"], "--certfile {missing}: No such file or directory"),
    (["--certfile", "{text}", "--keyfile", "{a-key}"], "--certfile {text}: not a PEM certificate"),
    (["--certfile", "{a-cert}", "--keyfile", "{text}"], "--keyfile {text}: not a PEM private key"),
    (["--certfile", "{a-cert}"], "--certfile {a-cert}: holds no private key; give it with --keyfile"),
    (["--certfile", "{a-cert}", "--keyfile", "{b-key}"],
     "--keyfile {b-key}: the private key does not match the certificate of --certfile {a-cert}"),
    (["--certfile", "{a-cert}", "--keyfile", "{folder}"], "--keyfile {folder}: Is a directory"),
    (["--static-dir", "{missing}"], "--static-dir {missing}: no such folder"),
    (["--static-dir", "{text}"], "--static-dir {text}: not a folder"),
    (["--push", "tcp://nohost"], "--push tcp://nohost: invalid endpoint"),
    (["--sub", "ftp://x:1"], "--sub ftp://x:1: unknown transport"),
    (["--host", "192.0.2.1"], "--host 192.0.2.1: cannot assign requested address"),
], ids=["keyfile-missing", "certfile-missing", "cert-not-pem", "key-not-pem", "no-key",
        "key-mismatch", "key-is-folder", "static-missing", "static-not-folder", "push-invalid",
        "sub-transport", "host-not-here"])
@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_startup_error_names_the_flag(pems, args, expected, check):
    args = [arg.format(**pems) for arg in args]
    result = run_cli("--sub", "tcp://127.0.0.1:5", "--port", "0", *args, *(["--check"] if check else []))
    assert _one_error_line(result).startswith(expected.format(**pems)), result.stderr
    assert result.stdout == ""


def test_check_finds_ports_in_use(busy_port):
    assert _one_error_line(run_cli("--sub", "tcp://127.0.0.1:5", "--port", str(busy_port), "--check")) \
        == f"--port {busy_port}: address already in use"
    bound = f"tcp://127.0.0.1:{busy_port}"
    assert _one_error_line(run_cli("--sub", bound, "--bind", "--port", "0", "--check")) \
        == f"--sub {bound}: address already in use (with --bind)"


def test_check_ok_releases_what_it_bound(pems):
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    result = run_cli("--sub", f"tcp://127.0.0.1:{ports[0]}", "--bind", "--port", str(ports[1]),
                     "--certfile", pems["a-cert"], "--keyfile", pems["a-key"], "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "zmqws: configuration OK\n" and result.stderr == ""
    for port in ports:  # both free again
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# -- --config FILE ----------------------------------------------------------------------------------


CONFIG = """\
sub = ["tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557"]
port = 0
host = "127.0.0.1"
max_queue = "8M"            # a size as text, through the option's own parser
max-message-size = 65536    # dashes or underscores
ping-interval = 5           # seconds as an integer
close_timeout = 0.5
subscribe-all = true
no_deflate = true
ready-any = true
cors-origin = "*"           # a single value for a repeatable option
allow_origin = ["https://a.example", "https://b.example"]
payload = "text"
deflate-mem-level = 4
"""


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "zmqws.toml"
    path.write_text(CONFIG)
    args = parse_args(["--config", str(path)])
    gw = Gateway.from_config(config_from_args(args))
    assert gw.config.upstream.sub_endpoints == ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557")
    assert (gw.max_queue, gw.max_message_size, gw.ping_interval, gw.close_timeout) == (8 << 20, 65536, 5.0, 0.5)
    assert gw.config.hub.subscribe_all and gw.config.upstream.ready_any and gw.deflate is None
    assert gw.config.http.cors_origins == ("*",)
    assert gw.allow_origins == ["https://a.example", "https://b.example"]
    assert gw.config.hub.payload_mode == "text"
    assert args.deflate_mem_level == 4 and args.bind is False

    # the command line wins; a repeatable option given there replaces the file's list
    args = parse_args(["--config", str(path), "--sub", "tcp://x:1", "--max-queue", "1M",
                       "--payload", "binary"])
    gw = Gateway.from_config(config_from_args(args))
    assert gw.config.upstream.sub_endpoints == ("tcp://x:1",) and gw.max_queue == 1 << 20
    assert gw.config.hub.payload_mode == "binary"
    assert gw.config.http.cors_origins == ("*",)  # not given on the command line: the file's

    result = run_cli("--config", str(path), "--check")
    assert result.returncode == 0 and result.stdout == "zmqws: configuration OK\n", result.stderr


def test_arguments_become_the_config(monkeypatch, tmp_path):
    monkeypatch.delenv("ZMQWS_METRICS_TOKEN", raising=False)
    monkeypatch.setenv("ZMQWS_TOKEN", "from-env")
    config = config_from_args(parse_args([
        "--demo", "--bind", "--sub", "tcp://127.0.0.1:5", "--sub", "tcp://127.0.0.1:6", "--separator", "|",
        "--upstream-topic", "up", "--no-deflate", "--no-metrics", "--no-socketio", "--payload", "binary",
        "--format", "json", "--cors-origin", "*", "--max-queue", "64K"]))
    assert config.upstream.sub_endpoints == ("tcp://127.0.0.1:5", "tcp://127.0.0.1:6")
    assert config.upstream.bind is False  # with --demo the SUB socket connects
    assert (config.transports.separator, config.upstream.upstream_topic) == (b"|", b"up")
    assert (config.server.deflate, config.http.metrics, config.transports.socketio) == (False, False, False)
    assert (config.hub.payload_mode, config.transports.envelope) == ("binary", "json")
    assert (config.http.cors_origins, config.server.max_queue) == (("*",), 64 << 10)
    assert config.http.metrics_token == "from-env" and config.server.authenticate is not None
    assert config.server.ssl_context is None

    tokens = tmp_path / "tokens"
    tokens.write_text("reader prices.\n")
    config = config_from_args(parse_args(["--sub", "tcp://127.0.0.1:5", "--bind", "--token-file", str(tokens),
                                          "--metrics-token", "scrape"]))
    assert config.upstream.bind is True and config.http.metrics_token == "scrape"
    assert config.server.authenticate.tokens.lookup("reader").read == frozenset({b"prices."})


@pytest.mark.parametrize("text, expected", [
    ("sub = ['tcp://a:1']\nsubscribe = true\n", "unknown key 'subscribe'"),
    ("sub = ['tcp://a:1']\nport = 'eighty'\n", "port: not a port number: 'eighty'"),
    ("sub = ['tcp://a:1']\nbind = 'yes'\n", "bind: expected true or false"),
    ("sub = ['tcp://a:1']\npayload = 'json'\n", "payload: 'json' is not one of auto, text, binary"),
    ("sub = ['tcp://a:1']\nhost = 5\n", "host: expected a string"),
    ("sub = [\n", "not valid TOML"),
], ids=["unknown-key", "bad-port", "bad-bool", "bad-choice", "not-a-string", "not-toml"])
def test_config_file_errors_name_the_file_and_the_key(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    line = _one_error_line(run_cli("--config", str(path), "--check"), status=2)
    assert line.startswith(f"--config {path}: {expected}"), line


def test_config_needs_tomllib(tmp_path, monkeypatch, capsys):
    path = tmp_path / "zmqws.toml"
    path.write_text("port = 0\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python < 3.11: the import fails
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", str(path), "--demo"])
    assert info.value.code == 2
    assert "zmqws: error: --config needs Python 3.11+ (tomllib)" in capsys.readouterr().err


# -- --log-format json and the stop summary -------------------------------------------------------


def test_json_logs_and_a_short_stop_line(spawn, run_async):
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0", "--log-format", "json", "-v")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))

    async def main():
        async with ws_connect(port, "/?format=json") as ws:
            await ws.recv()
    run_async(main())
    process.wait_for_line("stderr", "disconnect client=")
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=10) == 0
    docs = [json.loads(line) for line in process.rest("stderr").splitlines()]
    for doc in docs:
        assert {"time", "level", "event"} <= doc.keys(), doc
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"]), doc
    connect = next(d for d in docs if d["event"].startswith("connect client="))
    assert connect["transport"] == "websocket" and isinstance(connect["client"], int)
    disconnect = next(d for d in docs if d["event"].startswith("disconnect client="))
    assert disconnect["client"] == connect["client"] and disconnect["code"] == 1000
    assert any(d.get("endpoint", "").startswith("tcp://127.0.0.1:") and "connected" in d["event"]
               for d in docs)
    stop = docs[-1]["event"]
    assert stop.startswith("stopped after ") and len(stop) < 200, stop
    assert re.search(r"connections \d+, messages in \d+, deliveries \d+", stop), stop


def test_without_v_only_start_stop_and_upstream_lines(spawn, run_async):
    """Each connection is logged with -v only: without it, what a client does costs no log line."""
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))

    async def main():
        for _ in range(3):
            async with ws_connect(port, "/?format=json") as ws:
                await ws.recv()
    run_async(main())
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=10) == 0
    stderr = process.rest("stderr")  # every line, those read while waiting too
    assert "connect client=" not in stderr and "disconnect client=" not in stderr, stderr
    assert re.search(r"upstream tcp://127\.0\.0\.1:\d+: connected", stderr), stderr
    assert "stopped after " in stderr


def test_the_example_config_file_of_the_docs_is_valid(tmp_path):
    usage = (ROOT / "docs" / "usage.md").read_text()
    example = re.search(r"```toml\n(# /etc/zmqws/zmqws.toml\n.*?)```", usage, re.S).group(1)
    path = tmp_path / "zmqws.toml"
    path.write_text(example)
    result = run_cli("--config", str(path), "--port", "0", "--check")
    assert result.returncode == 0 and result.stdout == "zmqws: configuration OK\n", result.stderr
