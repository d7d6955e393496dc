"""The command line shared by the ``fuzz_*.py`` harnesses: atheris (libFuzzer) when installed,
else a plain random-mutation loop with the same options and the same final statistics line.

    python tests/fuzz/fuzz_frames.py -max_total_time=60 [-runs=N] [-artifact_prefix=DIR/] [CORPUS_DIR]

A corpus folder that is empty gets the harness's seeds first.  On a crash the
input is written to ``<artifact_prefix>crash-<sha1>`` and the exit status is
non-zero; the last line is libFuzzer's ``stat::number_of_executed_units: N``.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
import traceback
import zlib
from typing import Callable, List, Sequence


def instrumented_targets():
    """``(targets, atheris)``: the fuzz targets (and zmqws, which they import) loaded under
    atheris's coverage instrumentation; ``atheris`` is None when it is not installed."""
    try:
        import atheris
    except ImportError:  # pragma: no cover
        import targets
        return targets, None
    with atheris.instrument_imports(include=["zmqws", "targets"]):
        import targets
    return targets, atheris


def cuts_for(data: bytes) -> List[int]:
    """Split points derived from the input itself (so a crash replays exactly): a step of
    1..64 bytes chosen by the input's CRC, with a jitter."""
    if not data:
        return []
    crc = zlib.crc32(data)
    step = 1 + crc % 64
    jitter = (crc >> 8) % 7
    return [i + (jitter if i % 3 == 0 else 0) for i in range(step, len(data), step)]


def flag(data: bytes) -> bool:
    """One bit of choice derived from the input (deflate or not, context takeover or not)."""
    return bool(zlib.crc32(data) & 0x10000)


def _options(argv: Sequence[str]):
    options = {}
    corpus = []
    for arg in argv[1:]:
        if arg.startswith("-") and "=" in arg:
            name, _, value = arg[1:].partition("=")
            options[name] = value
        elif not arg.startswith("-"):
            corpus.append(arg)
    return options, corpus


def _seed(corpus: List[str], seeds: Sequence[bytes]) -> None:
    for folder in corpus[:1]:
        os.makedirs(folder, exist_ok=True)
        if not os.listdir(folder):
            for seed in seeds:
                name = hashlib.sha1(seed).hexdigest()
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(seed)


def main(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes], atheris=None) -> None:
    options, corpus = _options(sys.argv)
    _seed(corpus, seeds)
    if atheris is not None:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
        return
    _fallback(test_one_input, seeds, options, corpus)


def _mutate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice == 2:
            at = rng.randint(0, len(buf))
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 3 and buf:
            at = rng.randrange(len(buf))
            del buf[at:at + rng.randint(1, 16)]
        elif choice == 4 and pool:
            other = rng.choice(pool)
            at = rng.randint(0, len(buf))
            buf[at:] = other[rng.randint(0, len(other)):]
        else:
            buf = buf[:rng.randint(0, len(buf))]
    return bytes(buf[:8192])


def _fallback(test_one_input, seeds, options, corpus) -> None:
    print("atheris is not installed: random-mutation fallback (no coverage guidance)", file=sys.stderr)
    max_time = float(options.get("max_total_time", 60))
    max_runs = int(options.get("runs", -1))
    prefix = options.get("artifact_prefix", "./")
    pool = list(seeds)
    for folder in corpus[:1]:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                pool.append(f.read())
    rng = random.Random(int(options.get("seed", 0)) or None)
    runs = 0
    started = time.monotonic()
    while time.monotonic() - started < max_time and (max_runs < 0 or runs < max_runs):
        data = (rng.choice(pool) if rng.random() < 0.9 else os.urandom(rng.randint(0, 512)))
        data = _mutate(rng, data, pool)
        runs += 1
        try:
            test_one_input(data)
        except Exception:  # a crash: keep the input, report, stop
            path = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            with open(path, "wb") as f:
                f.write(data)
            traceback.print_exc()
            print(f"==CRASH== input written to {path}", file=sys.stderr)
            print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)
            sys.exit(1)
    print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)
    print(f"stat::average_exec_per_sec: {int(runs / max(1e-9, time.monotonic() - started))}", file=sys.stderr)
