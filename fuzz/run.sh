#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECS seconds each (default 60) and prints how many
# executions each made; exits non-zero on the first failure (a failed model check, a
# panic, a watchdog abort, or an ASan report).
#
#   fuzz/run.sh 60                     # stable, no sanitizer (`-s none`): what CI runs
#   FUZZ_TOOLCHAIN=nightly fuzz/run.sh 60   # nightly: adds AddressSanitizer
#
# io_ops picks its back end (io_uring or epoll) from its input's first byte, so one
# process fuzzes both; where io_uring is unavailable its io_uring inputs run on epoll.
#
# graph_lock runs twice, once per fence mode (AIOCTX_FENCES=symmetric, then asymmetric
# where the kernel grants membarrier): the mode is process-wide and chosen once, so each
# mode needs a fuzzing process of its own.
#
# Installs cargo-fuzz if it is missing (`cargo install cargo-fuzz --locked`, about 2-3
# minutes on two cores). New inputs go to a scratch corpus; the committed seed corpus
# in fuzz/corpus/<target>/ is only read (its replay on stable is
# `cargo test -p aioctx-fuzzcheck`, io_ops on each back end). A failing input is written to
# fuzz/artifacts/<target>/; reproduce it with `cargo fuzz run -s none <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
toolchain="${FUZZ_TOOLCHAIN:-stable}"
# TARGET or TARGET@FENCES (run with AIOCTX_FENCES=FENCES).
targets=(bh_schedule timers graph_lock@symmetric graph_lock@asymmetric io_ops)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    start=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "== cargo-fuzz installed in $(($(date +%s) - start)) s"
fi

if [ "$toolchain" = stable ]; then
    tc=()
    sanitizer=(-s none)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
else
    tc=("+$toolchain")
    sanitizer=(-s address)
    # Different flags: keep the ASan build apart from the stable one.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}-$toolchain"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
summary=()
for entry in "${targets[@]}"; do
    t="${entry%@*}"
    fences=auto
    [[ "$entry" == *@* ]] && fences="${entry#*@}"
    echo "== fuzz $entry for ${secs}s ($toolchain, sanitizer ${sanitizer[1]}, AIOCTX_FENCES=$fences)"
    mkdir -p "$scratch/$entry"
    log="$scratch/$entry.log"
    set +e
    AIOCTX_FENCES="$fences" cargo "${tc[@]}" fuzz run "${sanitizer[@]}" -O "$t" "$scratch/$entry" \
        "corpus/$t" -- -max_total_time="$secs" -max_len=256 -timeout=30 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ] && [ "$fences" = asymmetric ] && grep -q "AIOCTX_FENCES=asymmetric forces" "$log"; then
        echo "skipped $entry: membarrier(PRIVATE_EXPEDITED) is unavailable here"
        summary+=("$entry: skipped (no membarrier)")
        continue
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "FAIL: fuzz target $entry exited with $rc after ${execs:-?} executions"
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || true
    summary+=("$entry: ${execs:-?} executions in ${secs}s, no failure")
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
