//! loom models of the loop: the notify protocol, the bottom-half list, the completion
//! queue and the ring's eventfd read.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! They run on the shared loop model (`loom_loop.rs`), which drives the real sleep
//! decision, notify protocol and BH list over a modelled kernel.
//!
//! Mutations (models that must be found failing) switch off one rule each; they share
//! their state through `Box::leak`, not `Arc`: a `should_panic` test unwinds out of the
//! model, and dropping loom objects during that unwinding would abort the run.

use std::collections::VecDeque;

use crate::bh::{BhInner, SCHEDULED};
use crate::loom_loop::Loop;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

fn counting_bh(l: &Arc<Loop>) -> Arc<BhInner> {
    let l = Arc::clone(l);
    BhInner::new(
        Box::new(move || {
            l.ran.fetch_add(1, Ordering::Relaxed);
        }),
        0,
    )
}

/// A BH scheduled by another thread while the owner goes to sleep is never left unrun.
#[test]
fn bh_scheduled_while_owner_sleeps_always_runs() {
    loom::model(|| {
        let l = Arc::new(Loop::new());
        let bh = counting_bh(&l);
        let producer = {
            let (l, bh) = (Arc::clone(&l), Arc::clone(&bh));
            loom::thread::spawn(move || assert!(l.schedule(&bh)))
        };
        let mut incoming = VecDeque::new();
        while l.ran.load(Ordering::Relaxed) == 0 {
            l.poll_blocking(&mut incoming);
        }
        producer.join().unwrap();
        assert_eq!(l.ran.load(Ordering::Relaxed), 1);
    });
}

/// Two producers racing: the second may skip its fence and eventfd write because the
/// first set `notified`; both BHs still run, each exactly once.
#[test]
fn two_producers_one_write_both_bhs_run() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let l = Arc::new(Loop::new());
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let l = Arc::clone(&l);
                let bh = counting_bh(&l);
                loom::thread::spawn(move || assert!(l.schedule(&bh)))
            })
            .collect();
        let mut incoming = VecDeque::new();
        while l.ran.load(Ordering::Relaxed) < 2 {
            l.poll_blocking(&mut incoming);
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(l.ran.load(Ordering::Relaxed), 2);
    });
}

/// A schedule racing the context's drop (which closes the BH list): the BH is either
/// refused, or on the list the drop drained; never pushed after the drain.
#[test]
fn schedule_racing_drop_is_refused_or_drained() {
    loom::model(|| {
        let l = Arc::new(Loop::new());
        let bh = counting_bh(&l);
        let producer = {
            let (l, bh) = (Arc::clone(&l), Arc::clone(&bh));
            loom::thread::spawn(move || crate::bh::enqueue(&l.bhs, &bh, SCHEDULED))
        };
        let mut drained = VecDeque::new();
        l.bhs.close(&mut drained);
        let accepted = producer.join().unwrap();
        assert_eq!(
            accepted,
            drained.len() == 1,
            "accepted {accepted}, drained {}",
            drained.len()
        );
        assert!(l.bhs.is_empty());
    });
}

// Completions: nested blocking polls in completion callbacks, the eventfd read's CQE in
// the same batch as a user completion, and mutations of both rules.
#[path = "loom_completions.rs"]
mod completions;

// The home-thread fast path of the notify protocol, next to the cross-thread path.
#[path = "loom_home.rs"]
mod home;
