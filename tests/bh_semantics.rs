//! Bottom-half semantics beyond QEMU's test-aio cases: slices and nesting,
//! self-rescheduling, idle BHs, FIFO order and `cancel`, deletion by another BH.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aioctx::aio::{AioContext, Bh};
use common::{Watchdog, new_ctx};

type Log = Arc<Mutex<Vec<String>>>;

fn log_bh(ctx: &AioContext, log: &Log, name: &str) -> Bh {
    let (log, name) = (Arc::clone(log), name.to_owned());
    ctx.bh_new(move || log.lock().unwrap().push(name.clone()))
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn nested_poll_from_a_bh_drains_the_parents_slice() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("nested_poll", &ctx);
    let log: Log = Arc::default();
    let b = log_bh(&ctx, &log, "B");
    let c = log_bh(&ctx, &log, "C");
    let d = Arc::new(log_bh(&ctx, &log, "D"));
    let (weak, l, d2) = (Arc::downgrade(&ctx), Arc::clone(&log), Arc::clone(&d));
    let a = ctx.bh_new(move || {
        l.lock().unwrap().push("A-start".into());
        // D becomes pending now: it joins a new slice, behind the parent's B and C.
        d2.schedule();
        let ctx = weak.upgrade().unwrap();
        // B and C are still due in the parent's slice, so this must not block.
        let nested = ctx.poll(true);
        l.lock().unwrap().push(format!("nested={nested}"));
        l.lock().unwrap().push("A-end".into());
    });
    a.schedule();
    b.schedule();
    c.schedule();

    assert!(ctx.poll(false));
    assert_eq!(
        take(&log),
        ["A-start", "B", "C", "D", "nested=true", "A-end"]
    );
    // Nothing ran twice: the parent's slice was drained by the nested poll.
    assert!(!ctx.poll(false));
    assert!(take(&log).is_empty());
}

#[test]
fn nested_poll_with_nothing_left_is_not_progress() {
    let ctx = new_ctx();
    let seen = Arc::new(Mutex::new(None));
    let (weak, s) = (Arc::downgrade(&ctx), Arc::clone(&seen));
    let a = ctx.bh_new(move || {
        *s.lock().unwrap() = Some(weak.upgrade().unwrap().poll(false));
    });
    a.schedule();
    assert!(ctx.poll(false));
    assert_eq!(*seen.lock().unwrap(), Some(false));
}

#[test]
fn bh_rescheduling_itself_runs_once_per_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("self_reschedule", &ctx);
    let runs = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Bh>>> = Arc::default();
    let (r, s) = (Arc::clone(&runs), Arc::clone(&slot));
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
        s.lock().unwrap().as_ref().unwrap().schedule();
    });
    bh.schedule();
    *slot.lock().unwrap() = Some(bh);

    let other_runs = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&other_runs);
    let other = ctx.bh_new(move || {
        o.fetch_add(1, Ordering::Relaxed);
    });

    for i in 1..=20 {
        if i == 10 {
            other.schedule();
        }
        // A pending BH means a blocking poll does not block.
        assert!(ctx.poll(i % 2 == 0));
        assert_eq!(runs.load(Ordering::Relaxed), i, "poll {i}");
    }
    // The self-rescheduling BH did not starve the other one.
    assert_eq!(other_runs.load(Ordering::Relaxed), 1);

    drop(slot.lock().unwrap().take());
    assert!(!ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 20);
}

#[test]
fn idle_bh_runs_but_is_not_progress() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("idle_bh", &ctx);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let idle = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });

    idle.schedule_idle();
    assert!(idle.is_scheduled());
    assert!(!ctx.poll(false), "an idle BH counted as progress");
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(!idle.is_scheduled());
    assert!(!ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 1);

    // A blocking poll with only an idle BH pending runs it instead of sleeping forever,
    // and still reports no progress.
    idle.schedule_idle();
    assert!(!ctx.poll(true));
    assert_eq!(runs.load(Ordering::Relaxed), 2);

    // Next to a normal BH, the poll is progress because of the normal one.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    let normal = ctx.bh_new(move || {
        n2.fetch_add(1, Ordering::Relaxed);
    });
    idle.schedule_idle();
    normal.schedule();
    assert!(ctx.poll(false));
    assert_eq!(n.load(Ordering::Relaxed), 1);
    assert_eq!(runs.load(Ordering::Relaxed), 3);

    // Scheduled twice while pending, it still runs once.
    idle.schedule_idle();
    idle.schedule_idle();
    assert!(!ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 4);
}

#[test]
fn bhs_run_in_the_order_they_became_pending() {
    let ctx = new_ctx();
    let log: Log = Arc::default();
    let bhs: Vec<Bh> = (0..100)
        .map(|i| log_bh(&ctx, &log, &i.to_string()))
        .collect();
    let order: Vec<usize> = (0..100).map(|i| (i * 37) % 100).collect();
    for &i in &order {
        bhs[i].schedule();
        bhs[i].schedule(); // idempotent while pending: no second place
    }
    assert!(ctx.poll(false));
    let expected: Vec<String> = order.iter().map(|i| i.to_string()).collect();
    assert_eq!(take(&log), expected);
    assert!(!ctx.poll(false));
}

#[test]
fn cancel_then_schedule_keeps_fifo_position() {
    let ctx = new_ctx();
    let log: Log = Arc::default();
    let a = log_bh(&ctx, &log, "A");
    let b = log_bh(&ctx, &log, "B");
    let c = log_bh(&ctx, &log, "C");

    a.schedule();
    b.schedule();
    c.schedule();
    a.cancel();
    assert!(!a.is_scheduled());
    b.cancel();
    b.schedule();
    a.schedule();
    assert!(ctx.poll(false));
    assert_eq!(take(&log), ["A", "B", "C"]);

    // A cancelled BH that stays cancelled does not run, and the others keep their order.
    c.schedule();
    b.schedule();
    a.schedule();
    b.cancel();
    assert!(ctx.poll(false));
    assert_eq!(take(&log), ["C", "A"]);

    // Once a poll has passed, the old place is gone: the order is the new one.
    b.schedule();
    b.cancel();
    assert!(!ctx.poll(false));
    a.schedule();
    b.schedule();
    assert!(ctx.poll(false));
    assert_eq!(take(&log), ["A", "B"]);
}

#[test]
fn bh_deleted_by_an_earlier_bh_of_the_same_slice_never_runs() {
    let ctx = new_ctx();
    let log: Log = Arc::default();
    let victim: Arc<Mutex<Option<Bh>>> = Arc::new(Mutex::new(Some(log_bh(&ctx, &log, "V"))));
    let (l, v) = (Arc::clone(&log), Arc::clone(&victim));
    let killer = ctx.bh_new(move || {
        l.lock().unwrap().push("K".into());
        drop(v.lock().unwrap().take());
    });
    killer.schedule();
    victim.lock().unwrap().as_ref().unwrap().schedule();
    assert!(ctx.poll(false));
    assert_eq!(take(&log), ["K"]);
    assert!(!ctx.poll(false));
    assert!(take(&log).is_empty());
}

#[test]
fn oneshot_runs_once_and_frees_its_closure() {
    let ctx = new_ctx();
    let token = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&token);
    ctx.schedule_oneshot(move || {
        t.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(Arc::strong_count(&token), 2);
    assert!(ctx.poll(false));
    assert_eq!(token.load(Ordering::Relaxed), 1);
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "the one-shot's closure was not freed"
    );
    assert!(!ctx.poll(false));
}
