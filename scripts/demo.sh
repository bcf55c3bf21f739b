#!/usr/bin/env bash
# The demo: a local cluster (a coordinator and 3 workers) runs a windowed job with the
# exactly-once file sink; one worker is killed with SIGKILL mid-stream; the detection, the
# migration and the recovery are printed as they happen, and the committed output is
# checked against an independently computed reference at the end.
#
# Needs a Rust toolchain; installs from Debian what is missing: a C toolchain (the bench
# binary links librdkafka, built from the rdkafka crate's bundled sources) and protoc
# (the etcd client of coordinator HA compiles etcd's protobuf files with it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
# etcd-client compiles etcd's protobuf files with the system's protoc.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
fi
echo "== building (release; a few minutes the first time)"
cargo build --release -q -p sluice-cli -p sluice-bench
exec target/release/sluice-bench r1 --live --n 3000000 --rate 200000 --kill-after-secs 8 --parallelism 2 "$@"
