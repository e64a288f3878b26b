//! Regressions of what may outlive a context: callbacks that own their own handle or
//! their own context, handles used from another thread while the context drops, and an
//! `IoThread` stopped while its callbacks hold its context. Each test proves that an
//! object was freed through a `Weak` that no longer upgrades. Run on whichever back end
//! `AIOCTX_BACKEND` picks (run it with `AIOCTX_BACKEND=epoll` too).
#![cfg(not(loom))]

mod common;

use std::sync::{Arc, Barrier, Mutex, Weak};

use aioctx::aio::{AioContext, ClockType, ContextGone, Timer};
use common::{Watchdog, new_ctx};

/// A far deadline: the timer stays armed for the whole test.
fn far() -> i64 {
    ClockType::Realtime.now_ns() + 3_600_000_000_000
}

/// A value whose only job is to be freed; the `Weak` says whether it was.
fn tracker() -> (Arc<()>, Weak<()>) {
    let t = Arc::new(());
    let w = Arc::downgrade(&t);
    (t, w)
}

/// A timer whose callback owns the timer itself (through a shared slot) and `t`.
fn self_owning_timer(ctx: &AioContext, t: Arc<()>) -> Arc<Mutex<Option<Timer>>> {
    let slot: Arc<Mutex<Option<Timer>>> = Arc::new(Mutex::new(None));
    let own = Arc::clone(&slot);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let _keep = (&own, &t);
    });
    *slot.lock().unwrap() = Some(timer);
    slot
}

#[test]
fn regress_armed_timer_owning_its_own_timer_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let slot = self_owning_timer(&ctx, t);
    slot.lock().unwrap().as_ref().unwrap().modify(far());
    drop(slot);
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "an armed timer whose callback owns its own Timer outlived its context (a cycle \
         through the context's timer list)"
    );
}

#[test]
fn regress_disarmed_timer_owning_its_own_timer_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    drop(self_owning_timer(&ctx, t));
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "a disarmed timer whose callback owns its own Timer outlived its context"
    );
}

#[test]
fn regress_timer_modify_after_context_drop_is_refused_and_leaves_it_disarmed() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let _keep = &t;
    });
    drop(ctx);
    // The callback can never run: it was freed with the context, the handle stays.
    assert!(
        freed.upgrade().is_none(),
        "the timer's callback outlived its context"
    );
    assert_eq!(timer.try_modify(far()), Err(ContextGone));
    timer.modify(far());
    timer.modify_anticipate(0);
    assert!(
        !timer.pending(),
        "a timer modified after its context dropped claims to be armed on a dead list"
    );
    assert_eq!(timer.expire_time(), None);
}

#[test]
fn regress_timer_modify_racing_context_drop_never_lands_on_a_dead_list() {
    let _w = Watchdog::new("timer modify racing drop", common::HANG_LIMIT, String::new);
    for round in 0..300 {
        let ctx = new_ctx();
        let (t, freed) = tracker();
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            let _keep = &t;
        });
        let go = Arc::new(Barrier::new(2));
        let g = Arc::clone(&go);
        let other = std::thread::spawn(move || {
            g.wait();
            let res = timer.try_modify(far());
            (timer, res)
        });
        go.wait();
        drop(ctx);
        let (timer, res) = other.join().unwrap();
        assert!(
            !timer.pending(),
            "round {round}: the timer is armed on a dropped context (modify: {res:?})"
        );
        assert!(
            freed.upgrade().is_none(),
            "round {round}: the callback of a timer modified while its context dropped \
             was not freed (modify: {res:?})"
        );
    }
}

#[test]
fn regress_self_owning_timer_modified_racing_drop_is_freed() {
    let _w = Watchdog::new(
        "self-owning timer racing drop",
        common::HANG_LIMIT,
        String::new,
    );
    for round in 0..300 {
        let ctx = new_ctx();
        let (t, freed) = tracker();
        let slot = self_owning_timer(&ctx, t);
        let go = Arc::new(Barrier::new(2));
        let g = Arc::clone(&go);
        let other = std::thread::spawn(move || {
            g.wait();
            slot.lock().unwrap().as_ref().unwrap().modify(far());
        });
        go.wait();
        drop(ctx);
        other.join().unwrap();
        assert!(
            freed.upgrade().is_none(),
            "round {round}: a self-owning timer modified while its context dropped leaked"
        );
    }
}
