#!/usr/bin/env bash
# duovm's whole test suite. Sets up what it needs on a fresh machine, then runs:
#   1. unit, property and end-to-end tests of the host crates (end-to-end tests boot real KVM
#      VMs; without /dev/kvm they skip, saying so loudly);
#   2. loom model tests of the shared-memory ring protocol;
#   3. the ring's unit tests under Miri (when a nightly toolchain is present).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh tshark iputils-ping iproute2 python3

step() { printf '\n==> %s\n' "$*" >&2; }

step "unit, property and end-to-end tests"
cargo test --all-features

step "loom model tests of the ring protocol"
LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p shm-ring --release --test loom

if rustup toolchain list | grep -q '^nightly'; then
    step "the ring's unit tests under Miri"
    MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test -p shm-ring --lib
else
    printf '\n!!!! SKIPPED Miri: no nightly toolchain on this machine !!!!\n\n' >&2
fi
step "all tests passed"
