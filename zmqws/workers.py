"""``--workers N``: several gateway processes on one port, supervised by a parent.

One Python thread serves one core.  With ``--workers N`` the parent:

1. reserves the port (``SO_REUSEPORT``; every worker binds it too, and the
   kernel spreads new connections over the workers' listening sockets);
2. runs a forwarder (:class:`zmqws.proxy.Sequencer`) whose XSUB side connects
   to the ``--sub`` endpoints and whose XPUB side the workers' SUB sockets
   connect to over IPC.  It stamps each message with an id, so every worker
   numbers messages alike and a client may resume (``?since=``) on any
   worker (with ``--upstream-ids`` it passes on the ids stamped upstream by
   ``zmqws.proxy --stamp`` instead); subscriptions still flow upstream;
3. starts N workers, each an ordinary gateway with its own SUB socket and
   loop, restarts a worker that dies, forwards SIGTERM/SIGINT to them and
   exits once they have stopped;
4. gives them a folder where each writes its counters every second; any
   worker's ``/metrics`` reports them summed and per worker;
5. kills (SIGKILL) and restarts a hung worker: one whose loop has not written
   its counters for ``--worker-timeout`` seconds.
6. watches the ``--sub`` endpoints with the forwarder's socket monitor (the
   upstream log lines come from the parent) and keeps their state in that
   folder, so that every worker's ``/readyz`` and ``zmqws_upstream_connected``
   speak of the real upstream endpoints, not of the worker's IPC link.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from .auth import authenticator
from .config import GatewayConfig
from .logs import setup_logging
from .service import fail, listen_error, serve
from .tls import checked_server_context

__all__ = ["Supervisor", "WorkerOptions"]

log = logging.getLogger("zmqws.service")

STATUS_FILE = "upstream.json"  # the forwarder's upstream endpoints, for the workers' /readyz
RESTART_DELAY = 1.0       # seconds before a dead worker is replaced
MAX_RESTART_DELAY = 30.0  # ... doubling while it keeps dying within 10 s of its start


@dataclass(frozen=True)
class WorkerOptions:
    """The supervisor's own options, and what each worker rebuilds its TLS context and token
    hook from (an SSL context or a hook cannot be sent to a spawned process)."""

    workers: int = 2
    worker_timeout: float = 10.0  # seconds without a counters snapshot: hung; 0 = never checked
    verbose: int = 0
    log_format: str = "text"
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    token: Optional[str] = None
    token_file: Optional[str] = None


def _worker_main(config: GatewayConfig, options: WorkerOptions, endpoint: str, port: int,
                 stats_dir: str) -> None:
    """A worker process: an ordinary gateway fed by the parent's forwarder."""
    from .gateway import Gateway

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    setup_logging(options.verbose, options.log_format)
    config = config.replace(
        port=port, reuse_port=True, upstream_ids=True, stats_dir=stats_dir, sub_endpoints=(endpoint,),
        bind=False, upstream_status_file=os.path.join(stats_dir, STATUS_FILE),
        ssl_context=checked_server_context(options.certfile, options.keyfile) if options.certfile else None,
        authenticate=authenticator(options.token, options.token_file))
    raise SystemExit(serve(Gateway.from_config(config), config))


class Supervisor:
    """Runs and supervises ``options.workers`` gateway processes of ``config`` (see the
    module docstring)."""

    def __init__(self, config: GatewayConfig, options: WorkerOptions) -> None:
        # What is sent to each spawned worker: no SSL context, no hook (each rebuilds them).
        self.config = config.replace(ssl_context=None, authenticate=None)
        self.options = options
        self.endpoints = list(config.upstream.sub_endpoints)
        self.stopping = threading.Event()
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: List[Optional[multiprocessing.process.BaseProcess]] = []

    def run(self) -> int:
        from .proxy import Sequencer

        if not hasattr(socket, "SO_REUSEPORT"):
            return fail("--workers needs SO_REUSEPORT, which this system lacks")

        server, options = self.config.server, self.options
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        reserve = socket.socket(family, socket.SOCK_STREAM)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reserve.bind((server.host, server.port))
        except OSError as exc:
            reserve.close()
            return fail(listen_error(server.host, server.port, exc))
        self.port = reserve.getsockname()[1]
        folder = tempfile.mkdtemp(prefix="zmqws-workers-")
        endpoint = f"ipc://{folder}/messages.ipc"
        try:
            # With --upstream-ids the messages carry the ids of a stamping proxy upstream: pass
            # them on (the workers then agree with every other gateway behind that proxy).
            sequencer = Sequencer(self.endpoints, [endpoint], stamp=not self.config.hub.upstream_ids,
                                  connect_xsub=not self.config.upstream.bind,
                                  status_file=os.path.join(folder, STATUS_FILE))
        except ValueError as exc:
            reserve.close()
            shutil.rmtree(folder, ignore_errors=True)
            return fail(str(exc))
        sequencer.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        if hasattr(signal, "SIGHUP"):  # each worker reloads its --token-file
            signal.signal(signal.SIGHUP, lambda *_: self._signal_workers(signal.SIGHUP))
        try:
            self._procs = [self._spawn(endpoint, folder) for _ in range(options.workers)]
            self._wait_listening(server.host, folder)
            log.info("zmqws listening on port %d with %d workers (pids %s), SUB %s",
                     self.port, options.workers, ", ".join(str(p.pid) for p in self._procs if p is not None),
                     ", ".join(self.endpoints))
            started = {i: time.monotonic() for i in range(len(self._procs))}
            delay = {i: RESTART_DELAY for i in range(len(self._procs))}
            due: Dict[int, float] = {}
            while not self.stopping.wait(0.1):
                now = time.monotonic()
                for i, proc in enumerate(self._procs):
                    if i in due:
                        if now >= due[i]:
                            del due[i]
                            self._procs[i] = self._spawn(endpoint, folder)
                            started[i] = now
                        continue
                    if proc is not None and proc.is_alive() and self._hung(proc, folder, now - started[i]):
                        log.warning("worker %d (pid %s) is hung (its loop wrote no counters for %.0f s); "
                                    "killing it", i, proc.pid, options.worker_timeout)
                        proc.kill()
                        proc.join(1)
                    if proc is not None and not proc.is_alive():
                        # Restart after a pause: the dead worker's clients reconnect to the
                        # others (which hold the history they resume from) rather than to a
                        # new worker that has none; a worker that keeps dying waits longer.
                        delay[i] = (min(delay[i] * 2, MAX_RESTART_DELAY)
                                    if now - started[i] < 10 else RESTART_DELAY)
                        log.warning("worker %d (pid %s) exited with status %s; restarting in %.0f s",
                                    i, proc.pid, proc.exitcode, delay[i])
                        self.restarts += 1
                        try:
                            os.unlink(os.path.join(folder, f"worker-{proc.pid}.json"))
                        except OSError:
                            pass
                        due[i] = now + delay[i]
        finally:
            self._stop_workers()
            sequencer.stop()
            reserve.close()
            shutil.rmtree(folder, ignore_errors=True)
        log.info("all workers stopped")
        return 0

    def _hung(self, proc: multiprocessing.process.BaseProcess, folder: str, running: float) -> bool:
        """True when the worker's loop has not written its snapshot (every second, see
        :meth:`Gateway._write_snapshot`) for ``--worker-timeout`` seconds (0: never checked)."""
        timeout = self.options.worker_timeout
        if not timeout:
            return False
        try:
            age = time.time() - os.stat(os.path.join(folder, f"worker-{proc.pid}.json")).st_mtime
        except OSError:
            age = running  # none yet: the worker is starting (or hung before its first one)
        return age > timeout and running > timeout

    def _wait_listening(self, host: str, folder: str, timeout: float = 10.0) -> None:
        """Announce the port only once every worker listens on it (each writes its first
        metrics snapshot just after binding) and a connection is accepted."""
        target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        deadline = time.monotonic() + timeout
        snapshots = [os.path.join(folder, f"worker-{p.pid}.json") for p in self._procs if p is not None]
        while (time.monotonic() < deadline and not self.stopping.is_set()
               and not all(os.path.exists(path) for path in snapshots)):
            time.sleep(0.02)
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                socket.create_connection((target, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)

    def _spawn(self, endpoint: str, folder: str) -> multiprocessing.process.BaseProcess:
        proc = self._ctx.Process(target=_worker_main, args=(self.config, self.options, endpoint, self.port, folder),
                                 name="zmqws-worker", daemon=False)
        proc.start()
        return proc

    def _signal_workers(self, signum: int) -> None:
        for proc in self._procs:
            if proc is not None and proc.pid is not None and proc.is_alive():
                try:
                    os.kill(proc.pid, signum)
                except OSError:
                    pass

    def _stop_workers(self) -> None:
        """SIGTERM to every worker (each closes its clients with 1001), then wait, then kill."""
        live = [p for p in self._procs if p is not None and p.is_alive()]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + self.config.server.close_timeout + 5
        for proc in live:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker pid %s did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(1)
