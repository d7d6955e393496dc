"""A short soak (benchmarks/soak.py): 100 clients for 10 s, 10 of them misbehaving in every way
the long soak knows; the same pass criteria.  The long run (1000 clients, 60 s) is documented
in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(150)


def test_short_soak(tmp_path):
    out = tmp_path / "soak.json"
    # 4 KiB messages so that a never-reading client overflows the gateway's queue
    # (and the kernel's buffers in front of it) within the 10 s.
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--clients", "100",
                             "--seconds", "10", "--size", "4096", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert out.exists(), report
    figures = json.loads(out.read_text())
    failed = [check for check in figures["checks"] if not check[2]]
    assert not failed, report
    assert result.returncode == 0, report
    assert figures["good_perfect"] == 90 and figures["published"] == 2000
    assert set(figures["outcomes"]) == {"never_read", "slow_read", "unmasked", "bad_opcode", "half_open",
                                        "reset", "oversized", "invalid_utf8", "ping_flood"}, report
    assert figures["tracebacks"] == 0
