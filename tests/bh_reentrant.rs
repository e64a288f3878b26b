//! Regression: a bottom half that schedules itself and then polls from inside its own
//! callback must run again at the next poll (found by the `bh_schedule` fuzz target).
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use aioctx::aio::{AioContext, Bh};

#[test]
fn regress_fuzz_bh_rescheduled_then_nested_poll_is_not_lost() {
    let ctx = AioContext::new().expect("create a context");
    let runs = Arc::new(AtomicUsize::new(0));
    let me: Arc<OnceLock<Bh>> = Arc::new(OnceLock::new());
    let (r, weak_me, weak_ctx) = (Arc::clone(&runs), Arc::downgrade(&me), Arc::downgrade(&ctx));
    let bh = ctx.bh_new(move || {
        if r.fetch_add(1, Ordering::Relaxed) == 0 {
            let (me, ctx) = (weak_me.upgrade().unwrap(), weak_ctx.upgrade().unwrap());
            me.get().unwrap().schedule();
            // The nested poll reaches the BH while its callback runs: it cannot run
            // re-entrantly, and must stay scheduled.
            ctx.poll(false);
        }
    });
    me.set(bh).unwrap();
    me.get().unwrap().schedule();
    assert!(ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(
        me.get().unwrap().is_scheduled(),
        "the schedule made inside the callback was lost by the nested poll"
    );
    assert!(ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    assert!(!ctx.poll(false));
}
