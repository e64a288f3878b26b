#!/usr/bin/env bash
# fio's io_uring engine on the file shape of benches/io.rs: 4 KiB random reads from a
# page-cached 256 MiB file, one job, at QD1 and QD32. Prints one line per depth:
#   fio_qd<depth>_iops=<IOPS>
# The file is benches/io.rs's ($AIOCTX_BENCH_FILE, else <target dir>/aioctx-bench-256m.dat);
# fio lays it out itself if it is missing. FIO_RUNTIME (seconds, default 5) per depth.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fio >/dev/null; then
    echo "fio missing: installing it with apt-get" >&2
    if ! apt-get install -y fio >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y fio >/dev/null
    fi
fi

file="${AIOCTX_BENCH_FILE:-${CARGO_TARGET_DIR:-target}/aioctx-bench-256m.dat}"
mkdir -p "$(dirname "$file")"
runtime="${FIO_RUNTIME:-5}"

for qd in 1 32; do
    out=$(fio --name=randread --filename="$file" --size=256M --rw=randread --bs=4k \
        --ioengine=io_uring --iodepth="$qd" --numjobs=1 --direct=0 --invalidate=0 \
        --time_based --runtime="$runtime" --ramp_time=1 --output-format=json)
    iops=$(printf '%s' "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
    echo "fio_qd${qd}_iops=${iops}"
done
