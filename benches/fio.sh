#!/usr/bin/env bash
# fio's io_uring engine on the file shape of benches/io.rs: 4 KiB random reads from a
# page-cached 256 MiB file, one job, at QD1 and QD32, in two configurations:
#   default  fio's defaults: one io_uring_enter per I/O (iodepth_batch_submit=1), a
#            timestamp per I/O and a random map;
#   batched  the batching the aioctx and bare loops use, without the per-I/O extras:
#            FIO_BATCHED_FLAGS below (iodepth_batch_submit = the queue depth).
# Prints, per depth, each configuration's IOPS and the best of the two (the peer the
# report compares with), then the batched flags:
#   fio_qd<depth>_default_iops=<IOPS>
#   fio_qd<depth>_batched_iops=<IOPS>
#   fio_qd<depth>_iops=<best IOPS>
#   fio_qd<depth>_best=<default|batched>
#   fio_batched_flags=<flags, with QD for the depth>
# The file is benches/io.rs's ($AIOCTX_BENCH_FILE, else <target dir>/aioctx-bench-256m.dat);
# fio lays it out itself if it is missing. FIO_RUNTIME (seconds, default 5) per run.
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
batched_flags='--iodepth_batch_submit=QD --iodepth_batch_complete_min=1 --gtod_reduce=1 --norandommap'

run_fio() { # QD EXTRA-FLAGS...
    local qd="$1"
    shift
    fio --name=randread --filename="$file" --size=256M --rw=randread --bs=4k \
        --ioengine=io_uring --iodepth="$qd" --numjobs=1 --direct=0 --invalidate=0 \
        --time_based --runtime="$runtime" --ramp_time=1 --output-format=json "$@" |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

for qd in 1 32; do
    default=$(run_fio "$qd")
    # shellcheck disable=SC2086 # the flags are words on purpose
    batched=$(run_fio "$qd" ${batched_flags//QD/$qd})
    echo "fio_qd${qd}_default_iops=${default}"
    echo "fio_qd${qd}_batched_iops=${batched}"
    if (( batched > default )); then
        echo "fio_qd${qd}_iops=${batched}"
        echo "fio_qd${qd}_best=batched"
    else
        echo "fio_qd${qd}_iops=${default}"
        echo "fio_qd${qd}_best=default"
    fi
done
echo "fio_batched_flags=${batched_flags}"
