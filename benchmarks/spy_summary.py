"""Summarise a py-spy ``--format raw`` profile: where zmqws's loop thread spends its time.

    python benchmarks/spy_summary.py /tmp/spy/zmqws-1000.txt [--top 20] [--match _run_loop]

Only stacks that contain ``--match`` (default: the zmqws loop thread's
``_run_loop``) are counted, so the main thread waiting in ``run()`` does not
dilute the figures.  Prints the share of samples per function and line where
the thread was (self), and per function anywhere on the stack (inclusive).
py-spy samples the thread when it is running, in user space or in a system
call, so a line that calls ``sendmsg`` includes the kernel's work for it.
"""

from __future__ import annotations

import argparse
import collections
import re


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--match", default="_run_loop")
    args = p.parse_args()

    own = collections.Counter()
    own_fn = collections.Counter()
    inclusive = collections.Counter()
    total = other = 0
    with open(args.path) as f:
        for line in f:
            line = line.rstrip()
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            if args.match not in stack:
                other += n
                continue
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            own_fn[re.sub(r":\d+\)$", ")", frames[-1])] += n
            for fn in {re.sub(r":\d+\)$", ")", fr) for fr in frames}:
                inclusive[fn] += n
    if not total:
        raise SystemExit(f"no stack matches {args.match!r}")
    print(f"{total} samples of the thread ({other} other samples left out)\n")
    for title, counter in (("self, by line", own), ("self, by function", own_fn),
                           ("inclusive, by function", inclusive)):
        print(f"{title}:")
        for name, n in counter.most_common(args.top):
            print(f"  {100.0 * n / total:5.1f} %  {name}")
        print()


if __name__ == "__main__":
    main()
