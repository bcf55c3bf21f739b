#!/usr/bin/env bash
# The demo: a local cluster (a coordinator and 3 workers) runs a windowed job with the
# exactly-once file sink; one worker is killed with SIGKILL mid-stream; the detection, the
# migration and the recovery are printed as they happen, and the committed output is
# checked against an independently computed reference at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sluice-cli -p sluice-bench
exec target/release/sluice-bench r1 --live --n 3000000 --rate 200000 --kill-after-secs 8 --parallelism 2 "$@"
