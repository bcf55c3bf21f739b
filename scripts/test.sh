#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: formatting and lint checks, unit
# tests, integration tests and doc examples. Needs only a Rust toolchain (1.85 or newer)
# and crates.io; no service is used by the tests of the core engine.
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q
echo "== cargo test"
# The integration tests run several multi-threaded jobs each; two test threads keep a
# 2-core machine responsive without serialising everything.
cargo test --workspace --locked -- --test-threads=2
echo "all tests passed"
