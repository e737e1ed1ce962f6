#!/usr/bin/env bash
# Fresh-machine set-up for building and testing duovm. Idempotent; safe to run repeatedly.
# Installs: the bare-metal Rust target for the guest kernels, Miri on the nightly toolchain
# (when a nightly toolchain is present), and the Debian packages the tests use.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
    say "installing the x86_64-unknown-none target"
    rustup target add x86_64-unknown-none
fi

if rustup toolchain list | grep -q '^nightly'; then
    if ! cargo +nightly miri --version >/dev/null 2>&1; then
        say "installing Miri on the nightly toolchain"
        rustup +nightly component add miri rust-src
    fi
fi

# Debian packages the test suite needs (none is needed to build).
packages=()
for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || packages+=("$package")
done
if [ "${#packages[@]}" -gt 0 ]; then
    say "installing Debian packages: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
