//! The loop model shared by every loom model that needs a loop (`loom_tests.rs`,
//! `loom_completions.rs`, `loom_tasks.rs`): one `Loop` whose `poll` performs the steps of
//! `AioContext::poll` in the same order with the real pieces — the run queue's entry
//! (`PollFrame::enter_with`, [RQ2] (`run_queue.rs`)), the BH list and its timeout (`bh.rs`),
//! the sleep decision (`poll::wait_bound`) and the wait inside the notify protocol
//! (`poll::sleep_or_look`, `notify.rs`); then it runs the BHs and dispatches completions
//! one at a time. What stands in for the kernel is `Kernel`: a completion queue, and
//! the eventfd with the loop's read on it — a write while the read is armed posts its
//! CQE, a write while it is not only raises the counter, and arming the read on a
//! non-zero counter posts the CQE at once, as io_uring does. The loop's collect step
//! handles the read's CQE as `UringDriver::collect` does (re-arms it at once, never
//! queues it behind a callback). loom reports a deadlock when the home thread sleeps
//! while a scheduled BH or a collected completion is left unrun.

use std::collections::VecDeque;
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use loom::sync::atomic::AtomicUsize;
use loom::sync::{Condvar, Mutex as LoomMutex};

use crate::bh::{BhInner, BhList, BhQueue, SCHEDULED};
use crate::notify::NotifyState;
use crate::poll::{self, sleep_or_look, wait_bound};
use crate::run_queue::{Kick, PollFrame, RunQueue};
use crate::sync::Arc;

/// One CQE of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cqe {
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
pub(crate) struct Kernel {
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
    pub(crate) fn eventfd_write(&self) {
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
    pub(crate) fn complete(&self, id: u32) {
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
pub(crate) struct Mutation {
    /// The sleep decision ignores completions already collected (the hang of a nested
    /// poll on its batch's queued completion).
    pub(crate) ignore_collected: bool,
    /// The eventfd read's CQE is queued for dispatch and re-armed there, instead of at
    /// collect (the read stays unarmed behind a running callback).
    pub(crate) rearm_at_dispatch: bool,
}

pub(crate) type OnUser = Box<dyn Fn(&Loop, u32) + Send + Sync>;

/// The run queue of a modelled loop: its bottom half is scheduled on the loop.
pub(crate) type ModelQueue = RunQueue<ModelKick>;

/// The loop model (see the module docs).
pub(crate) struct Loop {
    pub(crate) notify: NotifyState,
    pub(crate) bhs: BhList,
    /// Counts the runs of the test BHs that bump it.
    pub(crate) ran: AtomicUsize,
    pub(crate) kernel: Kernel,
    /// The driver's dispatch queue: home thread only, hence a plain `std` mutex that
    /// adds no interleavings.
    collected: std::sync::Mutex<VecDeque<Cqe>>,
    /// The context's run queue, if tasks are modelled (`AioContext`'s `RUN_QUEUE`
    /// local); set once, on the home thread, before any poll.
    run_queue: OnceLock<Weak<ModelQueue>>,
    on_user: OnUser,
    mutation: Mutation,
}

impl Loop {
    pub(crate) fn new() -> Self {
        Self::with(Mutation::default(), Box::new(|_, _| {}))
    }

    pub(crate) fn with(mutation: Mutation, on_user: OnUser) -> Self {
        Self {
            notify: NotifyState::new(),
            bhs: BhList::new(),
            ran: AtomicUsize::new(0),
            kernel: Kernel::new(),
            collected: std::sync::Mutex::new(VecDeque::new()),
            run_queue: OnceLock::new(),
            on_user,
            mutation,
        }
    }

    /// A loop with a real run queue whose bottom half drains it (what `RunQueue::of`
    /// sets up for a context).
    pub(crate) fn with_run_queue() -> (Arc<Self>, Arc<ModelQueue>) {
        let l = Arc::new(Self::new());
        let q = Arc::new_cyclic(|me: &Weak<ModelQueue>| {
            let me = me.clone();
            let bh = BhInner::new(
                Box::new(move || {
                    if let Some(q) = me.upgrade() {
                        q.drain();
                    }
                }),
                0,
            );
            RunQueue::new(ModelKick {
                l: Arc::clone(&l),
                bh,
            })
        });
        assert!(l.run_queue.set(Arc::downgrade(&q)).is_ok());
        (l, q)
    }

    /// `Remote::notify`.
    pub(crate) fn notify(&self) {
        if self.notify.notify() == crate::notify::Notified::Asleep {
            self.kernel.eventfd_write();
        }
    }

    /// A producer: `Remote::enqueue` followed by `Remote::notify`; returns whether the
    /// list took the BH (false once closed).
    pub(crate) fn schedule(&self, bh: &Arc<BhInner>) -> bool {
        let queued = crate::bh::enqueue(&self.bhs, bh, SCHEDULED);
        if queued {
            self.notify();
        }
        queued
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

    /// One blocking `poll`.
    pub(crate) fn poll_blocking(&self, incoming: &mut VecDeque<Arc<BhInner>>) {
        self.poll(true, incoming);
    }

    /// One `poll`, as in `AioContext::poll`; `incoming` is the poll's BH slice.
    pub(crate) fn poll(&self, blocking: bool, incoming: &mut VecDeque<Arc<BhInner>>) {
        // enter_poll. Only with a run queue: the drain mark is a (loom) thread-local,
        // which loom forbids touching while a mutation's deadlock unwinds the model, and
        // only run queues read it.
        let q = self.run_queue.get().and_then(Weak::upgrade);
        let _frame = q.as_deref().map(|q| {
            PollFrame::enter_with(Some(q), |q| {
                q.drain();
                self.notify();
            })
        });
        drop(q);
        // compute_timeout
        let timeout = if blocking {
            self.bhs.take_all(incoming);
            let mut queue = BhQueue::default();
            std::mem::swap(&mut queue.queued, incoming);
            let bh_ns = queue.timeout_ns();
            std::mem::swap(&mut queue.queued, incoming);
            let ready = self.has_ready() && !self.mutation.ignore_collected;
            wait_bound(ready, bh_ns, None)
        } else {
            Some(Duration::ZERO)
        };
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

/// The run queue's bottom half on the modelled loop.
pub(crate) struct ModelKick {
    l: Arc<Loop>,
    bh: Arc<BhInner>,
}

impl Kick for ModelKick {
    fn kick(&self) {
        self.l.schedule(&self.bh);
    }
}
