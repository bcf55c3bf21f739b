#!/usr/bin/env bash
# Runs each Nexmark query at parallelism 1 at the N of issue 12's Flink 2.3 table, RUNS
# times (default 3), interleaved, and prints every RESULT line, each query's median rate and
# its ratio to Flink's; w2-baseline (the plain-Rust loop of WORKLOADS.md) is run too, to
# tell how fast the machine is (31-32 M/s at p = 2 on the machine Flink's figures are from),
# and nexmark-baseline (the generator alone in a plain loop: the bound of every query at p = 1).
#   scripts/nexmark-bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -p sluice-bench >&2
bin=target/release/sluice-bench
out=$(mktemp)
for _ in $(seq "$runs"); do
  "$bin" w2-baseline --n 100000000 -p 2 | tee -a "$out"
  "$bin" nexmark-baseline --n 20000000 | tee -a "$out"
  for q in q0:20000000 q1:20000000 q2:30000000 q3:30000000 q4:5000000 q5:10000000 q7:5000000 q8:20000000; do
    "$bin" nexmark --query "${q%%:*}" --events "${q##*:}" -p 1 | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
flink = {"q0": 1.57, "q1": 1.46, "q2": 2.42, "q3": 2.24, "q4": 0.33, "q5": 0.87, "q7": 0.39, "q8": 1.86}
rates = {}
for line in open(sys.argv[1]):
    if line.startswith("RESULT"):
        m = dict(re.findall(r"(\w+)=(\S+)", line))
        rates.setdefault(m["workload"], []).append(float(m["rate"]) / 1e6)
for w, r in sorted(rates.items()):
    q = w.removeprefix("nexmark-")
    gen = statistics.median(rates["nexmark-baseline"]) if "nexmark-baseline" in rates else None
    ratio = f"  {statistics.median(r) / flink[q]:5.1f}x Flink 2.3 ({flink[q]} M/s)" if q in flink else ""
    if q in flink and gen:
        ratio += f", {statistics.median(r) / gen:.2f} of the generator alone"
    print(f"  {w:18} {statistics.median(r):7.2f} M/s median of {len(r)}{ratio}")
PY
