#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of every crate on both backends
# (io_uring with its default ring setup, again with DEFER_TASKRUN and on plain rings,
# then the epoll fallback), then again with io_uring denied by a seccomp filter (`no_uring`:
# Backend::Auto must fall back), then the loom models (a separate target dir, so the
# cfg change does not rebuild the main tree).
#
# Tests that need io_uring itself pass without running where it is denied or not
# selected, printing "skipped TEST: WHY" to stderr. Each pass's output is kept in
# <target>/test-logs/, and the summary at the end (also after a failure) says per pass
# how many tests were skipped and why, so a green run cannot hide a suite that did not
# run. The exit status is the first failing pass's, as before.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
logs="$target/test-logs"
mkdir -p "$logs"

summary=()

# run_pass NAME COMMAND...: runs COMMAND with its output shown and kept in a log, then
# records the pass's skips for the summary.
run_pass() {
    local name="$1" log="$logs/$1.log"
    shift
    rm -f "$log"
    local status=0
    "$@" 2>&1 | tee "$log" || status=$?
    # A skip line may share a line with the harness's "test x ... " (parallel tests).
    local skips
    skips=$(grep -oE 'skipped [A-Za-z0-9_:]+: .*' "$log" || true)
    if [[ -z "$skips" ]]; then
        summary+=("$name: 0 skipped")
    else
        summary+=("$name: $(printf '%s\n' "$skips" | wc -l) skipped:")
        while IFS= read -r line; do
            summary+=("    $line")
        done < <(printf '%s\n' "$skips" | sed -E 's/^skipped [A-Za-z0-9_:]+: //' | sort | uniq -c)
    fi
    if [[ $status -ne 0 ]]; then
        summary+=("$name: FAILED (exit $status); log in $log")
    fi
    return "$status"
}

print_summary() {
    local status=$?
    echo
    echo "== summary (logs in $logs/)"
    if [[ ${#summary[@]} -gt 0 ]]; then
        printf '%s\n' "${summary[@]}"
    fi
    if [[ $status -eq 0 ]]; then
        echo "all passes green"
    fi
    return "$status"
}
trap print_summary EXIT

echo "== cargo test --workspace --release (io_uring, or whatever AIOCTX_BACKEND says)"
run_pass io_uring cargo test --workspace --release

echo "== AIOCTX_RING_SETUP=defer_taskrun cargo test --workspace --release"
# Every context of the suite on a ring set up with DEFER_TASKRUN (which implies
# SINGLE_ISSUER and TASKRUN_FLAG): completions are then posted only when the home
# thread enters the kernel, the setup most unlike the default. (On epoll it is
# checked and ignored.)
run_pass io_uring-defer_taskrun env AIOCTX_RING_SETUP=defer_taskrun cargo test --workspace --release

echo "== AIOCTX_RING_SETUP=none cargo test --workspace --release"
# And on plain rings, without the default COOP_TASKRUN + TASKRUN_FLAG: what a kernel
# that refuses those flags gives every context.
run_pass io_uring-plain env AIOCTX_RING_SETUP=none cargo test --workspace --release

echo "== AIOCTX_BACKEND=epoll cargo test --workspace --release"
run_pass epoll env AIOCTX_BACKEND=epoll cargo test --workspace --release

echo "== io_uring denied by seccomp: no_uring cargo test --workspace --release"
# Everything is built already; cargo itself does not use io_uring. Tests that need
# io_uring itself print "skipped ..." here; the rest must pass on the fallback.
cargo build --release --bin no_uring
run_pass no_uring env -u AIOCTX_BACKEND "$target/release/no_uring" cargo test --workspace --release

echo "== loom models (LOOM_MAX_PREEMPTIONS=3)"
for pkg in aioctx-aio aioctx-wait aioctx-graph; do
    run_pass "loom-$pkg" env RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
        CARGO_TARGET_DIR=target/loom cargo test -p "$pkg" --release --lib
done

echo "== examples on a tiny input (examples/run_small.sh), io_uring and epoll"
run_pass examples-io_uring bash examples/run_small.sh
run_pass examples-epoll env AIOCTX_BACKEND=epoll bash examples/run_small.sh
