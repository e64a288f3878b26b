//! The home-thread fast path of the notify protocol: a BH scheduled (or a notify made)
//! by the loop's own thread costs no shared RMW and no fence, yet the next blocking
//! `poll` never sleeps on it — from plain code, from inside a BH, an fd handler, a
//! timer and a task, next to schedules from another thread, and with the context
//! dropped under the handle. Each blocking poll is under a watchdog: a lost wake-up is
//! a hang, turned into a failure with the context's stats.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aioctx::aio::{AioContext, Bh, ClockType, ContextGone, EventNotifier};
use common::{Watchdog, new_ctx};

/// A BH that counts its runs.
fn counting(ctx: &AioContext) -> (Bh, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    (bh, runs)
}

/// Blocking polls until `done` holds (a lost wake-up hangs here: the watchdog fires).
fn poll_until(ctx: &AioContext, done: impl Fn() -> bool) {
    while !done() {
        ctx.poll(true);
    }
}

#[test]
fn home_schedule_counts_a_notify_and_writes_no_eventfd() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_schedule_stats", &ctx);
    ctx.poll(false); // binds the home thread
    let (bh, runs) = counting(&ctx);
    let before = ctx.stats();
    bh.schedule();
    assert!(ctx.poll(true));
    let after = ctx.stats();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert_eq!(after.notifies - before.notifies, 1);
    assert_eq!(after.eventfd_writes, before.eventfd_writes);
    assert_eq!(after.sleeps, before.sleeps, "slept with a BH pending");
}

/// A bare notify by the home thread keeps its next blocking poll from sleeping, as one
/// from another thread does; a notify is not progress.
#[test]
fn home_bare_notify_keeps_the_next_blocking_poll_awake() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_bare_notify", &ctx);
    ctx.poll(false);
    let before = ctx.stats();
    ctx.notify();
    assert!(!ctx.poll(true));
    let after = ctx.stats();
    assert_eq!(after.sleeps, before.sleeps);
    assert_eq!(after.notifies - before.notifies, 1);
    assert_eq!(after.eventfd_writes, before.eventfd_writes);
}

#[test]
fn bh_scheduled_inside_a_bh_runs_at_the_next_blocking_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_nested_bh", &ctx);
    let (inner, runs) = counting(&ctx);
    let outer = ctx.bh_new(move || inner.schedule());
    outer.schedule();
    poll_until(&ctx, || runs.load(Ordering::Relaxed) == 1);
    // Rescheduling itself from its own callback: runs once per poll, never sleeps.
    let slot: Arc<OnceLock<Bh>> = Arc::new(OnceLock::new());
    let count = Arc::new(AtomicU64::new(0));
    let (s, c) = (Arc::clone(&slot), Arc::clone(&count));
    let me = ctx.bh_new(move || {
        if c.fetch_add(1, Ordering::Relaxed) < 9 {
            s.get().unwrap().schedule();
        }
    });
    assert!(slot.set(me).is_ok());
    slot.get().unwrap().schedule();
    poll_until(&ctx, || count.load(Ordering::Relaxed) == 10);
}

#[test]
fn bh_scheduled_inside_an_fd_handler_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_fd_handler_bh", &ctx);
    let (bh, runs) = counting(&ctx);
    let e = Arc::new(EventNotifier::new().unwrap());
    let e2 = Arc::clone(&e);
    ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            e2.test_and_clear().unwrap();
            bh.schedule();
        })),
        None,
    )
    .unwrap();
    e.set().unwrap();
    poll_until(&ctx, || runs.load(Ordering::Relaxed) == 1);
    ctx.set_fd_handler(e.fd(), None, None).unwrap();
}

#[test]
fn bh_scheduled_inside_a_timer_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_timer_bh", &ctx);
    let (bh, runs) = counting(&ctx);
    let timer = ctx.timer_new(ClockType::Realtime, move || bh.schedule());
    timer.modify(ClockType::Realtime.now_ns());
    poll_until(&ctx, || runs.load(Ordering::Relaxed) == 1);
}

#[test]
fn bh_scheduled_inside_a_task_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_task_bh", &ctx);
    let (bh, runs) = counting(&ctx);
    let bh = Arc::new(bh);
    let b = Arc::clone(&bh);
    let task = ctx.spawn(async move { b.schedule() });
    ctx.block_on(task).unwrap();
    poll_until(&ctx, || runs.load(Ordering::Relaxed) == 1);
    // And from the future `block_on` polls directly.
    ctx.block_on(async { bh.schedule() });
    poll_until(&ctx, || runs.load(Ordering::Relaxed) == 2);
}

/// Home-thread and cross-thread schedules at once: every BH runs; the other thread's
/// schedules keep their protocol (the loop sleeps between them and is woken).
#[test]
fn home_and_cross_thread_schedules_mixed_all_run() {
    const N: u64 = 200;
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_cross_mixed", &ctx);
    ctx.poll(false);
    let (home_bh, home_runs) = counting(&ctx);
    let (remote_bh, remote_runs) = counting(&ctx);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                // Waits for the previous run, so that each schedule is a new one.
                while remote_runs.load(Ordering::Relaxed) < i {
                    std::thread::yield_now();
                }
                remote_bh.schedule();
            }
        });
        for i in 0..N {
            home_bh.schedule();
            poll_until(&ctx, || home_runs.load(Ordering::Relaxed) > i);
        }
        poll_until(&ctx, || remote_runs.load(Ordering::Relaxed) == N);
    });
}

/// The context dropped under a BH handle: a schedule from the (former) home thread is
/// refused like any other, and the callback is gone.
#[test]
fn home_schedule_after_the_context_dropped_is_refused() {
    let ctx = new_ctx();
    ctx.poll(false);
    let (bh, runs) = counting(&ctx);
    bh.schedule();
    drop(ctx);
    assert_eq!(bh.try_schedule(), Err(ContextGone));
    assert_eq!(runs.load(Ordering::Relaxed), 0);
}

/// A BH handle dropped by another thread while the home thread runs its callback: the
/// callback finishes, is freed once, and never runs again.
#[test]
fn bh_dropped_on_another_thread_while_its_callback_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("home_drop_while_running", &ctx);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let freed = Arc::new(AtomicU64::new(0));
    struct Freed(Arc<AtomicU64>);
    impl Drop for Freed {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let f = Freed(Arc::clone(&freed));
    let bh = ctx.bh_new(move || {
        let _ = &f;
        r.fetch_add(1, Ordering::Relaxed);
        go_tx.send(()).unwrap();
        done_rx.recv().unwrap(); // the handle is dropped meanwhile
    });
    bh.schedule();
    std::thread::scope(|s| {
        s.spawn(move || {
            go_rx.recv().unwrap();
            drop(bh);
            done_tx.send(()).unwrap();
        });
        ctx.poll(false);
    });
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert_eq!(freed.load(Ordering::Relaxed), 1);
}
