//! loom models of the timer list: `delete` and `modify` from another thread racing the
//! home thread's timer pass, on the real `TimerList` code ([T2] (`timer.rs`)), and
//! `modify` racing the context's drop closing the list ([T5]).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! The promise checked: once `delete` (or a `modify` to a far deadline) returns, a
//! callback that had not started does not start. "Started" is the home thread taking
//! the callback out of its cell under the list lock; the other thread learns whether
//! that happened by looking at the cell right after its call, under the same lock.

use loom::sync::atomic::AtomicUsize;

use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::timer::{ClockType, TimerInner, TimerList};

/// A list with one timer, already due, whose callback counts its runs.
fn due_timer() -> (Arc<TimerList>, Arc<TimerInner>, Arc<AtomicUsize>) {
    let list = Arc::new(TimerList::new(ClockType::Realtime));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let timer = TimerInner::new(
        list.next_id(),
        Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }),
    );
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
