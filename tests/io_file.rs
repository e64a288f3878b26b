//! File I/O through the typed ring ops: bulk write/read-back at queue depth 32,
//! fsync, short reads, errors, and futures dropped mid-flight (buffers outlive them
//! until the CQE, then are freed: run this file under ASan to check).
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use aioctx::aio::{AioContext, IoBuf, IoBufMut};

const BLOCK: usize = 64 * 1024;
const FILE_SIZE: usize = 64 * 1024 * 1024;
const QUEUE_DEPTH: usize = 32;

fn fill(block: usize, buf: &mut [u8]) {
    let mut rng = common::Rng::new(block as u64 + 7);
    for chunk in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes 64 MiB in 64 KiB blocks in random order at queue depth 32 (32 tasks, each
/// with one write in flight), fsyncs, reads everything back in another random order
/// at the same depth, and checks every byte.
#[test]
fn write_then_read_back_64mib_qd32_random_offsets() {
    let _wd = common::watchdog("write_then_read_back_64mib", 300);
    let tmp = common::tempfile("bulk");
    let fd = tmp.file.as_raw_fd();
    let ctx = AioContext::new().unwrap();
    let blocks = FILE_SIZE / BLOCK;
    let mut order: Vec<usize> = (0..blocks).collect();
    common::Rng::new(1).shuffle(&mut order);

    let run = |order: Vec<usize>, write: bool| {
        let order = Arc::new(order);
        let next = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..QUEUE_DEPTH)
            .map(|_| {
                let (order, next, c) = (Arc::clone(&order), Arc::clone(&next), ctx.arc());
                ctx.spawn(async move {
                    let mut buf = vec![0u8; BLOCK];
                    let mut expect = vec![0u8; BLOCK];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&block) = order.get(i) else { break };
                        let off = (block * BLOCK) as u64;
                        if write {
                            fill(block, &mut buf);
                            let (res, b) = c.write_at(fd, buf, off).await;
                            assert_eq!(res.unwrap(), BLOCK, "short write at block {block}");
                            buf = b;
                        } else {
                            buf.fill(0);
                            let (res, b) = c.read_at(fd, buf, off).await;
                            assert_eq!(res.unwrap(), BLOCK, "short read at block {block}");
                            fill(block, &mut expect);
                            assert!(b == expect, "block {block} read back wrong bytes");
                            buf = b;
                        }
                    }
                })
            })
            .collect();
        ctx.block_on(async {
            for h in handles {
                h.await.unwrap();
            }
        });
    };
    run(order.clone(), true);
    ctx.block_on(ctx.fsync(fd)).unwrap();
    assert_eq!(tmp.file.metadata().unwrap().len(), FILE_SIZE as u64);
    common::Rng::new(2).shuffle(&mut order);
    run(order, false);
}

#[test]
fn fsync_and_fdatasync_succeed_on_a_file() {
    let tmp = common::tempfile("sync");
    let fd = tmp.file.as_raw_fd();
    let ctx = AioContext::new().unwrap();
    let (res, _) = ctx.block_on(ctx.write_at(fd, vec![1u8; 4096], 0));
    assert_eq!(res.unwrap(), 4096);
    ctx.block_on(ctx.fsync(fd)).unwrap();
    ctx.block_on(ctx.fdatasync(fd)).unwrap();
}

#[test]
fn short_read_at_eof_and_zero_past_it() {
    let tmp = common::tempfile("eof");
    let fd = tmp.file.as_raw_fd();
    let ctx = AioContext::new().unwrap();
    let (res, _) = ctx.block_on(ctx.write_at(fd, b"0123456789".to_vec(), 0));
    assert_eq!(res.unwrap(), 10);
    let (res, buf) = ctx.block_on(ctx.read_at(fd, vec![0xAAu8; 64], 4));
    assert_eq!(res.unwrap(), 6);
    assert_eq!(&buf[..6], b"456789");
    assert!(
        buf[6..].iter().all(|&b| b == 0xAA),
        "bytes past the read are untouched"
    );
    assert_eq!(buf.len(), 64, "the buffer's length is unchanged");
    let (res, _) = ctx.block_on(ctx.read_at(fd, vec![0u8; 64], 100));
    assert_eq!(res.unwrap(), 0);
}

#[test]
fn readv_and_writev_round_trip() {
    let tmp = common::tempfile("vec");
    let fd = tmp.file.as_raw_fd();
    let ctx = AioContext::new().unwrap();
    let bufs = vec![vec![1u8; 3], vec![2u8; 5], vec![3u8; 4096]];
    let (res, back) = ctx.block_on(ctx.writev_at(fd, bufs, 10));
    assert_eq!(res.unwrap(), 3 + 5 + 4096);
    assert_eq!(back.len(), 3);
    let (res, got) = ctx.block_on(ctx.readv_at(fd, vec![vec![0u8; 2], vec![0u8; 4102]], 10));
    assert_eq!(res.unwrap(), 4104);
    assert_eq!(got[0], [1, 1]);
    assert_eq!(got[1][..6], [1, 2, 2, 2, 2, 2]);
    assert!(got[1][6..].iter().all(|&b| b == 3));
}

/// An fd number that is surely not open: above everything this process opens, and
/// closed before use.
fn closed_fd() -> RawFd {
    let tmp = common::tempfile("closed");
    // SAFETY: F_DUPFD on a valid fd returns a new descriptor we own.
    let fd = unsafe { libc::fcntl(tmp.file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4000) };
    assert!(
        fd >= 4000,
        "F_DUPFD failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: we own `fd` (just duplicated) and close it once.
    assert_eq!(unsafe { libc::close(fd) }, 0);
    fd
}

#[test]
fn read_on_a_closed_fd_returns_the_error_and_the_buffer() {
    let ctx = AioContext::new().unwrap();
    let fd = closed_fd();
    let (res, buf) = ctx.block_on(ctx.read_at(fd, vec![7u8; 16], 0));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert_eq!(buf, [7u8; 16]);
    let (res, _) = ctx.block_on(ctx.write_at(fd, vec![7u8; 16], 0));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert_eq!(
        ctx.block_on(ctx.fsync(fd)).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A heap buffer that counts live instances, so the tests can see every buffer freed.
struct Tracked(Vec<u8>);

impl Tracked {
    fn new(len: usize) -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self(vec![0u8; len])
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

// SAFETY: delegates to `Vec<u8>`, whose heap bytes do not move with the value.
unsafe impl IoBuf for Tracked {
    fn stable_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Tracked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
}

/// Polls `f` once with a no-op waker (that submits a ring op).
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 just returned these descriptors; we own them.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn poll_until(ctx: &AioContext, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        ctx.poll(true);
    }
}

/// 10,000 futures dropped mid-flight: buffers stay alive until their CQE (the kernel
/// writes into them after the drop), then are freed; none leaks. Three ways: reads of
/// a file, reads of a pipe completed after the drop, and reads cancelled by dropping
/// the context.
#[test]
fn ten_thousand_futures_dropped_mid_flight() {
    let _wd = common::watchdog("ten_thousand_futures_dropped_mid_flight", 120);
    let _serial = TRACKED_TESTS.lock().unwrap();
    let tmp = common::tempfile("drop");
    let fd = tmp.file.as_raw_fd();
    std::fs::write(&tmp.path, vec![0x5Au8; 16 * 4096]).unwrap();
    let ctx = AioContext::new().unwrap();
    let base = LIVE.load(Ordering::Relaxed);

    // 1. File reads: submitted, then the futures dropped at once.
    for i in 0..5_000u64 {
        let mut op = ctx.read_at(fd, Tracked::new(4096), (i % 16) * 4096);
        let _ = poll_once(&mut op);
        drop(op);
        if i % 512 == 0 {
            ctx.poll(false);
        }
    }
    poll_until(&ctx, "file reads dropped mid-flight complete", || {
        LIVE.load(Ordering::Relaxed) == base
    });

    // 2. Pipe reads: in flight until the write below, long after their futures died.
    let (rd, mut wr) = pipe();
    let ops: Vec<_> = (0..4_000)
        .map(|_| {
            let mut op = ctx.read_at(rd.as_raw_fd(), Tracked::new(1), 0);
            assert!(poll_once(&mut op).is_pending());
            op
        })
        .collect();
    ctx.poll(false);
    drop(ops);
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        base + 4_000,
        "buffers freed before their CQE"
    );
    use std::io::Write;
    wr.write_all(&[0xEEu8; 4_000]).unwrap();
    poll_until(&ctx, "pipe reads dropped mid-flight complete", || {
        LIVE.load(Ordering::Relaxed) == base
    });

    // 3. Reads that never complete: dropping the context cancels and reaps them.
    let (rd2, _wr2) = pipe();
    let mut kept: Vec<_> = (0..500)
        .map(|_| {
            let mut op = ctx.read_at(rd2.as_raw_fd(), Tracked::new(8), 0);
            assert!(poll_once(&mut op).is_pending());
            op
        })
        .collect();
    let dropped: Vec<_> = (0..500)
        .map(|_| {
            let mut op = ctx.read_at(rd2.as_raw_fd(), Tracked::new(8), 0);
            assert!(poll_once(&mut op).is_pending());
            op
        })
        .collect();
    ctx.poll(false);
    drop(dropped);
    drop(ctx);
    // The kept futures get their buffers back with ECANCELED.
    for op in &mut kept {
        match poll_once(op) {
            Poll::Ready((res, buf)) => {
                assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
                drop(buf);
            }
            Poll::Pending => panic!("an op of a dropped context is still pending"),
        }
    }
    drop(kept);
    assert_eq!(LIVE.load(Ordering::Relaxed), base, "buffers leaked");
    drop(rd);
}

/// Serializes the tests that count `Tracked` buffers.
static TRACKED_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A task dropped (with its context) while its read is in flight frees the buffer only
/// after the kernel is done.
#[test]
fn task_dropped_with_io_in_flight() {
    let _wd = common::watchdog("task_dropped_with_io_in_flight", 60);
    let _serial = TRACKED_TESTS.lock().unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    let ctx = AioContext::new().unwrap();
    let (rd, _wr) = pipe();
    let fd = rd.as_raw_fd();
    // The task reaches its context through `current()`, not a captured `Arc`: a
    // parked task that owned an `Arc` of its context would keep it alive.
    let h = ctx.spawn(async move {
        let op = aioctx::aio::current().read_at(fd, Tracked::new(32), 0);
        let (res, _buf) = op.await;
        res.map(|_| ())
    });
    while ctx.poll(false) {}
    assert_eq!(LIVE.load(Ordering::Relaxed), base + 1);
    drop(h);
    drop(ctx);
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        base,
        "buffer leaked with its task"
    );
}

/// Ops created on this thread may be awaited from a task on another context's thread:
/// the submission is handed over and that loop is notified.
#[test]
fn op_submitted_from_another_thread_notifies_the_loop() {
    let _wd = common::watchdog("op_submitted_from_another_thread", 60);
    let io = aioctx::aio::IoThread::new("io-submit").unwrap();
    let tmp = common::tempfile("remote");
    std::fs::write(&tmp.path, b"remote submit").unwrap();
    let fd = tmp.file.as_raw_fd();
    let op = io.ctx().read_at(fd, vec![0u8; 6], 7);
    let ctx = AioContext::new().unwrap();
    let (res, buf) = ctx.block_on(op);
    assert_eq!(res.unwrap(), 6);
    assert_eq!(buf, b"submit");
}
