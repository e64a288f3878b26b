//! Contexts for tests, and waiting on them without sleeping as synchronisation.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aioctx_aio::{AioContext, AioContextBuilder, BACKEND_ENV, Backend};

use crate::watchdog::HANG_LIMIT;

/// A fresh context.
///
/// # Panics
/// When the context cannot be created.
pub fn new_ctx() -> Arc<AioContext> {
    AioContext::new().expect("create an AioContext")
}

/// Spins (sleeping 200 µs between checks) until `cond` holds.
///
/// # Panics
/// With `what` after [`HANG_LIMIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < HANG_LIMIT,
            "gave up waiting for: {what} (after {HANG_LIMIT:?})"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until the home thread of `ctx` has entered its sleep number `n` (counted by
/// `stats().sleeps`), then gives it a short grace period to reach the kernel. Whether it
/// reached the kernel or not, `notify_me` is raised once `sleeps` counted it, so a
/// notify from now on must write the eventfd.
///
/// # Panics
/// As [`wait_until`].
pub fn wait_asleep(ctx: &AioContext, n: u64) {
    wait_until("the loop to go to sleep", || ctx.stats().sleeps >= n);
    thread::sleep(Duration::from_millis(2));
}

/// Says that a test did not run, straight to the process's stderr: the test harness
/// captures `println!` of passing tests, and a skip must stay visible
/// (`scripts/test.sh` counts these lines per pass).
pub fn say_skipped(line: &str) {
    use std::io::Write;
    // One write of the whole line, so parallel tests' output does not split it.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A context on io_uring, for tests of io_uring itself (raw SQEs, CQ overflow, ring
/// sizes and stats). `None`, with a printed "skipped" line, when this run selects the
/// epoll backend (`AIOCTX_BACKEND=epoll`: the io_uring pass covers the test) or when
/// io_uring is unavailable here (e.g. under `no_uring`).
///
/// # Panics
/// When io_uring is available but the context cannot be built.
pub fn uring_ctx(test: &str, builder: AioContextBuilder) -> Option<Arc<AioContext>> {
    try_uring_ctx(test, builder).unwrap_or_else(|e| panic!("{test}: cannot set up io_uring: {e}"))
}

/// Like [`uring_ctx`], but hands back the error of a ring that io_uring refuses for
/// another reason than being unavailable (a setup the kernel rejects), for the caller
/// to judge.
///
/// # Errors
/// The build's error, when io_uring is available here but refused this context.
pub fn try_uring_ctx(
    test: &str,
    builder: AioContextBuilder,
) -> std::io::Result<Option<Arc<AioContext>>> {
    if std::env::var(BACKEND_ENV).is_ok_and(|v| v == "epoll") {
        say_skipped(&format!(
            "skipped {test}: needs io_uring, and this run selects epoll"
        ));
        return Ok(None);
    }
    match builder.backend(Backend::IoUring).build() {
        Ok(ctx) => Ok(Some(ctx)),
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::ENOSYS) =>
        {
            say_skipped(&format!(
                "skipped {test}: io_uring is unavailable here: {e}"
            ));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
