//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

/// Aborts the process with `what` if it is not dropped within `secs` seconds: a hang
/// becomes a failure with a diagnosis instead of a stuck CI.
pub struct Watchdog(Option<mpsc::Sender<()>>);

pub fn watchdog(what: &'static str, secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("watchdog:{what}"))
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!(
                    "WATCHDOG: `{what}` did not finish within {secs} s: hang (lost wake-up?)"
                );
                std::process::abort();
            }
        })
        .expect("spawn watchdog");
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
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

/// A context on io_uring, for tests of io_uring itself (raw SQEs, CQ overflow, ring
/// sizes and stats). `None`, with a printed "skipped" line, when this run selects the
/// epoll backend (`AIOCTX_BACKEND=epoll`: the io_uring pass covers the test) or when
/// io_uring is unavailable here (e.g. under `no_uring`).
pub fn uring_ctx(
    test: &str,
    builder: aioctx::aio::AioContextBuilder,
) -> Option<std::sync::Arc<aioctx::aio::AioContext>> {
    if std::env::var(aioctx::aio::BACKEND_ENV).is_ok_and(|v| v == "epoll") {
        println!("skipped {test}: needs io_uring, and this run selects epoll");
        return None;
    }
    match builder.backend(aioctx::aio::Backend::IoUring).build() {
        Ok(ctx) => Some(ctx),
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::ENOSYS) =>
        {
            println!("skipped {test}: io_uring is unavailable here: {e}");
            None
        }
        Err(e) => panic!("{test}: cannot set up io_uring: {e}"),
    }
}
