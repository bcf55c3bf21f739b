#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: formatting and lint checks, unit
# tests, integration tests and doc examples. Needs a Rust toolchain (1.88 or newer) and
# crates.io; it installs what is missing: protoc (Debian's protobuf-compiler, for the
# etcd client), etcd (Debian's etcd-server; the HA tests start three members), for the
# Kafka tests a C toolchain for librdkafka, Java 17 and Maven from Debian, the Kafka 4.4
# jars from Maven Central, and
# for the S3 tests s3s-fs (an S3 server over a folder) from crates.io. Each Kafka or S3 test
# starts its own server and kills it when it ends. The workspace is checked and tested with
# the `s3` feature on, so that the S3 code is linted and tested too.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component" || echo "note: could not install $component" >&2
  fi
done

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
# etcd-client compiles etcd's protobuf files with the system's protoc.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# The coordinator HA tests run a real three-member etcd.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
fi
echo "== Kafka jars"
bash scripts/kafka.sh install
echo "== s3s-fs"
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  # 0.14.1: the newest release that builds with Rust 1.95 (0.17 needs 1.96).
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
features=(--features sluice-testjobs/s3,sluice-cli/s3)
# One build from scratch: incremental artifacts would only take disk (about 1 GB).
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
echo "== cargo doc (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q "${features[@]}"
echo "== cargo test"
# The integration tests run several multi-threaded jobs each; two test threads keep a
# 2-core machine responsive without serialising everything.
cargo test --workspace --locked "${features[@]}" -- --test-threads=2
echo "== time arithmetic at the ends of i64, in release mode (overflow wraps silently there)"
cargo test --release --locked -p sluice --test time_limits
echo "all tests passed"
