//! Helpers shared by the integration tests. Each test binary uses a subset of them.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aioctx::aio::AioContext;

/// How long any single test may take before the watchdog declares a hang. Far above
/// what the tests need on a loaded 2-core machine; it only turns a hang into a failure.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Turns a hang into a failure with a diagnosis: if it is not dropped within `limit`,
/// it prints what `diag` reports and aborts the test process.
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration, diag: impl Fn() -> String + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_owned();
        let thread = thread::Builder::new()
            .name(format!("watchdog-{what}"))
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    eprintln!(
                        "WATCHDOG: `{what}` still running after {limit:?} — treating it as a \
                         hang. State: {}",
                        diag()
                    );
                    std::process::abort();
                }
            })
            .expect("spawn watchdog thread");
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A watchdog whose diagnosis is the context's stats.
    pub fn for_ctx(what: &str, ctx: &Arc<AioContext>) -> Self {
        let ctx = Arc::downgrade(ctx);
        Self::new(what, HANG_LIMIT, move || match ctx.upgrade() {
            Some(ctx) => format!("{:?}", ctx.stats()),
            None => "context dropped".to_owned(),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh context.
pub fn new_ctx() -> Arc<AioContext> {
    AioContext::new().expect("create an AioContext")
}

/// Spins (yielding) until `cond` holds; panics with `what` after `HANG_LIMIT`.
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
pub fn wait_asleep(ctx: &AioContext, n: u64) {
    wait_until("the loop to go to sleep", || ctx.stats().sleeps >= n);
    thread::sleep(Duration::from_millis(2));
}
