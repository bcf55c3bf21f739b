#!/usr/bin/env bash
# Runs the bench workloads RUNS times each (default 5) and prints every RESULT line and,
# per workload and parallelism, the median rate and its ratio to the hand-written
# single-threaded baseline measured in the same session.
#   scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release -p sluice-bench >&2
bin=target/release/sluice-bench
out=$(mktemp)
run() { for _ in $(seq "$runs"); do "$bin" "$@" | tee -a "$out"; done; }
run w1-baseline --n 1000000000 --parallelism 1
run w1 --n 1000000000 --parallelism 1
run w1 --n 1000000000 --parallelism 2
run w2-baseline --n 50000000 --parallelism 1
run w2 --n 50000000 --parallelism 1
run w2 --n 50000000 --parallelism 2
run w3 --n 50000000 --parallelism 2 2> >(grep CHECKPOINTS | tee -a "$out.ckpt" >&2)
sleep 1
echo "median rates (records/s) over $runs runs:"
python3 scripts/medians.py "$out"
if [ -s "$out.ckpt" ]; then
  python3 - "$out.ckpt" <<'PY'
import re, statistics, sys
ms, size = [], []
for line in open(sys.argv[1]):
    m = dict(re.findall(r"(\w+)=(\S+)", line))
    if int(m["count"]) > 0:
        ms.append(float(m["median_ms"])); size.append(int(m["median_bytes"]))
if ms:
    print(f"  W3 checkpoints: median duration {statistics.median(ms):.1f} ms, median size {statistics.median(size) / 1e6:.1f} MB")
PY
fi
rm -f "$out" "$out.ckpt"
