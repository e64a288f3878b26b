//! loom models of completions on the shared loop model (`loom_loop.rs`): a nested blocking
//! poll in a completion callback while its batch's next completion is queued, and a BH
//! from another thread waking such a nested poll while the eventfd read's CQE was
//! collected behind the callback; with mutations that must be found failing.

use std::collections::VecDeque;

use loom::sync::atomic::AtomicUsize;

use crate::bh::BhInner;
use crate::loom_loop::{Loop, Mutation};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// Completion `1`'s callback nests blocking polls until completion `2`, collected in
/// the same batch and queued behind it, has run. Returns the bits of the completions
/// that ran.
fn nested_on_queued(mutation: Mutation) -> usize {
    let done: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let l: &'static Loop = Box::leak(Box::new(Loop::with(
        mutation,
        Box::new(move |l, id| {
            done.fetch_or(1 << id, Ordering::Relaxed);
            if id == 1 {
                let mut incoming = VecDeque::new();
                while done.load(Ordering::Relaxed) & (1 << 2) == 0 {
                    l.poll_blocking(&mut incoming);
                }
            }
        }),
    )));
    l.kernel.complete(1);
    l.kernel.complete(2);
    let mut incoming = VecDeque::new();
    while done.load(Ordering::Relaxed) != 0b110 {
        l.poll_blocking(&mut incoming);
    }
    done.load(Ordering::Relaxed)
}

/// A nested blocking poll never sleeps while a completion of its batch is queued.
#[test]
fn nested_poll_runs_the_queued_completion_of_its_batch() {
    loom::model(|| assert_eq!(nested_on_queued(Mutation::default()), 0b110));
}

/// Mutation: a sleep decision that looks only at BHs and timers. loom must find the
/// nested poll asleep on its own queued completion.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_sleep_ignoring_collected_completions_hangs() {
    loom::model(|| {
        nested_on_queued(Mutation {
            ignore_collected: true,
            ..Mutation::default()
        });
    });
}

/// The eventfd read's CQE arrives in the same batch as completion `1`, whose callback
/// nests blocking polls until a BH scheduled by another thread has run.
fn nested_wake(mutation: Mutation) {
    let done: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let l: &'static Loop = Box::leak(Box::new(Loop::with(
        mutation,
        Box::new(move |l, _| {
            let mut incoming = VecDeque::new();
            while l.ran.load(Ordering::Relaxed) == 0 {
                l.poll_blocking(&mut incoming);
            }
            done.store(1, Ordering::Relaxed);
        }),
    )));
    let bh: &'static Arc<BhInner> = Box::leak(Box::new(BhInner::new(
        Box::new(move || {
            l.ran.fetch_add(1, Ordering::Relaxed);
        }),
        0,
    )));
    // The batch: a user completion, then the read's CQE of an earlier write.
    l.kernel.complete(1);
    l.kernel.eventfd_write();
    let producer = loom::thread::spawn(move || assert!(l.schedule(bh)));
    let mut incoming = VecDeque::new();
    while done.load(Ordering::Relaxed) == 0 {
        l.poll_blocking(&mut incoming);
    }
    producer.join().unwrap();
}

/// A BH scheduled from another thread wakes a nested poll that sleeps while the
/// eventfd read's CQE was collected behind the running callback: the read is re-armed
/// at collect, so it is armed whenever the loop may sleep.
#[test]
fn cross_thread_bh_wakes_a_nested_poll_behind_the_read_cqe() {
    loom::model(|| nested_wake(Mutation::default()));
}

/// The two rules are each enough here: with collected completions ignored by the
/// sleep decision, the read re-armed at collect still wakes the nested poll.
#[test]
fn read_rearmed_at_collect_alone_keeps_the_wake_path() {
    loom::model(|| {
        nested_wake(Mutation {
            ignore_collected: true,
            ..Mutation::default()
        });
    });
}

/// Mutation: both rules off — the read's CQE waits behind the callback, and the nested
/// poll sleeps with no read armed. loom must find the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_read_rearmed_at_dispatch_loses_the_wakeup() {
    loom::model(|| {
        nested_wake(Mutation {
            ignore_collected: true,
            rearm_at_dispatch: true,
        });
    });
}
