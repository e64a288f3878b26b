//! Graph lock read side: an rdlock + rdunlock pair in a task with no writer, under both
//! unlock-kick policies, against std's and parking_lot's `RwLock::read`; and two threads
//! reading at once, each on its own context, against two threads sharing a std
//! `RwLock` (the per-thread counters must not bounce a cache line). One iteration is
//! one lock + unlock pair (per thread, in the two-thread cases). The rows run in the
//! process's fence mode (`AIOCTX_FENCES`, else asymmetric where membarrier works);
//! `aioctx kickstat --fences MODE` has the same rows in either mode.

use std::hint::black_box;
use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use aioctx_aio::AioContext;
use aioctx_graph::{UnlockKick, graph_lock};
use criterion::{Criterion, criterion_group, criterion_main};

/// `iters` rdlock/rdunlock pairs in a task blocked on with `ctx`.
fn rdlock_pairs(ctx: &AioContext, iters: u64) -> Duration {
    let lock = graph_lock();
    ctx.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            let guard = lock.rdlock().await;
            black_box(&guard);
            drop(guard);
        }
        t.elapsed()
    })
}

/// Runs `f(iters)` on two threads at once (started by a barrier); the slower thread's
/// time.
fn two_threads(iters: u64, f: impl Fn(u64) -> Duration + Sync) -> Duration {
    std::thread::scope(|s| {
        let h: Vec<_> = (0..2).map(|_| s.spawn(|| f(iters))).collect();
        h.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("graph");
    let lock = graph_lock();
    let ctx = AioContext::new().unwrap();
    ctx.make_current();

    for (name, policy) in [
        ("aioctx_rdlock_always", UnlockKick::Always),
        ("aioctx_rdlock_when_writer_seen", UnlockKick::WhenWriterSeen),
    ] {
        lock.set_unlock_kick(policy);
        g.bench_function(name, |b| b.iter_custom(|iters| rdlock_pairs(&ctx, iters)));
    }
    lock.set_unlock_kick(UnlockKick::Always);

    let std_lock = RwLock::new(0u64);
    g.bench_function("std_rwlock_read", |b| {
        b.iter(|| {
            let guard = std_lock.read().unwrap();
            black_box(*guard)
        })
    });
    let pl_lock = parking_lot::RwLock::new(0u64);
    g.bench_function("parking_lot_rwlock_read", |b| {
        b.iter(|| {
            let guard = pl_lock.read();
            black_box(*guard)
        })
    });

    g.bench_function("aioctx_rdlock_two_threads", |b| {
        b.iter_custom(|iters| {
            let ready = Barrier::new(2);
            two_threads(iters, |n| {
                let ctx = AioContext::new().unwrap();
                ctx.make_current();
                // Registers this thread's counter before the clock starts.
                rdlock_pairs(&ctx, 1);
                ready.wait();
                rdlock_pairs(&ctx, n)
            })
        })
    });
    g.bench_function("std_rwlock_read_two_threads", |b| {
        b.iter_custom(|iters| {
            let ready = Barrier::new(2);
            two_threads(iters, |n| {
                ready.wait();
                let t = Instant::now();
                for _ in 0..n {
                    let guard = std_lock.read().unwrap();
                    black_box(*guard);
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
