//! A oneshot BH scheduled on the home thread refills a spent one instead of allocating
//! its own: one allocation per oneshot (its closure's box). Each closure still runs
//! exactly once — scheduled from inside a oneshot, from a task, from another thread at
//! the same time, after a panicking oneshot — and the context's drop frees the closures
//! of the oneshots it never ran.
#![cfg(not(loom))]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use aioctx::aio::AioContext;
use common::{Watchdog, new_ctx};

// The test kit's per-thread counting allocator.
#[global_allocator]
static GLOBAL: common::CountingAlloc = common::CountingAlloc;

const ROUNDS: u64 = 1000;

#[test]
fn home_thread_oneshot_allocates_once() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("oneshot allocations", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let one = |ctx: &AioContext| {
        let r = Arc::clone(&runs);
        ctx.schedule_oneshot(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert!(ctx.poll(false));
    };
    for _ in 0..16 {
        one(&ctx);
    }
    let ((), n) = common::count_allocs(|| {
        for _ in 0..ROUNDS {
            one(&ctx);
        }
    });
    assert_eq!(runs.load(Ordering::Relaxed), ROUNDS + 16);
    assert_eq!(
        n, ROUNDS,
        "{n} allocations in {ROUNDS} oneshot schedule + run rounds"
    );
}

/// A chain of oneshots, each scheduled by the one before from inside its callback
/// (the previous one is still running, so it cannot be the one refilled).
#[test]
fn oneshots_scheduled_from_a_oneshot_run_once_each_in_order() {
    fn step(ctx: Arc<AioContext>, seen: Arc<Mutex<Vec<u64>>>, i: u64) {
        seen.lock().unwrap().push(i);
        if i + 1 < ROUNDS {
            let c = Arc::clone(&ctx);
            ctx.schedule_oneshot(move || step(c, seen, i + 1));
        }
    }
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("oneshot chain", &ctx);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (Arc::clone(&ctx), Arc::clone(&seen));
    ctx.schedule_oneshot(move || step(c, s, 0));
    while seen.lock().unwrap().len() < ROUNDS as usize {
        ctx.poll(true);
    }
    assert!(!ctx.poll(false));
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().copied().eq(0..ROUNDS),
        "out of order or repeated"
    );
}

#[test]
fn oneshots_from_a_task_run_once_each() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("oneshots from a task", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&ctx);
    let r = Arc::clone(&runs);
    ctx.block_on(async move {
        for round in 1..=ROUNDS {
            let r2 = Arc::clone(&r);
            c.schedule_oneshot(move || {
                r2.fetch_add(1, Ordering::Relaxed);
            });
            while r.load(Ordering::Relaxed) < round {
                aioctx::aio::yield_now().await;
            }
        }
    });
    assert_eq!(runs.load(Ordering::Relaxed), ROUNDS);
}

/// Home-thread oneshots (refilled) and another thread's (allocated) at the same time:
/// every closure runs exactly once.
#[test]
fn home_and_cross_thread_oneshots_run_exactly_once_each() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("oneshots racing", &ctx);
    let hits: Arc<Vec<AtomicUsize>> =
        Arc::new((0..2 * ROUNDS).map(|_| AtomicUsize::new(0)).collect());
    let producer = {
        let (ctx, hits) = (Arc::clone(&ctx), Arc::clone(&hits));
        thread::spawn(move || {
            for i in ROUNDS..2 * ROUNDS {
                let h = Arc::clone(&hits);
                ctx.schedule_oneshot(move || {
                    h[i as usize].fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };
    for i in 0..ROUNDS {
        let h = Arc::clone(&hits);
        ctx.schedule_oneshot(move || {
            h[i as usize].fetch_add(1, Ordering::Relaxed);
        });
        ctx.poll(false);
    }
    let done = || hits.iter().all(|h| h.load(Ordering::Relaxed) > 0);
    while !done() {
        ctx.poll(true);
    }
    producer.join().unwrap();
    ctx.poll(false);
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(
            h.load(Ordering::Relaxed),
            1,
            "oneshot {i} ran a wrong number of times"
        );
    }
}

#[test]
fn oneshot_after_a_panicking_oneshot_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("oneshot after a panic", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    for _ in 0..10 {
        ctx.schedule_oneshot(|| panic!("a oneshot panics"));
        let r = Arc::clone(&runs);
        ctx.schedule_oneshot(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert!(catch_unwind(AssertUnwindSafe(|| ctx.poll(false))).is_err());
        assert!(ctx.poll(false));
        assert!(!ctx.poll(false));
    }
    assert_eq!(runs.load(Ordering::Relaxed), 10);
}

#[test]
fn context_dropped_frees_unrun_oneshots_refilled_or_not() {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let ctx = new_ctx();
    let ran = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let schedule = |n: usize| {
        for _ in 0..n {
            let (r, g) = (Arc::clone(&ran), Guard(Arc::clone(&dropped)));
            ctx.schedule_oneshot(move || {
                let _ = &g;
                r.fetch_add(1, Ordering::Relaxed);
            });
        }
    };
    schedule(8);
    ctx.poll(false); // eight spent oneshots for the next ones to refill
    assert_eq!(ran.load(Ordering::Relaxed), 8);
    schedule(12); // eight refilled, four allocated; none run
    drop(ctx);
    assert_eq!(ran.load(Ordering::Relaxed), 8);
    assert_eq!(dropped.load(Ordering::Relaxed), 20);
}
