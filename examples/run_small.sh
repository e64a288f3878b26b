#!/usr/bin/env bash
# Runs each example on a tiny input, on the back end AIOCTX_BACKEND selects (the CI runs
# this once per back end): pipe_timeout with a 20 ms deadline, dio_randread on a 256 KiB
# file in the cargo target dir (skipped with a "skipped" line where that file system
# refuses O_DIRECT), and copy (O_DIRECT, queue depth 4, a short tail) checked byte for
# byte — in the target dir, on /dev/shm, and, as root, onto a ramfs (which refuses
# O_DIRECT: the fallback must say so); fsync_chain (20 linked and 20 awaited write → fsync)
# and dio_randread --fixed (registered buffers).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q --example pipe_timeout --example dio_randread --example copy \
    --example fsync_chain
"$target/release/examples/pipe_timeout" 20
file=$(mktemp -p "$target" aioctx-dio-small.XXXXXX)
work=$(mktemp -d -p "$target" aioctx-copy-small.XXXXXX)
ramfs=""
cleanup() {
    rm -f "$file"
    rm -rf "$work"
    if [ -n "$ramfs" ]; then umount "$ramfs" 2>/dev/null || true; rmdir "$ramfs"; fi
}
trap cleanup EXIT

# copy: the result must equal the source, byte for byte.
copy_check() {
    local src=$1 dst=$2 log=$work/copy.log
    "$target/release/examples/copy" "$src" "$dst" --depth 4 --bs 65536 >"$log" 2>"$work/copy.err" ||
        { cat "$log" "$work/copy.err"; exit 1; }
    cmp "$src" "$dst"
    echo "copy $src -> $dst: identical ($(grep -E '^(bytes|src_direct|dst_direct)=' "$log" | tr '\n' ' '))"
    if grep -q '^dst_direct=false' "$log"; then
        grep -q 'refuses O_DIRECT' "$work/copy.err" ||
            { echo "copy fell back to buffered I/O without saying so"; exit 1; }
    fi
}
head -c $((1024 * 1024 + 1234)) /dev/urandom >"$work/src"
copy_check "$work/src" "$work/dst"
if [ -d /dev/shm ]; then
    shm=$(mktemp -p /dev/shm aioctx-copy-small.XXXXXX)
    copy_check "$work/src" "$shm"
    rm -f "$shm"
fi
if [ "$(id -u)" = 0 ] && ramfs=$(mktemp -d) && mount -t ramfs none "$ramfs" 2>/dev/null; then
    copy_check "$work/src" "$ramfs/dst"
else
    [ -n "$ramfs" ] && rmdir "$ramfs" && ramfs=""
    echo "skipped copy onto ramfs (the O_DIRECT fallback): cannot mount one here"
fi
"$target/release/examples/fsync_chain" "$work/chain" --count 20

dd if=/dev/urandom of="$file" bs=4096 count=64 status=none
if ! dd if="$file" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; then
    echo "skipped dio_randread: $target refuses O_DIRECT"
    exit 0
fi
for depth in 1 8; do
    "$target/release/examples/dio_randread" "$file" --depth "$depth" --count 512 --bs 4096
done
"$target/release/examples/dio_randread" "$file" --depth 8 --count 512 --bs 4096 --fixed
