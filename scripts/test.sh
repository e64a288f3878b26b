#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of every crate, then the loom
# models (a separate target dir, so the cfg change does not rebuild the main tree).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace --release"
cargo test --workspace --release

echo "== loom models (LOOM_MAX_PREEMPTIONS=3)"
for pkg in aioctx-aio aioctx-wait aioctx-graph; do
    RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
        cargo test -p "$pkg" --release --lib
done
