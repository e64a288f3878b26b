#!/usr/bin/env bash
# Runs each example on a tiny input, on the back end AIOCTX_BACKEND selects (the CI runs
# this once per back end): pipe_timeout with a 20 ms deadline, dio_randread on a 256 KiB
# file in the cargo target dir (skipped with a "skipped" line where that file system
# refuses O_DIRECT).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q --example pipe_timeout --example dio_randread
"$target/release/examples/pipe_timeout" 20
file=$(mktemp -p "$target" aioctx-dio-small.XXXXXX)
trap 'rm -f "$file"' EXIT
dd if=/dev/urandom of="$file" bs=4096 count=64 status=none
if ! dd if="$file" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; then
    echo "skipped dio_randread: $target refuses O_DIRECT"
    exit 0
fi
for depth in 1 8; do
    "$target/release/examples/dio_randread" "$file" --depth "$depth" --count 512 --bs 4096
done
