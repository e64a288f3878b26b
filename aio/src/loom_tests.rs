//! loom models of the notify protocol and the bottom-half list (DESIGN §3, §4, §9).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! The home thread below performs the same calls, in the same order, as
//! `AioContext::poll(true)`: take the pending list to compute the timeout, raise
//! `notify_me` (`prepare_sleep`), sleep in the "kernel", lower it, `accept`, run the
//! BHs. The kernel sleep is a `loom::sync::Notify` standing in for the eventfd: like an
//! eventfd counter it keeps a wake-up that arrives before the wait. loom reports a
//! deadlock if the home thread sleeps while a scheduled BH is left unrun.

use std::collections::VecDeque;

use loom::sync::Notify;
use loom::sync::atomic::AtomicUsize;

use crate::bh::{BhInner, BhList, SCHEDULED};
use crate::notify::NotifyState;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

struct Loop {
    notify: NotifyState,
    eventfd: Notify,
    bhs: BhList,
    ran: AtomicUsize,
}

impl Loop {
    fn new() -> Self {
        Self {
            notify: NotifyState::new(),
            eventfd: Notify::new(),
            bhs: BhList::new(),
            ran: AtomicUsize::new(0),
        }
    }

    /// A producer: `Remote::enqueue` followed by `Remote::notify`.
    fn schedule(&self, bh: &Arc<BhInner>) {
        crate::bh::enqueue(&self.bhs, bh, SCHEDULED);
        if self.notify.notify() {
            self.eventfd.notify();
        }
    }

    /// One blocking `poll`, as in `AioContext::poll`.
    fn poll_blocking(&self, incoming: &mut VecDeque<Arc<BhInner>>) {
        self.bhs.take_all(incoming);
        let must_run = incoming.iter().any(|bh| bh.wants_run() == Some(false));
        let raised = !must_run;
        if raised && self.notify.prepare_sleep() {
            self.eventfd.wait();
        }
        if raised {
            self.notify.finish_sleep();
        }
        self.notify.accept();
        self.bhs.take_all(incoming);
        for bh in incoming.drain(..) {
            bh.run(&self.bhs);
        }
    }
}

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
            loom::thread::spawn(move || l.schedule(&bh))
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
                loom::thread::spawn(move || l.schedule(&bh))
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
