"""How steady is a CPU of this machine?  Times a fixed unit of work, back to back, for a while.

On a virtual machine the host may take the CPU away or slow it down for a
while (other guests, hyper-threads, host housekeeping); a gateway's fan-out
that falls into such a window takes several times longer, and the latency
percentiles of every stack measured here carry that.  This script runs a
fixed unit of pure-Python work (about 60 µs) over and over on one pinned
CPU and reports how often a unit took more than 3× the median, grouped into
windows (slow units less than 50 ms apart):

    python benchmarks/cpu_jitter.py [--cpu 0] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Tuple


def unit() -> int:
    x = 0
    for i in range(2000):
        x += i
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    samples: List[Tuple[float, float]] = []
    start = time.perf_counter()
    t = start
    end = start + args.seconds
    while t < end:
        unit()
        t2 = time.perf_counter()
        samples.append((t - start, t2 - t))
        t = t2
    durations = sorted(d for _, d in samples)
    median = durations[len(durations) // 2]
    slow = [(at, d) for at, d in samples if d > 3 * median]
    windows: List[List[float]] = []  # [start, end, units, time in them]
    for at, d in slow:
        if windows and at - windows[-1][1] < 0.05:
            windows[-1][1] = at + d
            windows[-1][2] += 1
            windows[-1][3] += d
        else:
            windows.append([at, at + d, 1, d])
    print(f"CPU {args.cpu}: {len(samples)} units in {args.seconds:g} s; unit median "
          f"{median * 1e6:.1f} µs, p99 {durations[int(len(durations) * 0.99)] * 1e6:.1f} µs, "
          f"max {durations[-1] * 1e6:.0f} µs")
    print(f"units over 3x the median: {len(slow)} ({100 * len(slow) / len(samples):.2f} %), "
          f"in {len(windows)} windows")
    long_windows = [w for w in windows if w[2] >= 10]
    if long_windows:
        gaps = [b[0] - a[0] for a, b in zip(long_windows, long_windows[1:])]
        covered = sum(w[1] - w[0] for w in long_windows)
        print(f"windows of 10 slow units or more: {len(long_windows)}, covering "
              f"{100 * covered / args.seconds:.1f} % of the time; length "
              f"{min(w[1] - w[0] for w in long_windows) * 1e3:.0f}-"
              f"{max(w[1] - w[0] for w in long_windows) * 1e3:.0f} ms"
              + (f", one every {sum(gaps) / len(gaps):.2f} s on average" if gaps else ""))
        for w in long_windows[:12]:
            print(f"  at {w[0]:6.3f} s: {(w[1] - w[0]) * 1e3:5.0f} ms, {w[2]} slow units, "
                  f"{w[3] / (w[2] * median):.1f}x the median each")


if __name__ == "__main__":
    main()
