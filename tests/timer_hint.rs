//! The timer list's earliest-deadline hint: the home thread's timer pass looks at it
//! before taking the list lock (and skips the lock, and the clock, when nothing is
//! armed or nothing is due). Timers armed where the hint could be stale — from inside a
//! BH, from a task, from another thread while a later timer is armed, in a loop racing
//! blocking polls — still run, and the context's drop still frees every callback. A
//! lost wake-up is a hang here, turned into a failure by the watchdog.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use aioctx::aio::{AioContext, ClockType, Timer};
use common::{Watchdog, new_ctx};

const SEC: i64 = 1_000_000_000;

fn now() -> i64 {
    ClockType::Realtime.now_ns()
}

/// A timer that counts its runs.
fn counting(ctx: &AioContext) -> (Timer, Arc<AtomicUsize>) {
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    let t = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    (t, fired)
}

/// Blocking polls until `done` holds.
fn poll_until(ctx: &AioContext, done: impl Fn() -> bool) {
    while !done() {
        ctx.poll(true);
    }
}

#[test]
fn timer_armed_inside_a_bh_on_an_empty_list_runs() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timer armed inside a BH", &ctx);
    let (t, fired) = counting(&ctx);
    let t = Arc::new(t);
    let t2 = Arc::clone(&t);
    let bh = ctx.bh_new(move || t2.modify(now()));
    for round in 1..=20 {
        bh.schedule();
        poll_until(&ctx, || fired.load(Ordering::Relaxed) == round);
    }
    assert!(!t.pending());
}

#[test]
fn timer_armed_in_a_task_runs_with_a_later_timer_armed() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timer armed in a task", &ctx);
    let (far, far_fired) = counting(&ctx);
    far.modify(now() + 100 * SEC);
    let (t, fired) = counting(&ctx);
    ctx.block_on(async {
        for round in 1..=20 {
            t.modify(now());
            while fired.load(Ordering::Relaxed) < round {
                aioctx::aio::yield_now().await;
            }
        }
        // A sleep arms its own timer from the task.
        aioctx::aio::sleep(std::time::Duration::from_micros(50)).await;
    });
    assert_eq!(far_fired.load(Ordering::Relaxed), 0);
    assert!(far.pending());
}

#[test]
fn timer_made_earliest_from_another_thread_runs_while_a_later_one_is_armed() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("earlier timer from another thread", &ctx);
    let (far, far_fired) = counting(&ctx);
    far.modify(now() + 100 * SEC);
    // One pass that finds the far timer not due (the hint says "later").
    ctx.poll(false);
    let (t, fired) = counting(&ctx);
    let t = Arc::new(t);
    const ROUNDS: usize = 200;
    let producer = {
        let (t, fired) = (Arc::clone(&t), Arc::clone(&fired));
        thread::spawn(move || {
            for round in 0..ROUNDS {
                t.modify(now());
                while fired.load(Ordering::Relaxed) == round {
                    thread::yield_now();
                }
            }
        })
    };
    poll_until(&ctx, || fired.load(Ordering::Relaxed) == ROUNDS);
    producer.join().unwrap();
    assert_eq!(far_fired.load(Ordering::Relaxed), 0);
}

#[test]
fn context_dropped_with_armed_timers_frees_their_callbacks() {
    let ctx = new_ctx();
    // Each callback owns a clone of `token`: the count says how many are still alive.
    let token = Arc::new(());
    let timers: Vec<Timer> = [now() + 100 * SEC, 0]
        .into_iter()
        .map(|deadline| {
            let owned = Arc::clone(&token);
            let t = ctx.timer_new(ClockType::Realtime, move || {
                let _ = &owned;
            });
            t.modify(deadline);
            t
        })
        .collect();
    ctx.poll(false); // runs the due one; the far one stays armed
    drop(ctx);
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "a callback outlived the context"
    );
    for t in &timers {
        assert!(!t.pending());
        assert!(t.try_modify(0).is_err());
    }
}
