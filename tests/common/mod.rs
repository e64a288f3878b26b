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

/// A watchdog with no diagnosis beyond its name, limited to `secs` seconds.
pub fn watchdog(what: &'static str, secs: u64) -> Watchdog {
    Watchdog::new(what, Duration::from_secs(secs), String::new)
}
/// A small deterministic PRNG (xorshift64*), enough for test randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// A file in the temp dir, removed on drop.
pub struct TempFile {
    pub path: std::path::PathBuf,
    pub file: std::fs::File,
}

pub fn tempfile(tag: &str) -> TempFile {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("aioctx-{tag}-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temp file");
    TempFile { path, file }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
pub fn uring_ctx(
    test: &str,
    builder: aioctx::aio::AioContextBuilder,
) -> Option<std::sync::Arc<aioctx::aio::AioContext>> {
    if std::env::var(aioctx::aio::BACKEND_ENV).is_ok_and(|v| v == "epoll") {
        say_skipped(&format!(
            "skipped {test}: needs io_uring, and this run selects epoll"
        ));
        return None;
    }
    match builder.backend(aioctx::aio::Backend::IoUring).build() {
        Ok(ctx) => Some(ctx),
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::ENOSYS) =>
        {
            say_skipped(&format!(
                "skipped {test}: io_uring is unavailable here: {e}"
            ));
            None
        }
        Err(e) => panic!("{test}: cannot set up io_uring: {e}"),
    }
}
