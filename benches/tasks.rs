//! Tasks on one thread against tokio: spawn + run + join (a context's `spawn` awaited
//! in `block_on` vs `LocalSet::spawn_local` awaited in its `block_on`), and the
//! same-thread wake (a task that wakes itself and returns `Pending`: one
//! `waker.wake_by_ref()` + the task's next poll) on a context vs on tokio's
//! current_thread runtime. One iteration is one spawn+join, or one wake + poll.
//! `aioctx_block_on_yield` is `block_on`'s own wake: a `yield_now` awaited directly in
//! `block_on` (one wake of `block_on`'s waker + one loop pass + one poll of its future),
//! against tokio's current_thread `block_on` doing the same.
//!
//! On a shared machine, `TASKS_CPU_TIME=1 cargo bench --bench tasks` measures the same
//! rows in thread CPU time instead (`CLOCK_THREAD_CPUTIME_ID`, best of 15 runs of
//! 100,000 operations each, all rows interleaved), which other processes disturb far
//! less than wall-clock time, and prints the ratios.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group};
use tokio::runtime::Runtime;
use tokio::task::LocalSet;

#[path = "common/cputime.rs"]
mod cputime;

/// Wakes its own task `left` times (returning `Pending` each time), then completes.
struct SelfWake {
    left: u64,
}

impl Future for SelfWake {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One spawn + run + join per iteration, timed inside `block_on`.
fn aioctx_spawn_join(ctx: &AioContext, iters: u64) -> Duration {
    ctx.block_on(async {
        let t = Instant::now();
        for i in 0..iters {
            black_box(ctx.spawn(async move { i }).await.unwrap());
        }
        t.elapsed()
    })
}

fn tokio_spawn_local_join(rt: &Runtime, local: &LocalSet, iters: u64) -> Duration {
    local.block_on(rt, async {
        let t = Instant::now();
        for i in 0..iters {
            black_box(tokio::task::spawn_local(async move { i }).await.unwrap());
        }
        t.elapsed()
    })
}

/// One same-thread wake + poll of a task per iteration.
fn aioctx_wake_same_thread(ctx: &AioContext, iters: u64) -> Duration {
    let t = Instant::now();
    ctx.block_on(ctx.spawn(SelfWake { left: iters })).unwrap();
    t.elapsed()
}

fn tokio_wake_same_thread(rt: &Runtime, iters: u64) -> Duration {
    rt.block_on(async {
        let t = Instant::now();
        tokio::spawn(SelfWake { left: iters }).await.unwrap();
        t.elapsed()
    })
}

/// One wake of `block_on`'s own waker + one loop pass + one poll per iteration.
fn aioctx_block_on_yield(ctx: &AioContext, iters: u64) -> Duration {
    ctx.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            aioctx_aio::yield_now().await;
        }
        t.elapsed()
    })
}

fn tokio_block_on_yield(rt: &Runtime, iters: u64) -> Duration {
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            tokio::task::yield_now().await;
        }
        t.elapsed()
    })
}

/// A row: its name and its timed loop.
type Row<'a> = (&'static str, Box<dyn Fn(u64) -> Duration + 'a>);

/// The rows, in aioctx / tokio pairs, on one context and one tokio runtime.
fn rows<'a>(ctx: &'a AioContext, rt: &'a Runtime, local: &'a LocalSet) -> Vec<Row<'a>> {
    vec![
        ("aioctx_spawn_join", Box::new(|n| aioctx_spawn_join(ctx, n))),
        (
            "tokio_spawn_local_join",
            Box::new(|n| tokio_spawn_local_join(rt, local, n)),
        ),
        (
            "aioctx_wake_same_thread",
            Box::new(|n| aioctx_wake_same_thread(ctx, n)),
        ),
        (
            "tokio_wake_same_thread",
            Box::new(|n| tokio_wake_same_thread(rt, n)),
        ),
        (
            "aioctx_block_on_yield",
            Box::new(|n| aioctx_block_on_yield(ctx, n)),
        ),
        (
            "tokio_block_on_yield",
            Box::new(|n| tokio_block_on_yield(rt, n)),
        ),
    ]
}

fn runtime() -> (std::sync::Arc<AioContext>, Runtime, LocalSet) {
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (ctx, rt, LocalSet::new())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tasks");
    let (ctx, rt, local) = runtime();
    for (name, run) in rows(&ctx, &rt, &local) {
        g.bench_function(name, |b| b.iter_custom(&run));
    }
    g.finish();
}

/// `TASKS_CPU_TIME=1`: the rows in thread CPU time (see the module docs).
fn cpu_time() {
    const OPS: u64 = 100_000;
    const RUNS: usize = 15;
    let (ctx, rt, local) = runtime();
    let rows = rows(&ctx, &rt, &local);
    let mut best = vec![u64::MAX; rows.len()];
    for _ in 0..RUNS {
        for (i, (_, run)) in rows.iter().enumerate() {
            let t = cputime::thread_cpu_ns();
            run(OPS);
            best[i] = best[i].min(cputime::thread_cpu_ns() - t);
        }
    }
    let per_op = |i: usize| best[i] as f64 / OPS as f64;
    for (i, (name, _)) in rows.iter().enumerate() {
        println!(
            "{name:<26} {:>8.1} ns/op (thread CPU, best of {RUNS})",
            per_op(i)
        );
    }
    for i in (0..rows.len()).step_by(2) {
        let ratio = per_op(i) / per_op(i + 1);
        println!("{} / {}: {ratio:.2}x", rows[i].0, rows[i + 1].0);
    }
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var_os("TASKS_CPU_TIME").is_some() {
        cpu_time();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
