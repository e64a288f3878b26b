//! Timers in Rust's terms: `modify_after` / `modify_at` / `remaining`, and
//! `timer_new_with`, whose callback re-arms or deletes its own timer through a
//! `TimerRef` — from plain code, inside a BH, inside a task, from another thread, with
//! the `Timer` dropped and with the context dropped under the handle. Both back ends
//! (the suite runs again with `AIOCTX_BACKEND=epoll`).
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use aioctx::aio::{ClockType, ContextGone, Timer, TimerRef};
use common::{Watchdog, new_ctx, wait_asleep};

#[test]
fn a_timer_re_arms_itself_through_its_handle_until_it_deletes_itself() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("periodic_timer", &ctx);
    let ticks = Arc::new(AtomicU32::new(0));
    let t = Arc::clone(&ticks);
    let timer = ctx.timer_new_with(ClockType::Realtime, move |me| {
        let n = t.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(!me.pending(), "a running callback's timer is not pending");
        if n < 5 {
            me.modify_after(Duration::from_micros(50));
            assert!(me.pending());
        } else {
            me.modify_after(Duration::from_secs(3600));
            me.delete();
        }
    });
    timer.modify_after(Duration::ZERO);
    while ticks.load(Ordering::Relaxed) < 5 {
        ctx.poll(true);
    }
    assert!(!timer.pending(), "the last tick deleted its own timer");
    assert_eq!(timer.remaining(), None);
    // Nothing is left to run.
    while ctx.poll(false) {}
    assert_eq!(ticks.load(Ordering::Relaxed), 5);
}

#[test]
fn durations_and_instants_arm_the_same_deadlines_as_nanoseconds() {
    let ctx = new_ctx();
    let timer = ctx.timer_new(ClockType::Realtime, || {});
    let before = ClockType::Realtime.now_ns();
    timer.modify_after(Duration::from_secs(10));
    let after = ClockType::Realtime.now_ns();
    let expire = timer.expire_time().expect("armed");
    assert!(expire >= before + 10_000_000_000 && expire <= after + 10_000_000_000);
    let left = timer.remaining().expect("armed");
    assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9));

    let deadline = Instant::now() + Duration::from_secs(20);
    timer.modify_at(deadline);
    let left = timer.remaining().expect("armed");
    assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(19));

    // A past instant, and a duration beyond the clock: due at once, and "never".
    timer.modify_at(Instant::now() - Duration::from_millis(1));
    assert_eq!(timer.remaining(), Some(Duration::ZERO));
    timer.modify_after(Duration::MAX);
    assert_eq!(timer.expire_time(), Some(i64::MAX));
    timer.delete();
    assert_eq!(timer.remaining(), None);
}

#[test]
fn a_past_instant_fires_on_the_next_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("past_instant", &ctx);
    let fired = Arc::new(AtomicU32::new(0));
    let f = Arc::clone(&fired);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    timer.modify_at(Instant::now() - Duration::from_secs(1));
    ctx.poll(false);
    assert_eq!(fired.load(Ordering::Relaxed), 1);
}

#[test]
fn a_handle_outliving_its_timer_or_context_does_nothing() {
    let ctx = new_ctx();
    let kept: Arc<Mutex<Option<TimerRef>>> = Arc::default();
    let k = Arc::clone(&kept);
    let timer = ctx.timer_new_with(ClockType::Realtime, move |me| {
        *k.lock().unwrap() = Some(me.clone());
    });
    timer.modify_after(Duration::ZERO);
    while kept.lock().unwrap().is_none() {
        ctx.poll(true);
    }
    let me = kept.lock().unwrap().take().unwrap();
    assert_eq!(me.clock(), ClockType::Realtime);
    // The Timer is gone: the handle re-arms nothing.
    drop(timer);
    assert_eq!(me.try_modify(0), Err(ContextGone));
    me.modify_after(Duration::ZERO);
    me.delete();
    assert!(!me.pending());
    assert_eq!(me.remaining(), None);
    while ctx.poll(false) {}

    // A handle whose context is dropped.
    let timer = ctx.timer_new(ClockType::Realtime, || panic!("must not run"));
    let handle = timer.handle();
    handle.modify_after(Duration::from_secs(3600));
    assert!(handle.pending());
    drop(ctx);
    assert_eq!(handle.try_modify(0), Err(ContextGone));
    assert!(!handle.pending(), "the shutdown disarmed it");
    drop(timer);
}

#[test]
fn a_handle_from_another_thread_wakes_the_sleeping_loop() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("handle_cross_thread", &ctx);
    let fired = Arc::new(AtomicU32::new(0));
    let f = Arc::clone(&fired);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    let handle = timer.handle();
    let sleeps = ctx.stats().sleeps;
    let arm = thread::spawn({
        let ctx = Arc::clone(&ctx);
        move || {
            wait_asleep(&ctx, sleeps + 1);
            // Earliest deadline on the list: the sleeping loop must recompute its wait.
            handle.modify_after(Duration::ZERO);
        }
    });
    while fired.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
    arm.join().unwrap();
}

#[test]
fn timer_new_with_inside_a_bh_and_inside_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timer_new_with_nested", &ctx);
    let ticks = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel::<Timer>();
    // Made and armed from a BH callback.
    let bh = {
        let (c, t, tx) = (Arc::clone(&ctx), Arc::clone(&ticks), tx.clone());
        ctx.bh_new(move || {
            let t = Arc::clone(&t);
            let timer = c.timer_new_with(ClockType::Realtime, move |me| {
                if t.fetch_add(1, Ordering::Relaxed) + 1 < 2 {
                    me.modify_after(Duration::from_micros(10));
                }
            });
            timer.modify_after(Duration::ZERO);
            tx.send(timer).unwrap();
        })
    };
    bh.schedule();
    // Made and armed inside a task, which awaits its ticks.
    let t = Arc::clone(&ticks);
    let c = Arc::clone(&ctx);
    let task_timer = ctx.block_on(async move {
        let timer = c.timer_new_with(ClockType::Realtime, move |me| {
            if t.fetch_add(1, Ordering::Relaxed) + 1 < 4 {
                me.modify_after(Duration::from_micros(10));
            }
        });
        timer.modify_after(Duration::ZERO);
        timer
    });
    // The task finished at its first poll, maybe before the loop ran the BH.
    let bh_timer = loop {
        if let Ok(timer) = rx.try_recv() {
            break timer;
        }
        ctx.poll(true);
    };
    while ticks.load(Ordering::Relaxed) < 4 || bh_timer.pending() || task_timer.pending() {
        ctx.poll(true);
    }
    assert!(ticks.load(Ordering::Relaxed) >= 4);
}
