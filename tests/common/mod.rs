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

/// A new pipe, `(read end, write end)`, both close-on-exec.
pub fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let res = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(res, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Writes all of `data` to `fd` in one `write(2)`, or fails the test.
pub fn write_fd(fd: std::os::fd::RawFd, data: &[u8]) {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `fut` once with a no-op waker.
pub fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(fut).poll(&mut cx)
}

/// Runs `rescue` on its own thread after `grace` unless dropped (or finished) first:
/// a test that would hang unblocks its wait from outside and then fails with a
/// diagnosis, instead of leaving the watchdog to abort the whole binary.
pub struct Rescue {
    tx: Option<mpsc::Sender<()>>,
    fired: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rescue {
    /// Arms `rescue` to run after `grace`.
    pub fn after(grace: Duration, rescue: impl FnOnce() + Send + 'static) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&fired);
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(grace) {
                // SeqCst: read by `fired` on the test's thread (no other pairing).
                f.store(true, Ordering::SeqCst);
                rescue();
            }
        });
        Self {
            tx: Some(tx),
            fired,
            thread: Some(thread),
        }
    }

    /// Whether the rescue ran (so far).
    pub fn fired(&self) -> bool {
        // SeqCst: pairs with the store in `after`'s thread.
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the rescue, waiting for it if it is running; whether it ran.
    pub fn finish(mut self) -> bool {
        self.stop();
        self.fired()
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Rescue {
    fn drop(&mut self) {
        self.stop();
    }
}
