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

// ---------------------------------------------------------------------------------
// Tasks (DESIGN §6): the cross-thread wake of a task — state word, run queue, the
// run-queue bottom half and the notify protocol — against a home thread that goes to
// sleep. The task below is the real `Task` (state machine, run, waker); `TaskLoop`
// stands in for `RunQueue`: `schedule` does what `RunQueue::schedule` does off the
// home thread (push, schedule the BH, notify), and the BH drains the queue as
// `RunQueue::drain` does.

mod tasks {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Weak;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Notify;
    use loom::sync::atomic::AtomicUsize;

    use crate::bh::BhInner;
    use crate::sync::atomic::Ordering;
    use crate::sync::{Arc, Mutex, lock};
    use crate::task::{Schedule, Task, TaskRef};

    type Queue = Arc<Mutex<VecDeque<TaskRef>>>;

    struct TaskLoop {
        /// The BH list, notify state and "eventfd" of the BH model above.
        l: super::Loop,
        queue: Queue,
        bh: Arc<BhInner>,
    }

    impl TaskLoop {
        fn new() -> Arc<Self> {
            let queue: Queue = Arc::new(Mutex::new(VecDeque::new()));
            let q = Arc::clone(&queue);
            let bh = BhInner::new(
                Box::new(move || {
                    loop {
                        let task = lock(&q).pop_front();
                        match task {
                            Some(t) => t.run(),
                            None => break,
                        }
                    }
                }),
                0,
            );
            Arc::new(Self {
                l: super::Loop::new(),
                queue,
                bh,
            })
        }

        /// One blocking `poll`, as in `AioContext::poll` (BHs only).
        fn poll_blocking(&self, incoming: &mut VecDeque<Arc<BhInner>>) {
            self.l.poll_blocking(incoming);
        }
    }

    impl Schedule for TaskLoop {
        fn schedule(&self, task: TaskRef) {
            lock(&self.queue).push_back(task);
            self.l.schedule(&self.bh);
        }
    }

    /// Pending on its first poll (publishing its waker), ready on the second. Counts
    /// its polls; a third poll would be a double run.
    struct WaitOnce {
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for WaitOnce {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
            assert!(n <= 2, "the task was polled {n} times");
            if n == 1 {
                *lock(&self.waker) = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }
    }

    struct Setup {
        l: Arc<TaskLoop>,
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    /// A loop with one spawned task (SCHEDULED, on the queue, BH scheduled).
    fn setup() -> Setup {
        let l = TaskLoop::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let waker = Arc::new(Mutex::new(None));
        let home: Weak<dyn Schedule> = Arc::downgrade(&l) as Weak<dyn Schedule>;
        let task = Task::new(
            WaitOnce {
                polls: Arc::clone(&polls),
                waker: Arc::clone(&waker),
            },
            home,
        );
        l.schedule(task);
        Setup { l, polls, waker }
    }

    /// A task woken from another thread while its context goes to sleep always runs,
    /// exactly once.
    #[test]
    fn task_woken_from_another_thread_while_home_sleeps_runs_once() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let Setup { l, polls, waker } = setup();
            let mut incoming = VecDeque::new();
            // First run on the home thread: the task parks and publishes its waker.
            while polls.load(Ordering::Relaxed) == 0 {
                l.poll_blocking(&mut incoming);
            }
            let w = lock(&waker).take().expect("the task published its waker");
            let waker_thread = loom::thread::spawn(move || w.wake());
            while polls.load(Ordering::Relaxed) < 2 {
                l.poll_blocking(&mut incoming);
            }
            waker_thread.join().unwrap();
            assert_eq!(polls.load(Ordering::Relaxed), 2);
        });
    }

    /// Pending on its first poll, publishing its waker to two waker threads at once
    /// (so their wakes can land while the task is still RUNNING); ready on the second.
    struct PublishOnce {
        polls: Arc<AtomicUsize>,
        slot: Arc<Mutex<Option<Waker>>>,
        published: [Arc<Notify>; 2],
    }

    impl Future for PublishOnce {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
            assert!(n <= 2, "the task was polled {n} times");
            if n == 1 {
                *lock(&self.slot) = Some(cx.waker().clone());
                for p in &self.published {
                    p.notify();
                }
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }
    }

    /// Two wakes from two threads race with the end of the task's first poll (landing
    /// on RUNNING sets NOTIFIED) and with each other: the task runs exactly once more,
    /// never twice (a double schedule would poll it a third time or panic in the
    /// state machine).
    #[test]
    fn task_wakes_racing_its_poll_and_each_other_run_once() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let l = TaskLoop::new();
            let polls = Arc::new(AtomicUsize::new(0));
            let slot = Arc::new(Mutex::new(None));
            let published = [Arc::new(Notify::new()), Arc::new(Notify::new())];
            let home: Weak<dyn Schedule> = Arc::downgrade(&l) as Weak<dyn Schedule>;
            let task = Task::new(
                PublishOnce {
                    polls: Arc::clone(&polls),
                    slot: Arc::clone(&slot),
                    published: published.clone(),
                },
                home,
            );
            l.schedule(task);
            let wakers: Vec<_> = published
                .iter()
                .map(|p| {
                    let (p, slot) = (Arc::clone(p), Arc::clone(&slot));
                    loom::thread::spawn(move || {
                        // loom's Notify may wake spuriously: wait until published.
                        loop {
                            p.wait();
                            let w = lock(&slot).clone();
                            if let Some(w) = w {
                                w.wake();
                                return;
                            }
                        }
                    })
                })
                .collect();
            let mut incoming = VecDeque::new();
            while polls.load(Ordering::Relaxed) < 2 {
                l.poll_blocking(&mut incoming);
            }
            for t in wakers {
                t.join().unwrap();
            }
            assert_eq!(polls.load(Ordering::Relaxed), 2);
            // Drop the waker (and with it the task) while the model is alive.
            lock(&slot).take();
        });
    }
}
