#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit tests, and the integration
# tests that boot guests (inside the nested test host on hosts whose KVM cannot
# run a standard guest). Installs and builds what it needs (cached).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

command -v cargo >/dev/null || { echo "test: cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }

step() { echo; echo "=== $* ($(date +%T))"; }

step "preparing the lab: packages, guest kernel, root file system, L1 kernel"
tests/lab/lab prepare >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo test (unit and integration tests, lab included)"
cargo test --workspace --release -- --test-threads=2 "$@"

step "all tests passed"
