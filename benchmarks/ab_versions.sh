#!/usr/bin/env bash
# The same benchmarks on several versions of the package, interleaved in one run (two rounds), so
# that a change is compared with what came before on the same machine at the same time:
#   bash benchmarks/ab_versions.sh REV [REV...]      (the work tree is always measured, as "work")
# Each REV is checked out in a temporary git worktree; the benchmark scripts are this tree's.
# Results: $OUT (default /tmp/zmqws-ab): full-<name>-<round>.txt (full rate, 100/1000/5000 clients),
# rate-<name>-<round>.txt (5000 clients x 200 msg/s), mem-<name>.txt (10 000 idle connections).
set -u
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
OUT="${OUT:-/tmp/zmqws-ab}"; mkdir -p "$OUT"
declare -A TREE=([work]="$ROOT")
NAMES=()
for rev in "$@"; do
  dir="$(mktemp -d)/zmqws-$rev"
  git worktree add -q --detach "$dir" "$rev"
  TREE[$rev]="$dir"; NAMES+=("$rev")
done
NAMES+=(work)
cleanup() { for rev in "$@"; do git worktree remove --force "${TREE[$rev]}" 2>/dev/null; done; }
trap 'cleanup "$@"' EXIT
for round in 1 2; do
  for name in "${NAMES[@]}"; do
    PYTHONPATH="${TREE[$name]}" timeout 600 python3 benchmarks/fanout.py --stacks zmqws --clients 100,1000,5000 \
      --quiet-wait 10 --json "$OUT/full-$name-$round.json" > "$OUT/full-$name-$round.txt" 2>&1
    PYTHONPATH="${TREE[$name]}" timeout 600 python3 benchmarks/fanout.py --stacks zmqws --clients 5000 --rate 200 \
      --messages 2000 --quiet-wait 10 --json "$OUT/rate-$name-$round.json" > "$OUT/rate-$name-$round.txt" 2>&1
  done
done
for name in "${NAMES[@]}"; do
  PYTHONPATH="${TREE[$name]}" timeout 600 python3 benchmarks/idle_memory.py --connections 10000 --procs 4 \
    > "$OUT/mem-$name.txt" 2>&1
done
grep -H '^| zmqws' "$OUT"/full-*.txt "$OUT"/rate-*.txt | cut -d'|' -f1,3,7,8,10
grep -H 'peak VmHWM' "$OUT"/mem-*.txt
