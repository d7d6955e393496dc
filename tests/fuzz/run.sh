#!/usr/bin/env bash
# Run every fuzz harness for a bounded time; print the inputs tried and the crashes found.
#
#   tests/fuzz/run.sh [SECONDS_PER_HARNESS]      (default 60)
#
# Corpora and crash artifacts go to $FUZZ_WORKDIR (default: a new temporary folder).
# Exit status: 0 when no harness crashed, 1 otherwise.
set -u
duration="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${FUZZ_WORKDIR:-$(mktemp -d -t zmqws-fuzz.XXXXXX)}"
python="${PYTHON:-python3}"
status=0
results=()
for name in frames handshake deflate; do
    mkdir -p "$work/corpus-$name" "$work/artifacts-$name"
    log="$work/$name.log"
    started=$(date +%s)
    (cd "$root" && "$python" "$here/fuzz_$name.py" -max_total_time="$duration" -print_final_stats=1 \
        -artifact_prefix="$work/artifacts-$name/" "$work/corpus-$name") >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - started ))
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    crashes=$(find "$work/artifacts-$name" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
    corpus=$(find "$work/corpus-$name" -type f | wc -l)
    engine=atheris
    grep -q "random-mutation fallback" "$log" && engine=fallback
    results+=("$(printf '%-10s %-9s %12s %8s %8s %6ss %4s' "$name" "$engine" "${execs:-?}" "$crashes" "$corpus" "$took" "$rc")")
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        echo "---- $name: exit status $rc, $crashes crash file(s); end of its log ($log):"
        tail -40 "$log"
    fi
done
printf '%-10s %-9s %12s %8s %8s %7s %4s\n' harness engine executions crashes corpus time rc
printf '%s\n' "${results[@]}"
echo "logs, corpora and artifacts: $work"
exit $status
