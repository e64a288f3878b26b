//! NOPs through the context's ring — the callback API (`submit_raw` with a boxed
//! callback per NOP, and `submit_raw_handler` with one kept handler) and the task API
//! (a future awaiting each NOP in `block_on`) — at batch 1 and 32, against a bare
//! io-uring crate loop doing the same. One iteration is one NOP.
//!
//! `BENCH_CLOCK=thread` times every row in the measuring thread's CPU time instead of
//! wall time (for a shared, loaded machine).
//!
//! The `loop_event` group times the loop's overhead per event: each iteration is one
//! bottom half, one NOP and one (already due) timer, run by blocking polls, against a
//! hand-written io-uring crate loop that does the same three things: a queue of
//! callbacks it runs, a NOP it submits and reaps with a callback, and a timer heap it
//! checks against the clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use aioctx_aio::{AioContext, ClockType, CompletionHandler, DEFAULT_RING_ENTRIES};
use criterion::{Criterion, criterion_group, criterion_main};
use io_uring::{IoUring, opcode};

#[path = "common/cputime.rs"]
mod cputime;

static DONE: AtomicU64 = AtomicU64::new(0);

/// The clock of every row: wall time, or with `BENCH_CLOCK=thread` the measuring
/// thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which time other processes take on
/// a shared machine does not inflate. Every row here runs on the measuring thread (the
/// NOPs complete inline, inside its `io_uring_enter`), so both clocks see all its work.
fn stamp() -> Duration {
    static THREAD: OnceLock<bool> = OnceLock::new();
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    if *THREAD.get_or_init(|| std::env::var("BENCH_CLOCK").is_ok_and(|v| v == "thread")) {
        Duration::from_nanos(cputime::thread_cpu_ns())
    } else {
        EPOCH.get_or_init(Instant::now).elapsed()
    }
}

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

/// The kept handler of the `aioctx_handler_*` rows: the same count, no allocation per
/// NOP.
struct Counter;

impl CompletionHandler for Counter {
    fn complete(&self, res: i32, _flags: u32) {
        debug_assert_eq!(res, 0);
        // Relaxed: read back on this thread.
        DONE.fetch_add(1, Ordering::Relaxed);
    }
}

/// Submits `n` NOPs with a kept handler and polls until they all completed.
fn handler_batch(ctx: &AioContext, handler: &Arc<Counter>, n: u64) {
    // Relaxed: the handler runs on this thread, inside `poll`.
    let target = DONE.load(Ordering::Relaxed) + n;
    for _ in 0..n {
        // SAFETY: a NOP names no memory.
        unsafe { ctx.submit_raw_handler(opcode::Nop::new().build(), Arc::clone(handler)) }
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
                let t = stamp();
                batches(iters, batch, |n| bare_batch(&mut ring, n));
                stamp() - t
            })
        });
        g.bench_function(format!("aioctx_callback_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let t = stamp();
                batches(iters, batch, |n| callback_batch(&ctx, n));
                stamp() - t
            })
        });
        let handler = Arc::new(Counter);
        g.bench_function(format!("aioctx_handler_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let t = stamp();
                batches(iters, batch, |n| handler_batch(&ctx, &handler, n));
                stamp() - t
            })
        });
        g.bench_function(format!("aioctx_task_b{batch}"), |b| {
            b.iter_custom(|iters| {
                ctx.block_on(async {
                    let t = stamp();
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
                    stamp() - t
                })
            })
        });
    }
    g.finish();
    loop_event(c, &ctx);
}

/// See the module docs: one BH + one NOP + one due timer per iteration.
fn loop_event(c: &mut Criterion, ctx: &Arc<AioContext>) {
    let mut g = c.benchmark_group("loop_event");
    let mut ring = IoUring::new(DEFAULT_RING_ENTRIES).unwrap();
    g.bench_function("bare_event", |b| {
        let events = Cell::new(0u64);
        let bh = || events.set(events.get() + 1);
        let timer_cb = || events.set(events.get() + 1);
        let mut bhs: VecDeque<&dyn Fn()> = VecDeque::with_capacity(16);
        let mut timers: BinaryHeap<Reverse<i64>> = BinaryHeap::with_capacity(16);
        b.iter_custom(|iters| {
            let t = stamp();
            for _ in 0..iters {
                let target = events.get() + 3;
                bhs.push_back(&bh);
                // SAFETY: a NOP names no memory.
                unsafe {
                    ring.submission()
                        .push(&opcode::Nop::new().build().user_data(7))
                }
                .unwrap();
                timers.push(Reverse(ClockType::Realtime.now_ns()));
                while events.get() < target {
                    while let Some(f) = bhs.pop_front() {
                        f();
                    }
                    ring.submit_and_wait(1).unwrap();
                    for cqe in ring.completion() {
                        assert_eq!(cqe.user_data(), 7);
                        events.set(events.get() + 1);
                    }
                    if !timers.is_empty() {
                        let now = ClockType::Realtime.now_ns();
                        while timers.peek().is_some_and(|Reverse(d)| *d <= now) {
                            timers.pop();
                            timer_cb();
                        }
                    }
                }
            }
            stamp() - t
        })
    });
    g.bench_function("aioctx_event", |b| {
        let events = Arc::new(AtomicU64::new(0));
        let e = Arc::clone(&events);
        let bh = ctx.bh_new(move || {
            // Relaxed: read back on this thread.
            e.fetch_add(1, Ordering::Relaxed);
        });
        let e = Arc::clone(&events);
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            // Relaxed: read back on this thread.
            e.fetch_add(1, Ordering::Relaxed);
        });
        b.iter_custom(|iters| {
            let t = stamp();
            for _ in 0..iters {
                // Relaxed: every event runs on this thread, inside `poll`.
                let target = events.load(Ordering::Relaxed) + 3;
                bh.schedule();
                let e = Arc::clone(&events);
                // SAFETY: a NOP names no memory.
                unsafe {
                    ctx.submit_raw(
                        opcode::Nop::new().build(),
                        Box::new(move |res, _| {
                            debug_assert_eq!(res, 0);
                            // Relaxed: read back on this thread.
                            e.fetch_add(1, Ordering::Relaxed);
                        }),
                    )
                }
                .expect("the uring bench needs the io_uring backend");
                timer.modify(ClockType::Realtime.now_ns());
                while events.load(Ordering::Relaxed) < target {
                    ctx.poll(true);
                }
            }
            stamp() - t
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
