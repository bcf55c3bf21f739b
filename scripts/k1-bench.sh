#!/usr/bin/env bash
# Runs K1 (Kafka -> map -> Kafka, exactly-once, checkpoints every second; issue 4) RUNS
# times (default 3) at parallelism 1 and 2, and its yardstick k1-baseline (one thread
# copying with librdkafka alone), on one broker started here with the 10 million record
# input written once; prints every RESULT line, the medians and their ratio.
#   scripts/k1-bench.sh [RUNS] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
n=${2:-10000000}
port=19192
bash scripts/kafka.sh install
cargo build --release -p sluice-bench >&2
bin=target/release/sluice-bench
bash scripts/kafka.sh start "$port" >&2
trap 'bash scripts/kafka.sh stop "$port"' EXIT
"$bin" k1-fill --bootstrap "127.0.0.1:$port" --input k1-in --n "$n"
out=$(mktemp)
for _ in $(seq "$runs"); do
  "$bin" k1-baseline --bootstrap "127.0.0.1:$port" --input k1-in --n "$n" | tee -a "$out"
  for p in 1 2; do "$bin" k1 --bootstrap "127.0.0.1:$port" --input k1-in --n "$n" --parallelism "$p" | tee -a "$out"; done
done
python3 - "$out" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = dict(re.findall(r"(\w+)=(\S+)", line))
    rates.setdefault((m["workload"], int(m["p"])), []).append(float(m["rate"]))
med = {k: statistics.median(v) for k, v in rates.items()}
base = med.get(("k1-baseline", 1))
for (w, p), r in sorted(med.items()):
    ratio = f"  {r / base:.2f}x the librdkafka copy loop" if base and w == "k1" else ""
    print(f"  {w:12} p={p}  median {r / 1e3:.0f} k records/s over {len(rates[(w, p)])} runs{ratio}")
PY
rm -f "$out"
