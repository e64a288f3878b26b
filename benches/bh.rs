//! Same-thread bottom half: schedule one and run it, pre-allocated and oneshot, against
//! floors — a `VecDeque` of boxed closures for the oneshot BH (which allocates), of
//! references to existing closures for the pre-allocated one (which does not) — and
//! tokio's local tasks: one scheduler pass per op (`poll(false)` / `yield_now`), and
//! 1024 ops per pass; and an empty `poll(false)`, the loop's fixed cost per pass.
//!
//! `BH_CPUTIME=1 cargo bench --bench bh` instead prints each row's thread-CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`, best of 15 runs of 100,000 ops) and the target ratios:
//! steadier than wall-clock figures when other processes share the cores.

use std::cell::Cell;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group};

#[path = "common/cputime.rs"]
mod cputime;

/// The callbacks' work: a plain increment, as the floors' `Cell` does (a BH callback
/// must be `Send`, hence the atomic; only the home thread runs these, so a load and a
/// store suffice and the rows do not pay a locked RMW that the floors do not).
fn bump(c: &AtomicU64) {
    // Relaxed: written and read by the home thread only.
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Operations per scheduler pass in the batch rows.
const BATCH: u64 = 1024;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("bh");

    // Floor: push a boxed closure (it captures a reference, so the box allocates), pop
    // it and call it.
    g.bench_function("vecdeque_floor", |b| {
        let count = Cell::new(0u64);
        let mut q: VecDeque<Box<dyn FnOnce() + '_>> = VecDeque::with_capacity(16);
        b.iter(|| {
            let c = &count;
            q.push_back(Box::new(move || c.set(c.get() + 1)));
            while let Some(f) = q.pop_front() {
                f();
            }
        });
        black_box(count.get());
    });

    // Floor of the pre-allocated BH, which allocates nothing per op: push a reference to
    // a closure that already exists, pop it and call it.
    g.bench_function("prealloc_floor", |b| {
        let count = Cell::new(0u64);
        let f = || count.set(count.get() + 1);
        let mut q: VecDeque<&dyn Fn()> = VecDeque::with_capacity(16);
        b.iter(|| {
            q.push_back(&f);
            while let Some(f) = q.pop_front() {
                f();
            }
        });
        black_box(count.get());
    });

    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let count = Arc::new(AtomicU64::new(0));
    let c2 = Arc::clone(&count);
    let bh = ctx.bh_new(move || {
        bump(&c2);
    });
    g.bench_function("aioctx_poll_empty", |b| b.iter(|| ctx.poll(false)));
    g.bench_function("aioctx_prealloc", |b| {
        b.iter(|| {
            bh.schedule();
            ctx.poll(false)
        })
    });
    drop(bh);
    g.bench_function("aioctx_oneshot", |b| {
        b.iter(|| {
            let c = Arc::clone(&count);
            ctx.schedule_oneshot(move || {
                bump(&c);
            });
            ctx.poll(false)
        })
    });
    // BATCH schedules, then one poll runs them all: the shape of the tokio batch row.
    g.bench_function("aioctx_oneshot_batch", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                for _ in 0..n {
                    let c = Arc::clone(&count);
                    ctx.schedule_oneshot(move || {
                        bump(&c);
                    });
                }
                ctx.poll(false);
                left -= n;
            }
            t.elapsed()
        })
    });
    black_box(count.load(Ordering::Relaxed));

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    g.bench_function("tokio_spawn_local", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let count = std::rc::Rc::new(Cell::new(0u64));
                let t = Instant::now();
                for _ in 0..iters {
                    let c = std::rc::Rc::clone(&count);
                    drop(tokio::task::spawn_local(async move { c.set(c.get() + 1) }));
                    // Lets the spawned task run before the next iteration.
                    tokio::task::yield_now().await;
                }
                let e = t.elapsed();
                assert_eq!(count.get(), iters);
                e
            })
        })
    });
    // spawn_local + run without a yield per op: BATCH tasks are spawned, then `yield_now`
    // lets the LocalSet run them (a tick runs a bounded number, so a batch may take a
    // few yields; the last ones are waited for before the clock stops).
    g.bench_function("tokio_spawn_local_batch", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let count = std::rc::Rc::new(Cell::new(0u64));
                let t = Instant::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    for _ in 0..n {
                        let c = std::rc::Rc::clone(&count);
                        drop(tokio::task::spawn_local(async move { c.set(c.get() + 1) }));
                    }
                    tokio::task::yield_now().await;
                    left -= n;
                }
                // The LocalSet runs a bounded number of tasks per tick: let it finish.
                while count.get() < iters {
                    tokio::task::yield_now().await;
                }
                let e = t.elapsed();
                assert_eq!(count.get(), iters);
                e
            })
        })
    });
    g.bench_function("tokio_yield_now", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    tokio::task::yield_now().await;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

/// Best thread-CPU nanoseconds per op over `RUNS` runs of `OPS` calls of `op`.
fn best_ns(mut op: impl FnMut()) -> f64 {
    const RUNS: usize = 15;
    const OPS: u64 = 100_000;
    for _ in 0..OPS / 10 {
        op();
    }
    (0..RUNS)
        .map(|_| {
            let t = cputime::thread_cpu_ns();
            for _ in 0..OPS {
                op();
            }
            (cputime::thread_cpu_ns() - t) as f64 / OPS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The `BH_CPUTIME=1` mode (see the module docs).
fn cpu_time_rows() {
    let count = Cell::new(0u64);
    let mut q: VecDeque<Box<dyn FnOnce() + '_>> = VecDeque::with_capacity(16);
    let floor = best_ns(|| {
        let c = &count;
        q.push_back(Box::new(move || c.set(c.get() + 1)));
        while let Some(f) = q.pop_front() {
            f();
        }
    });
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        bump(&r);
    });
    let empty = best_ns(|| {
        black_box(ctx.poll(false));
    });
    let prealloc = best_ns(|| {
        bh.schedule();
        black_box(ctx.poll(false));
    });
    let oneshot = best_ns(|| {
        let c = Arc::clone(&runs);
        ctx.schedule_oneshot(move || {
            bump(&c);
        });
        black_box(ctx.poll(false));
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let tokio = local.block_on(&rt, async {
        let count = std::rc::Rc::new(Cell::new(0u64));
        let mut best = f64::INFINITY;
        for _ in 0..15 {
            let t = cputime::thread_cpu_ns();
            for _ in 0..100_000 {
                let c = std::rc::Rc::clone(&count);
                drop(tokio::task::spawn_local(async move { c.set(c.get() + 1) }));
                tokio::task::yield_now().await;
            }
            best = best.min((cputime::thread_cpu_ns() - t) as f64 / 100_000.0);
        }
        best
    });
    black_box(count.get());
    println!("thread-CPU ns per op (best of 15 x 100,000):");
    println!("  boxed floor (VecDeque<Box<dyn FnOnce>>)   {floor:7.1}");
    println!("  empty poll(false)                         {empty:7.1}");
    println!(
        "  prealloc BH schedule + poll(false)        {prealloc:7.1}  {:.2}x floor (target <= 3)",
        prealloc / floor
    );
    println!(
        "  schedule_oneshot + poll(false)            {oneshot:7.1}  {:.2}x floor (target <= 4)",
        oneshot / floor
    );
    println!(
        "  tokio spawn_local + yield_now             {tokio:7.1}  prealloc BH {:.2}x faster (target >= 5)",
        tokio / prealloc
    );
}

fn main() {
    if std::env::var_os("BH_CPUTIME").is_some() {
        cpu_time_rows();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, bench);
