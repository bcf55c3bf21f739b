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
echo "median rates over $runs runs:"
python3 scripts/medians.py "$out"
rm -f "$out"
