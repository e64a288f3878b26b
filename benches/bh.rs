//! Same-thread bottom half: schedule one and run it, pre-allocated and oneshot, against
//! a plain `VecDeque` of boxed closures (the floor) and tokio's local tasks.

use std::cell::Cell;
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group, criterion_main};

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
