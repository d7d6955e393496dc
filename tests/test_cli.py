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

from zmqws.__main__ import build_parser

from conftest import sigint_not_ignored, ws_connect

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
    assert "stopped:" in stderr


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
        assert "stopped:" in stderr


def test_demo_page_is_served(spawn, http_exchange):
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", LISTENING).group(1))
    status, headers, body = http_exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200 and b"WebSocket" in body
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
