#!/usr/bin/env bash
# O_DIRECT 4 KiB random reads, one thread, at QD1 and QD32, on real block storage:
#   zram  a RAM-backed block device (/dev/zramN, DIO_ZRAM_SIZE, default 1G), set up here
#         as root, filled with random data first (zram keeps all-zero pages without
#         storing them, which would flatter reads), and torn down on every exit path;
#   disk  a file on the root disk's file system (DIO_FILE_SIZE, default 512M, in the
#         cargo target dir), read with O_DIRECT so the page cache is out of the way.
# Each target is read by fio's io_uring engine (--direct=1; its defaults and its batched
# configuration, the better one is the peer) and by examples/dio_randread.rs (aioctx
# `read_at` on the O_DIRECT fd into an AlignedBuf per in-flight read), the same block
# size, random offsets, depth and duration. Prints key=value lines:
#   dio_<zram|disk>_qd<depth>_fio_iops=<IOPS>         (fio's best configuration)
#   dio_<zram|disk>_qd<depth>_fio_best=<default|batched>
#   dio_<zram|disk>_qd<depth>_aioctx_iops=<IOPS>
#   dio_<zram|disk>_qd<depth>_aioctx_p99_us=<µs>
#   dio_<zram|disk>_qd<depth>_ratio=<aioctx / fio>
#   dio_<zram|disk>_skipped=<why>                      (when a target cannot run)
# and, at QD32 on each target, registered buffers against plain ones (dio_randread with
# and without --fixed, two alternating runs each, the better of each kept):
#   dio_<zram|disk>_qd32_plain_iops=<IOPS>  dio_<zram|disk>_qd32_fixed_iops=<IOPS>
#   dio_<zram|disk>_qd32_fixed_ratio=<fixed / plain>
# and, on the root disk, durable 4 KiB O_DIRECT writes (examples/fsync_chain.rs): a
# write → fsync chain linked in the kernel against the two ops awaited one by one, on
# writes that extend the file (<how>=extend) and on writes over allocated blocks
# (<how>=overwrite); two alternating runs of each, the better kept:
#   dio_disk_chain_<how>_<linked|awaited>_ops_per_s=<ops/s>
#   dio_disk_chain_<how>_<linked|awaited>_p50_us=<µs>
#   dio_disk_chain_<how>_ratio=<linked / awaited>
# It never falls back to a tmpfs file: a target it cannot set up is reported as skipped
# (not root, no zram module, the root file system refuses O_DIRECT or is tmpfs).
#   DIO_RUNTIME (seconds per run, default 5)
#   DIO_PARTS   (which rows: any of "fio fixed chain", default all three)
set -euo pipefail
cd "$(dirname "$0")/.."

runtime="${DIO_RUNTIME:-${FIO_RUNTIME:-5}}"
zram_size="${DIO_ZRAM_SIZE:-1G}"
file_size="${DIO_FILE_SIZE:-512M}"
parts=" ${DIO_PARTS:-fio fixed chain} "
has() { [[ "$parts" == *" $1 "* ]]; }
target="${CARGO_TARGET_DIR:-target}"
file="$target/aioctx-dio-bench.dat"
batched_flags='--iodepth_batch_submit=QD --iodepth_batch_complete_min=1 --gtod_reduce=1 --norandommap'

zram_dev=""      # /dev/zramN once set up
zram_added=""    # N when this script hot-added the device (removed again at exit)
made_file=""

cleanup() {
    local status=$?
    if [[ -n "$zram_dev" ]]; then
        local n="${zram_dev#/dev/zram}"
        echo 1 > "/sys/block/zram$n/reset" 2>/dev/null || echo "dio.sh: could not reset $zram_dev" >&2
        if [[ -n "$zram_added" ]]; then
            echo "$zram_added" > /sys/class/zram-control/hot_remove 2>/dev/null ||
                echo "dio.sh: could not remove zram$zram_added" >&2
        fi
        echo "dio.sh: tore down $zram_dev" >&2
    fi
    if [[ -n "$made_file" ]]; then
        rm -f "$file" "$chain_file"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v fio >/dev/null; then
    echo "fio missing: installing it with apt-get" >&2
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null; apt-get install -y fio >/dev/null; }
fi
cargo build --release -q --example dio_randread --example fsync_chain
tool="$target/release/examples/dio_randread"
chain_tool="$target/release/examples/fsync_chain"
chain_file="$target/aioctx-dio-chain.dat"

fio_iops() { # PATH QD EXTRA-FLAGS...
    local path="$1" qd="$2"
    shift 2
    fio --name=dio --filename="$path" --rw=randread --bs=4k --ioengine=io_uring --direct=1 \
        --iodepth="$qd" --numjobs=1 --time_based --runtime="$runtime" --ramp_time=1 \
        --output-format=json "$@" |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

ours_iops() { # PATH QD EXTRA-FLAGS...
    local path="$1" qd="$2"
    shift 2
    "$tool" "$path" --depth "$qd" --seconds "$runtime" --bs 4096 "$@" 2>/dev/null | sed -n 's/^iops=//p'
}

measure_fixed() { # NAME PATH: registered vs plain buffers at QD32
    local name="$1" path="$2" plain=0 fixed=0 p f round
    for round in 1 2; do
        p=$(ours_iops "$path" 32)
        f=$(ours_iops "$path" 32 --fixed)
        (( p > plain )) && plain=$p
        (( f > fixed )) && fixed=$f
    done
    echo "dio_${name}_qd32_plain_iops=$plain"
    echo "dio_${name}_qd32_fixed_iops=$fixed"
    echo "dio_${name}_qd32_fixed_ratio=$(python3 -c "print(f'{$fixed / $plain:.2f}')")"
}

chain_run() { # HOW MODE: one fsync_chain run, "<ops/s> <p50 µs>"
    local flag="" out
    [[ $1 == overwrite ]] && flag=--overwrite
    # shellcheck disable=SC2086 # an empty flag is no word
    out=$("$chain_tool" "$chain_file" --mode "$2" --seconds "$runtime" $flag 2>&1) || {
        echo "FAILED ${out//$'\n'/ }"
        return
    }
    echo "$(sed -n "s/^$2_ops_per_s=//p" <<<"$out") $(sed -n "s/^$2_p50_us=//p" <<<"$out")"
}

measure_chain() { # write → fsync linked vs awaited on the root disk: alternating runs, the better kept
    local how mode round res ops p50
    for how in extend overwrite; do
        declare -A best_ops=([linked]=0 [awaited]=0) best_p50=()
        for round in 1 2; do
            for mode in linked awaited; do
                res=$(chain_run "$how" "$mode")
                rm -f "$chain_file"
                if [[ $res == FAILED* ]]; then
                    echo "dio_disk_chain_skipped=fsync_chain failed: ${res#FAILED }"
                    return
                fi
                read -r ops p50 <<<"$res"
                if (( ops > best_ops[$mode] )); then best_ops[$mode]=$ops best_p50[$mode]=$p50; fi
            done
        done
        for mode in linked awaited; do
            echo "dio_disk_chain_${how}_${mode}_ops_per_s=${best_ops[$mode]}"
            echo "dio_disk_chain_${how}_${mode}_p50_us=${best_p50[$mode]}"
        done
        echo "dio_disk_chain_${how}_ratio=$(python3 -c "print(f'{${best_ops[linked]} / ${best_ops[awaited]}:.2f}')")"
    done
}

measure() { # NAME PATH
    local name="$1" path="$2" qd
    has fixed && measure_fixed "$name" "$path"
    has fio || return 0
    for qd in 1 32; do
        local default batched best conf out ours p99
        default=$(fio_iops "$path" "$qd")
        # shellcheck disable=SC2086 # the flags are words on purpose
        batched=$(fio_iops "$path" "$qd" ${batched_flags//QD/$qd})
        if (( batched > default )); then best=$batched conf=batched; else best=$default conf=default; fi
        out=$("$tool" "$path" --depth "$qd" --seconds "$runtime" --bs 4096 2>/dev/null)
        ours=$(sed -n 's/^iops=//p' <<<"$out")
        p99=$(sed -n 's/^lat_p99_us=//p' <<<"$out")
        echo "dio_${name}_qd${qd}_fio_iops=$best"
        echo "dio_${name}_qd${qd}_fio_best=$conf"
        echo "dio_${name}_qd${qd}_aioctx_iops=$ours"
        echo "dio_${name}_qd${qd}_aioctx_p99_us=$p99"
        echo "dio_${name}_qd${qd}_ratio=$(python3 -c "print(f'{$ours / $best:.2f}')")"
    done
}

# --- zram --------------------------------------------------------------------------
setup_zram() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "dio_zram_skipped=not root: setting up a zram block device needs root"
        return 1
    fi
    if [[ ! -d /sys/class/zram-control ]]; then
        modprobe zram 2>/dev/null || true
    fi
    if [[ ! -d /sys/class/zram-control ]]; then
        echo "dio_zram_skipped=no zram: modprobe zram failed and /sys/class/zram-control is missing"
        return 1
    fi
    local n
    # A device of our own; else an unused existing one (disksize 0).
    if n=$(cat /sys/class/zram-control/hot_add 2>/dev/null); then
        zram_added="$n"
    else
        n=""
        for d in /sys/block/zram*; do
            [[ -e "$d/disksize" && $(cat "$d/disksize") == 0 ]] && { n="${d#/sys/block/zram}"; break; }
        done
        if [[ -z "$n" ]]; then
            echo "dio_zram_skipped=no free zram device (hot_add failed, every zramN is in use)"
            return 1
        fi
    fi
    zram_dev="/dev/zram$n"
    echo "$zram_size" > "/sys/block/zram$n/disksize"
    echo "dio.sh: set up $zram_dev ($zram_size), filling it" >&2
    dd if=/dev/urandom of="$zram_dev" bs=1M oflag=direct status=none 2>/dev/null || true
    return 0
}

if { has fio || has fixed; } && setup_zram; then
    measure zram "$zram_dev"
fi

# --- a file on the root disk ---------------------------------------------------------
mkdir -p "$target"
fstype=$(stat -f -c %T "$target")
if [[ "$fstype" == tmpfs || "$fstype" == ramfs ]]; then
    echo "dio_disk_skipped=$target is on $fstype, not a disk"
else
    made_file=1
    echo "dio.sh: writing $file_size to $file ($fstype)" >&2
    fio --name=layout --filename="$file" --size="$file_size" --rw=write --bs=1M --direct=1 \
        --output=/dev/null
    if ! dd if="$file" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; then
        echo "dio_disk_skipped=$fstype at $target refuses O_DIRECT"
    else
        measure disk "$file"
        has chain && measure_chain
    fi
fi
