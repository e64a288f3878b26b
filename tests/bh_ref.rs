//! `bh_new_with`: a BH whose callback re-schedules or cancels itself through a `BhRef`
//! — from plain code, inside a task, from another thread, with the `Bh` dropped and
//! with the context dropped under the handle. Both back ends (the suite runs again with
//! `AIOCTX_BACKEND=epoll`).
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use aioctx::aio::{BhRef, ContextGone};
use common::{Watchdog, new_ctx, wait_asleep};

#[test]
fn a_bh_re_schedules_itself_once_per_poll_until_it_stops() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new_with(move |me| {
        if r.fetch_add(1, Ordering::Relaxed) + 1 < 5 {
            me.schedule();
        }
    });
    bh.schedule();
    for expected in 1..=5 {
        // One run per poll: a BH scheduled while its slice runs waits for the next.
        ctx.poll(false);
        assert_eq!(runs.load(Ordering::Relaxed), expected);
    }
    assert!(!bh.is_scheduled());
    assert!(!ctx.poll(false), "nothing left to run");
}

#[test]
fn a_bh_cancels_itself_through_its_handle() {
    let ctx = new_ctx();
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new_with(move |me| {
        r.fetch_add(1, Ordering::Relaxed);
        me.schedule();
        me.cancel();
    });
    bh.schedule();
    ctx.poll(false);
    ctx.poll(false);
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(!bh.is_scheduled());
}

#[test]
fn a_handle_outliving_its_bh_or_context_schedules_nothing() {
    let ctx = new_ctx();
    let kept: Arc<Mutex<Option<BhRef>>> = Arc::default();
    let k = Arc::clone(&kept);
    let bh = ctx.bh_new_with(move |me| {
        *k.lock().unwrap() = Some(me.clone());
    });
    bh.schedule();
    ctx.poll(false);
    let me = kept.lock().unwrap().take().expect("the BH ran");
    drop(bh);
    assert_eq!(me.try_schedule(), Err(ContextGone));
    me.schedule();
    me.schedule_idle();
    me.cancel();
    assert!(!ctx.poll(false), "a dropped BH never runs");

    let bh = ctx.bh_new(|| panic!("must not run"));
    let handle = bh.handle();
    drop(ctx);
    assert_eq!(handle.try_schedule(), Err(ContextGone));
    drop(bh);
}

#[test]
fn a_handle_from_another_thread_wakes_the_sleeping_loop() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    let handle = bh.handle();
    let sleeps = ctx.stats().sleeps;
    let t = thread::spawn({
        let ctx = Arc::clone(&ctx);
        move || {
            wait_asleep(&ctx, sleeps + 1);
            handle.schedule();
        }
    });
    while runs.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
    t.join().unwrap();
}

#[test]
fn bh_new_with_inside_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let runs = Arc::new(AtomicU32::new(0));
    let (c, r) = (Arc::clone(&ctx), Arc::clone(&runs));
    let bh = ctx.block_on(async move {
        let bh = c.bh_new_with(move |me| {
            if r.fetch_add(1, Ordering::Relaxed) + 1 < 3 {
                me.schedule();
            }
        });
        bh.schedule();
        bh
    });
    while runs.load(Ordering::Relaxed) < 3 {
        ctx.poll(true);
    }
    drop(bh);
}
