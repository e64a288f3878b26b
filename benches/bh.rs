//! Same-thread bottom half: schedule one and run it, pre-allocated and oneshot, against
//! floors — a `VecDeque` of boxed closures for the oneshot BH (which allocates), of
//! references to existing closures for the pre-allocated one (which does not) — and
//! tokio's local tasks: one scheduler pass per op (`poll(false)` / `yield_now`), and
//! 1024 ops per pass.

use std::cell::Cell;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group, criterion_main};

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
        // Relaxed: a counter read on this thread.
        c2.fetch_add(1, Ordering::Relaxed);
    });
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
                // Relaxed: a counter read on this thread.
                c.fetch_add(1, Ordering::Relaxed);
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
                        // Relaxed: a counter read on this thread.
                        c.fetch_add(1, Ordering::Relaxed);
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

criterion_group!(benches, bench);
criterion_main!(benches);
