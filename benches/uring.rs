//! NOPs through the context's ring — the callback API (`submit_raw`) and the task API
//! (a future awaiting each NOP in `block_on`) — at batch 1 and 32, against a bare
//! io-uring crate loop doing the same. One iteration is one NOP.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use aioctx_aio::{AioContext, DEFAULT_RING_ENTRIES};
use criterion::{Criterion, criterion_group, criterion_main};
use io_uring::{IoUring, opcode};

static DONE: AtomicU64 = AtomicU64::new(0);

/// Submits `n` NOPs with callbacks and polls until they all completed.
fn callback_batch(ctx: &AioContext, n: u64) {
    // Relaxed: the callbacks run on this thread, inside `poll`.
    let target = DONE.load(Ordering::Relaxed) + n;
    for _ in 0..n {
        // SAFETY: a NOP names no memory.
        unsafe {
            ctx.submit_raw(
                opcode::Nop::new().build(),
                Box::new(|res, _| {
                    debug_assert_eq!(res, 0);
                    // Relaxed: read back on this thread.
                    DONE.fetch_add(1, Ordering::Relaxed);
                }),
            )
        }
        .expect("the uring bench needs the io_uring backend");
    }
    while DONE.load(Ordering::Relaxed) < target {
        ctx.poll(true);
    }
}

/// The completion a [`NopOp`] waits for.
#[derive(Default)]
struct NopSlot {
    res: Option<i32>,
    waker: Option<Waker>,
}

/// A NOP as a future: submitted at the first poll, woken by its completion callback.
struct NopOp {
    ctx: Arc<AioContext>,
    slot: Option<Arc<Mutex<NopSlot>>>,
}

fn nop(ctx: &Arc<AioContext>) -> NopOp {
    NopOp {
        ctx: Arc::clone(ctx),
        slot: None,
    }
}

impl Future for NopOp {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        match &self.slot {
            None => {
                let slot = Arc::new(Mutex::new(NopSlot {
                    res: None,
                    waker: Some(cx.waker().clone()),
                }));
                let s = Arc::clone(&slot);
                // SAFETY: a NOP names no memory.
                unsafe {
                    self.ctx.submit_raw(
                        opcode::Nop::new().build(),
                        Box::new(move |res, _| {
                            let w = {
                                let mut s = s.lock().unwrap();
                                s.res = Some(res);
                                s.waker.take()
                            };
                            if let Some(w) = w {
                                w.wake();
                            }
                        }),
                    )
                }
                .expect("the uring bench needs the io_uring backend");
                self.slot = Some(slot);
                Poll::Pending
            }
            Some(slot) => {
                let mut s = slot.lock().unwrap();
                match s.res {
                    Some(res) => Poll::Ready(res),
                    None => {
                        s.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

/// Awaits every NOP of `ops` (a minimal `join_all`).
struct JoinAll(Vec<Option<NopOp>>);

impl Future for JoinAll {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = false;
        for op in &mut self.0 {
            if let Some(f) = op {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(res) => {
                        assert_eq!(res, 0);
                        *op = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

fn bare_batch(ring: &mut IoUring, n: u64) {
    for _ in 0..n {
        // SAFETY: a NOP names no memory.
        unsafe { ring.submission().push(&opcode::Nop::new().build()).unwrap() };
    }
    ring.submit_and_wait(n as usize).unwrap();
    let mut got = 0;
    for cqe in ring.completion() {
        assert_eq!(cqe.result(), 0);
        got += 1;
    }
    assert_eq!(got, n);
}

/// Runs `iters` operations in batches of `batch` (the last one may be short).
fn batches(iters: u64, batch: u64, mut f: impl FnMut(u64)) {
    let mut left = iters;
    while left > 0 {
        let n = left.min(batch);
        f(n);
        left -= n;
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("uring");
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let mut ring = IoUring::new(DEFAULT_RING_ENTRIES).unwrap();
    for batch in [1u64, 32] {
        g.bench_function(format!("bare_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                batches(iters, batch, |n| bare_batch(&mut ring, n));
                t.elapsed()
            })
        });
        g.bench_function(format!("aioctx_callback_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                batches(iters, batch, |n| callback_batch(&ctx, n));
                t.elapsed()
            })
        });
        g.bench_function(format!("aioctx_task_b{batch}"), |b| {
            b.iter_custom(|iters| {
                ctx.block_on(async {
                    let t = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(batch);
                        if n == 1 {
                            assert_eq!(nop(&ctx).await, 0);
                        } else {
                            JoinAll((0..n).map(|_| Some(nop(&ctx))).collect()).await;
                        }
                        left -= n;
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
