//! Tasks on one thread against tokio: spawn + run + join (a context's `spawn` awaited
//! in `block_on` vs `LocalSet::spawn_local` awaited in its `block_on`), and the
//! same-thread wake (a task that wakes itself and returns `Pending`: one
//! `waker.wake_by_ref()` + the task's next poll) on a context vs on tokio's
//! current_thread runtime. One iteration is one spawn+join, or one wake + poll.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use aioctx_aio::AioContext;
use criterion::{Criterion, criterion_group, criterion_main};

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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tasks");
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();

    g.bench_function("aioctx_spawn_join", |b| {
        b.iter_custom(|iters| {
            ctx.block_on(async {
                let t = Instant::now();
                for i in 0..iters {
                    let v = ctx.spawn(async move { i }).await.unwrap();
                    black_box(v);
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("tokio_spawn_local_join", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let t = Instant::now();
                for i in 0..iters {
                    let v = tokio::task::spawn_local(async move { i }).await.unwrap();
                    black_box(v);
                }
                t.elapsed()
            })
        })
    });

    g.bench_function("aioctx_wake_same_thread", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let task = ctx.spawn(SelfWake { left: iters });
            ctx.block_on(task).unwrap();
            t.elapsed()
        })
    });
    g.bench_function("tokio_wake_same_thread", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                tokio::spawn(SelfWake { left: iters }).await.unwrap();
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
