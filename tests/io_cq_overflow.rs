//! More operations in flight than the completion queue has entries: the kernel parks
//! the excess CQEs on its overflow list (IORING_FEAT_NODROP) and the loop flushes
//! them; every completion is delivered exactly once.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use aioctx::aio::AioContext;
use aioctx::aio::io_uring::opcode;

fn small_ring(test: &str) -> Option<Arc<AioContext>> {
    let ctx = common::uring_ctx(test, AioContext::builder().ring_entries(4))?;
    let (sq, cq) = ctx.ring_entries();
    assert_eq!(sq, 4);
    assert!(cq <= 8, "expected a small CQ, got {cq}");
    Some(ctx)
}

/// 64 one-byte reads of a pipe wait in the kernel, then one write satisfies all of
/// them at once: 64 CQEs land on an 8-entry CQ.
#[test]
fn cq_overflow_pipe_reads_each_complete_exactly_once() {
    let _wd = common::Watchdog::arm_secs(60);
    const N: usize = 64;
    let Some(ctx) = small_ring("cq_overflow_pipe_reads_each_complete_exactly_once") else {
        return;
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these descriptors; we own them.
    let (rd, mut wr) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let mut ops: Vec<_> = (0..N)
        .map(|_| Some(ctx.read_at(rd.as_raw_fd(), vec![0u8; 1], 0)))
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    for op in ops.iter_mut().flatten() {
        assert!(Pin::new(op).poll(&mut cx).is_pending());
    }
    ctx.poll(false); // submit them all; they block in the kernel
    let cqes_before = ctx.stats().cqes;
    let bytes: Vec<u8> = (0..N as u8).collect();
    wr.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while got.len() < N {
        assert!(
            std::time::Instant::now() < deadline,
            "completions lost: {} of {N}",
            got.len()
        );
        ctx.poll(true);
        for slot in ops.iter_mut() {
            if let Some(op) = slot
                && let Poll::Ready((res, buf)) = Pin::new(op).poll(&mut cx)
            {
                assert_eq!(res.unwrap(), 1);
                got.push(buf[0]);
                *slot = None;
            }
        }
    }
    got.sort_unstable();
    assert_eq!(got, bytes, "each byte read exactly once");
    assert!(ctx.stats().cqes - cqes_before >= N as u64);
    assert!(!ctx.poll(false));
}

/// 10,000 NOPs pushed on a 4-entry SQ (submitted whenever it fills) complete on an
/// 8-entry CQ; half come from another thread. Every callback runs exactly once.
#[test]
fn cq_overflow_nops_each_complete_exactly_once() {
    let _wd = common::Watchdog::arm_secs(60);
    const N: usize = 10_000;
    let Some(ctx) = small_ring("cq_overflow_nops_each_complete_exactly_once") else {
        return;
    };
    let hits: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let submit = |ctx: &AioContext, range: std::ops::Range<usize>| {
        for i in range {
            let hits = Arc::clone(&hits);
            // SAFETY: a NOP names no memory.
            unsafe {
                ctx.submit_raw(
                    opcode::Nop::new().build(),
                    Box::new(move |res, _| {
                        assert_eq!(res, 0);
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }),
                )
            }
            .expect("submit_raw on io_uring");
        }
    };
    submit(&ctx, 0..N / 2);
    std::thread::scope(|s| {
        s.spawn(|| submit(&ctx, N / 2..N));
    });
    let total = || hits.iter().map(|h| h.load(Ordering::Relaxed)).sum::<u32>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while total() < N as u32 {
        assert!(
            std::time::Instant::now() < deadline,
            "completions lost: {}",
            total()
        );
        ctx.poll(true);
    }
    while ctx.poll(false) {}
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(
            h.load(Ordering::Relaxed),
            1,
            "NOP {i} completed {} times",
            h.load(Ordering::Relaxed)
        );
    }
}
