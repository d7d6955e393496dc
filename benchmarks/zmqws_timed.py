"""Run a zmqws Gateway whose output sweep is timed (for ``fanout.py --sweep``).

    python benchmarks/zmqws_timed.py --sub tcp://127.0.0.1:5556 --port 8080

The Gateway is configured as ``python -m zmqws --payload binary`` would
configure it.  The loop's after-turn hook that writes every client's new
output (``OutputQueues.flush_dirty``: one system call per client) is wrapped
in two ``perf_counter()`` calls; each turn that wrote something adds its
duration.  On SIGTERM one line goes to stderr, as the C loop of ``c_fanout.c``
prints it::

    sweep: N sweeps, p50 X ms, p99 Y ms, max Z ms

That is the in-process time of one fan-out sweep, which sets the latency of
the last clients of a message; beside the end-to-end p99 it says how much of
the tail is the machine (a sweep that falls in a slow window) and how much
the sweep itself.
"""

from __future__ import annotations

import argparse
import signal
import sys
from time import perf_counter
from typing import Callable, List

from zmqws import Gateway


def timed(hook: Callable[[], None], has_work: Callable[[], bool], out: List[float]) -> Callable[[], None]:
    """``hook`` with the duration of each call that had work appended to ``out`` (ms)."""
    def run() -> None:
        if not has_work():
            hook()
            return
        started = perf_counter()
        hook()
        if len(out) < 1 << 20:
            out.append((perf_counter() - started) * 1e3)
    return run


def report(sweeps: List[float]) -> str:
    if not sweeps:
        return "sweep: 0 sweeps"
    s = sorted(sweeps)
    n = len(s)
    return f"sweep: {n} sweeps, p50 {s[n // 2]:.3f} ms, p99 {s[n * 99 // 100]:.3f} ms, max {s[-1]:.3f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description="zmqws Gateway with its output sweep timed")
    p.add_argument("--sub", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rcvhwm", type=int, default=100_000)
    args = p.parse_args()

    gateway = Gateway(args.sub, args.port, host=args.host, payload_mode="binary", rcvhwm=args.rcvhwm)
    gateway.start()
    sweeps: List[float] = []
    loop, output = gateway.loop, gateway.output
    assert loop is not None
    hooks = loop.after_turn
    i = hooks.index(output.flush_dirty)
    hooks[i] = timed(hooks[i], lambda: bool(output._dirty), sweeps)  # noqa: SLF001 - a benchmark probe

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        gateway.run()
    finally:
        print(report(sweeps), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
