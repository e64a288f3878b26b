//! loom models of the loop: the notify protocol, the bottom-half list, the completion
//! queue and the ring's eventfd read.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! `Loop::poll_blocking` performs the steps of `AioContext::poll(true)` in the same
//! order, with the real pieces: the BH list and its timeout (`bh.rs`), the sleep
//! decision (`poll::wait_bound`) and the wait inside the notify protocol (`poll::sleep_or_look`,
//! `notify.rs`); then it runs the BHs and dispatches completions one at a time. What
//! stands in for the kernel is `Kernel`: a completion queue, and the eventfd with the
//! loop's read on it — a write while the read is armed posts its CQE, a write while it
//! is not only raises the counter, and arming the read on a non-zero counter posts the
//! CQE at once, as io_uring does. The loop's collect step handles the read's CQE as
//! `UringDriver::collect` does (re-arms it at once, never queues it behind a callback).
//! loom reports a deadlock when the home thread sleeps while a scheduled BH or a
//! collected completion is left unrun.
//!
//! Mutations (models that must be found failing) switch off one rule each; they share
//! their state through `Box::leak`, not `Arc`: a `should_panic` test unwinds out of the
//! model, and dropping loom objects during that unwinding would abort the run.

use std::collections::VecDeque;
use std::time::Duration;

use loom::sync::atomic::AtomicUsize;
use loom::sync::{Condvar, Mutex as LoomMutex};

use crate::bh::{BhInner, BhList, BhQueue, SCHEDULED};
use crate::notify::NotifyState;
use crate::poll::{self, sleep_or_look, wait_bound};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// One CQE of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cqe {
    /// The loop's eventfd read completed.
    NotifyRead,
    /// A user operation completed.
    User(u32),
}

/// The kernel's state: the CQ, the eventfd counter, whether the loop's read is armed.
struct KState {
    cq: VecDeque<Cqe>,
    eventfd: u64,
    read_armed: bool,
}

/// The kernel side of one ring (see the module docs).
struct Kernel {
    state: LoomMutex<KState>,
    posted: Condvar,
}

impl Kernel {
    fn new() -> Self {
        Self {
            // The driver arms its read when it is created.
            state: LoomMutex::new(KState {
                cq: VecDeque::new(),
                eventfd: 0,
                read_armed: true,
            }),
            posted: Condvar::new(),
        }
    }

    /// A write of the notify eventfd.
    fn eventfd_write(&self) {
        let mut s = self.state.lock().unwrap();
        if s.read_armed {
            s.read_armed = false;
            s.cq.push_back(Cqe::NotifyRead);
            self.posted.notify_all();
        } else {
            s.eventfd += 1;
        }
    }

    /// The loop arms its eventfd read.
    fn arm_read(&self) {
        let mut s = self.state.lock().unwrap();
        assert!(!s.read_armed, "the eventfd read was armed twice");
        if s.eventfd > 0 {
            s.eventfd = 0;
            s.cq.push_back(Cqe::NotifyRead);
        } else {
            s.read_armed = true;
        }
    }

    /// A user operation completes.
    fn complete(&self, id: u32) {
        self.state.lock().unwrap().cq.push_back(Cqe::User(id));
        self.posted.notify_all();
    }

    fn cq_is_empty(&self) -> bool {
        self.state.lock().unwrap().cq.is_empty()
    }

    fn reap(&self) -> VecDeque<Cqe> {
        std::mem::take(&mut self.state.lock().unwrap().cq)
    }
}

impl poll::Kernel for &Kernel {
    /// `io_uring_enter` waiting for one CQE. The model has no timers or idle BHs, so a
    /// wait has no timeout.
    fn wait(&mut self, timeout: Option<Duration>) {
        assert_eq!(timeout, None, "the model has no timed waits");
        let mut s = self.state.lock().unwrap();
        while s.cq.is_empty() {
            s = self.posted.wait(s).unwrap();
        }
    }

    fn look(&mut self) {}
}

/// Rules a mutation switches off.
#[derive(Debug, Clone, Copy, Default)]
struct Mutation {
    /// The sleep decision ignores completions already collected (the hang of a nested
    /// poll on its batch's queued completion).
    ignore_collected: bool,
    /// The eventfd read's CQE is queued for dispatch and re-armed there, instead of at
    /// collect (the read stays unarmed behind a running callback).
    rearm_at_dispatch: bool,
}

type OnUser = Box<dyn Fn(&Loop, u32) + Send + Sync>;

struct Loop {
    notify: NotifyState,
    bhs: BhList,
    ran: AtomicUsize,
    kernel: Kernel,
    /// The driver's dispatch queue: home thread only, hence a plain `std` mutex that
    /// adds no interleavings.
    collected: std::sync::Mutex<VecDeque<Cqe>>,
    on_user: OnUser,
    mutation: Mutation,
}

impl Loop {
    fn new() -> Self {
        Self::with(Mutation::default(), Box::new(|_, _| {}))
    }

    fn with(mutation: Mutation, on_user: OnUser) -> Self {
        Self {
            notify: NotifyState::new(),
            bhs: BhList::new(),
            ran: AtomicUsize::new(0),
            kernel: Kernel::new(),
            collected: std::sync::Mutex::new(VecDeque::new()),
            on_user,
            mutation,
        }
    }

    /// A producer: `Remote::enqueue` followed by `Remote::notify`.
    fn schedule(&self, bh: &Arc<BhInner>) {
        assert!(crate::bh::enqueue(&self.bhs, bh, SCHEDULED));
        if self.notify.notify() {
            self.kernel.eventfd_write();
        }
    }

    /// `UringDriver::has_ready`.
    fn has_ready(&self) -> bool {
        !self.collected.lock().unwrap().is_empty() || !self.kernel.cq_is_empty()
    }

    /// `UringDriver::collect`: the eventfd read's CQE re-arms it at once.
    fn collect(&self) {
        for c in self.kernel.reap() {
            if c == Cqe::NotifyRead && !self.mutation.rearm_at_dispatch {
                self.kernel.arm_read();
            } else {
                self.collected.lock().unwrap().push_back(c);
            }
        }
    }

    /// One blocking `poll`, as in `AioContext::poll`.
    fn poll_blocking(&self, incoming: &mut VecDeque<Arc<BhInner>>) {
        // compute_timeout
        self.bhs.take_all(incoming);
        let mut queue = BhQueue::default();
        std::mem::swap(&mut queue.incoming, incoming);
        let bh_ns = queue.timeout_ns();
        std::mem::swap(&mut queue.incoming, incoming);
        let ready = self.has_ready() && !self.mutation.ignore_collected;
        let timeout = wait_bound(ready, bh_ns, None);
        sleep_or_look(&self.notify, timeout, &mut &self.kernel);
        // bh_poll
        self.bhs.take_all(incoming);
        for bh in incoming.drain(..) {
            bh.run(&self.bhs);
        }
        // dispatch, one completion at a time with no lock held
        self.collect();
        loop {
            let next = self.collected.lock().unwrap().pop_front();
            match next {
                None => break,
                Some(Cqe::NotifyRead) => self.kernel.arm_read(),
                Some(Cqe::User(id)) => (self.on_user)(self, id),
            }
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
