//! loom models of the timer list: `delete` and `modify` from another thread racing the
//! home thread's timer pass, on the real `TimerList` code ([T2] (`timer.rs`)), and
//! `modify` racing the context's drop closing the list ([T5]), and an arming from
//! another thread racing the home thread's lock-free look at the earliest-deadline
//! hint ([T7]).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! The promise checked: once `delete` (or a `modify` to a far deadline) returns, a
//! callback that had not started does not start. "Started" is the home thread taking
//! the callback out of its cell under the list lock; the other thread learns whether
//! that happened by looking at the cell right after its call, under the same lock.

use loom::sync::atomic::AtomicUsize;

use crate::notify::NotifyState;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::timer::{ClockType, TimerInner, TimerList, arm};

/// A disarmed timer of `list` whose callback counts its runs.
fn counting_timer(list: &TimerList) -> (Arc<TimerInner>, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let timer = TimerInner::new(
        list.next_id(),
        Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }),
    );
    (timer, runs)
}

/// A list with one timer, already due, whose callback counts its runs.
fn due_timer() -> (Arc<TimerList>, Arc<TimerInner>, Arc<AtomicUsize>) {
    let list = Arc::new(TimerList::new(ClockType::Realtime));
    let (timer, runs) = counting_timer(&list);
    list.modify(&timer, 0, false).unwrap();
    (list, timer, runs)
}

/// Runs `change` on another thread while the home thread runs a timer pass; checks
/// that the callback ran after `change` returned only if it had started before.
fn race(change: fn(&TimerList, &Arc<TimerInner>)) {
    loom::model(move || {
        let (list, timer, runs) = due_timer();
        let (l, t, r) = (Arc::clone(&list), Arc::clone(&timer), Arc::clone(&runs));
        let other = loom::thread::spawn(move || {
            change(&l, &t);
            // Whether the callback had started (is out of its cell), and how many runs
            // had finished, when `change` returned. Both are read after the call; a
            // run that starts later is what the promise forbids.
            let started = t.cb.is_running();
            (started, r.load(Ordering::Relaxed))
        });
        let ran_in_pass = list.run_expired();
        let (started, finished_before) = other.join().unwrap();
        let total = runs.load(Ordering::Relaxed);
        assert_eq!(total, ran_in_pass);
        assert!(total <= 1, "ran {total} times");
        if !started {
            assert_eq!(
                total, finished_before,
                "the callback started after the other thread's call returned"
            );
        }
    });
}

#[test]
fn delete_from_another_thread_stops_a_callback_not_yet_started() {
    race(|list, timer| list.delete(timer));
}

#[test]
fn modify_from_another_thread_defers_a_callback_not_yet_started() {
    race(|list, timer| {
        let _ = list.modify(timer, i64::MAX / 2, false);
    });
}

/// The context's drop closes the list ([T5]) while another thread arms the timer:
/// afterwards the timer is never armed on the closed list and its callback is freed,
/// whichever came first; `modify` is refused exactly when it came second.
#[test]
fn modify_racing_close_never_leaves_the_timer_on_a_closed_list() {
    loom::model(|| {
        let list = Arc::new(TimerList::new(ClockType::Realtime));
        let timer = TimerInner::new(list.next_id(), Box::new(|| {}));
        list.register(&timer);
        let (l, t) = (Arc::clone(&list), Arc::clone(&timer));
        let other = loom::thread::spawn(move || l.modify(&t, i64::MAX / 2, false).is_ok());
        list.close();
        let _accepted = other.join().unwrap();
        assert_eq!(list.timeout_ns(), None, "a timer is armed on a closed list");
        assert!(timer.cb.is_dead(), "the callback outlived the close");
        assert_eq!(list.run_expired(), 0);
        // Whether the racing modify was accepted (it came first, and the close disarmed
        // it) or refused, every modify after the close is refused.
        assert!(list.modify(&timer, 0, false).is_err());
    });
}

/// [T7]: another thread arms a due timer on an empty list (the real `arm`, then the
/// real cross-thread notify) while the home thread makes a poll's timer step: the
/// notify protocol's `accept`, then `run_expired`, which reads the hint before any
/// lock. Either the pass runs the timer, or the notify is still pending — so the next
/// poll cannot sleep ([N3] (`notify.rs`)) and, its `accept` having synchronized with
/// the arming, that poll's pass runs it. A timer armed and notified but neither run
/// nor announced would be a lost wake-up.
#[test]
fn timer_armed_from_another_thread_is_run_or_its_notify_is_pending() {
    loom::model(|| {
        let list = Arc::new(TimerList::new(ClockType::Realtime));
        let notify = Arc::new(NotifyState::new());
        notify.bind_home();
        let (timer, runs) = counting_timer(&list);
        list.register(&timer);
        let (l, t, n) = (Arc::clone(&list), Arc::clone(&timer), Arc::clone(&notify));
        let other = loom::thread::spawn(move || {
            arm(&l, &t, 0, false, || {
                n.notify();
            })
            .unwrap();
        });
        // One poll's steps, in `AioContext::poll`'s order: accept, then the pass.
        notify.accept();
        let ran = list.run_expired();
        other.join().unwrap();
        if ran == 0 {
            assert!(
                notify.is_notified(),
                "the pass missed the timer and the notify was consumed: a lost wake-up"
            );
            // The next poll: its accept synchronizes with the arming, its pass runs it.
            notify.accept();
            assert_eq!(list.run_expired(), 1);
        }
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        list.close();
    });
}

/// [T7] on the home thread: a timer armed by the home thread itself (no notify needed,
/// [N5]) is seen by its next pass through the hint, also after a pass emptied the list.
#[test]
fn timer_armed_on_the_home_thread_is_seen_by_the_next_pass() {
    loom::model(|| {
        let list = TimerList::new(ClockType::Realtime);
        let timer = TimerInner::new(list.next_id(), Box::new(|| {}));
        list.register(&timer);
        assert_eq!(list.run_expired(), 0);
        arm(&list, &timer, 0, false, || {}).unwrap();
        assert_eq!(list.run_expired(), 1);
        assert_eq!(list.run_expired(), 0);
        arm(&list, &timer, 0, false, || {}).unwrap();
        assert_eq!(list.run_expired(), 1);
        list.close();
    });
}
