"""Run a zmqws Gateway with its loop thread under cProfile (for ``fanout.py --profile``).

    python benchmarks/zmqws_profiled.py --sub tcp://127.0.0.1:5556 --port 8080 --out /tmp/zmqws.prof

The Gateway is configured as ``python -m zmqws --payload binary`` would
configure it.  The profile covers the loop thread from start to stop
(SIGTERM), so it includes connection set-up, which is small next to a
full-rate run; cProfile slows every Python call down, so throughput measured
in the same run is not representative.  The stats are written to ``--out``
(read them with ``python -m pstats``) and the top functions by internal time
are printed to stdout on exit.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import signal
import sys

from zmqws import Gateway


class ProfiledGateway(Gateway):
    """A Gateway whose loop thread runs under cProfile (the profiler is per thread)."""

    profile_path = "zmqws.prof"

    def _run_loop(self) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            super()._run_loop()
        finally:
            prof.disable()
            prof.dump_stats(self.profile_path)


def main() -> None:
    p = argparse.ArgumentParser(description="zmqws Gateway under cProfile")
    p.add_argument("--sub", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rcvhwm", type=int, default=100_000)
    p.add_argument("--out", default="zmqws.prof")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()

    ProfiledGateway.profile_path = args.out
    gateway = ProfiledGateway(args.sub, args.port, host=args.host, payload_mode="binary",
                              rcvhwm=args.rcvhwm)

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    gateway.run()  # until SIGTERM; stop() joins the loop thread, which dumps the stats
    out = io.StringIO()
    pstats.Stats(args.out, stream=out).sort_stats("tottime").print_stats(args.top)
    sys.stdout.write(out.getvalue())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
