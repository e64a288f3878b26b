//! The bottom-half ping-pong between two IoThreads that `wake.rs` and `setup.rs` time:
//! one iteration is a round trip A → B → A, each hop a BH the other thread schedules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

use aioctx_aio::{AioContextBuilder, Bh, IoThread};
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;

/// Times the round trip as `name` in `g`, on two IoThreads built by `builder`.
pub fn bench(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, builder: &AioContextBuilder) {
    let a = IoThread::with_builder("ping", builder.clone()).expect("the ping IoThread");
    let b = IoThread::with_builder("pong", builder.clone()).expect("the pong IoThread");
    let bh_a: Arc<OnceLock<Bh>> = Arc::new(OnceLock::new());
    let bh_b: Arc<OnceLock<Bh>> = Arc::new(OnceLock::new());
    let remaining = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    {
        let (bh_b, remaining) = (Arc::clone(&bh_b), Arc::clone(&remaining));
        let bh = a.ctx().bh_new(move || {
            // Relaxed: only ping's thread changes the count while a batch runs; the
            // batch's start and end travel through the BH queues and the channel.
            if remaining.fetch_sub(1, Ordering::Relaxed) == 1 {
                done_tx.send(()).unwrap();
            } else {
                bh_b.get().unwrap().schedule();
            }
        });
        assert!(bh_a.set(bh).is_ok());
    }
    {
        let bh_a = Arc::clone(&bh_a);
        let bh = b.ctx().bh_new(move || bh_a.get().unwrap().schedule());
        assert!(bh_b.set(bh).is_ok());
    }
    g.bench_function(name, |bench| {
        bench.iter_custom(|iters| {
            // Relaxed: published to ping's thread by the schedule below (its BH queue).
            remaining.store(iters, Ordering::Relaxed);
            let t = Instant::now();
            bh_b.get().unwrap().schedule();
            done_rx.recv().unwrap();
            t.elapsed()
        })
    });
    drop((a, b));
}
