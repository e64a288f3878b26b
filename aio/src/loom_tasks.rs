//! loom models of tasks and of the task locks (`co_lock.rs`).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-aio --release --lib`.
//!
//! The task models run the real `Task` (state word, run, waker, cancel) on the real
//! `RunQueue` (its home queue and injection queue, registry, drain, close; the home
//! queue is a loom cell, so a model in which another thread touched it would fail), on
//! the shared loop model (`loom_loop.rs`):
//! its `poll` enters through the real run-queue entry (`PollFrame::enter_with`), then
//! takes the sleep decision of `AioContext::poll` with the real `BhList`, `BhInner`,
//! `NotifyState`, `wait_bound` and `sleep_or_look`, and runs the BHs — the run queue's
//! bottom half among them. loom reports a deadlock if the home thread sleeps while a
//! task is queued and its drain not scheduled.
//!
//! The lock models run the real `CoQueue` and `CoMutex` with futures polled by hand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::Notify;
use loom::sync::atomic::{AtomicBool, AtomicUsize};

use crate::bh::BhInner;
use crate::join::JoinHandle;
use crate::loom_loop::{Loop, ModelQueue};
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Mutex, lock};

/// The models of the home queue and the injection queue ([RQ6], [RQ7] (`run_queue.rs`)).
mod queue;

type Queue = Arc<ModelQueue>;

/// Runs the model `f` with at most `preemptions` preemptions per execution.
fn bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(f);
}

/// A loop and a real run queue whose bottom half drains it.
fn setup() -> (Arc<Loop>, Queue) {
    Loop::with_run_queue()
}

/// Counts its drops.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pending on its first poll (publishing its waker), ready on the second. Counts its
/// polls; a third poll would be a double run.
struct WaitOnce {
    polls: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<Waker>>>,
    _dropped: Dropped,
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

struct Spawned {
    l: Arc<Loop>,
    q: Queue,
    polls: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<Waker>>>,
    drops: Arc<AtomicUsize>,
    handle: JoinHandle<()>,
}

/// A loop with one task spawned on its run queue (queued, drain scheduled).
fn spawn_wait_once() -> Spawned {
    let (l, q) = setup();
    let polls = Arc::new(AtomicUsize::new(0));
    let waker = Arc::new(Mutex::new(None));
    let drops = Arc::new(AtomicUsize::new(0));
    let handle = q.spawn(WaitOnce {
        polls: Arc::clone(&polls),
        waker: Arc::clone(&waker),
        _dropped: Dropped(Arc::clone(&drops)),
    });
    Spawned {
        l,
        q,
        polls,
        waker,
        drops,
        handle,
    }
}

/// Runs the loop until the task of [`spawn_wait_once`] parked, then wakes it from a new
/// thread.
fn park_then_wake_from_another_thread(
    l: &Loop,
    polls: &AtomicUsize,
    waker: &Mutex<Option<Waker>>,
    incoming: &mut VecDeque<Arc<BhInner>>,
) -> loom::thread::JoinHandle<()> {
    while polls.load(Ordering::Relaxed) == 0 {
        l.poll(true, incoming);
    }
    let w = lock(waker).take().expect("the task published its waker");
    loom::thread::spawn(move || w.wake())
}

/// Polls a join handle once, with a waker that does nothing.
fn poll_join<T>(h: &mut JoinHandle<T>) -> Poll<Result<T, crate::JoinError>> {
    Pin::new(h).poll(&mut Context::from_waker(Waker::noop()))
}

/// A task woken from another thread while its context goes to sleep always runs,
/// exactly once.
#[test]
fn task_woken_from_another_thread_while_home_sleeps_runs_once() {
    bounded(3, || {
        let Spawned {
            l,
            q,
            polls,
            waker,
            drops,
            mut handle,
        } = spawn_wait_once();
        let mut incoming = VecDeque::new();
        // First run on the home thread: the task parks and publishes its waker.
        let waker_thread = park_then_wake_from_another_thread(&l, &polls, &waker, &mut incoming);
        while polls.load(Ordering::Relaxed) < 2 {
            l.poll(true, &mut incoming);
        }
        waker_thread.join().unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert!(matches!(poll_join(&mut handle), Poll::Ready(Ok(()))));
        assert_eq!(q.shutdown().0, 0, "a finished task left the registry");
    });
}

/// Pending on its first poll, publishing its waker to two waker threads at once (so
/// their wakes can land while the task is still RUNNING); ready on the second.
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

/// Two wakes from two threads race with the end of the task's first poll (landing on
/// RUNNING sets NOTIFIED) and with each other: the task runs exactly once more, never
/// twice (a double schedule would poll it a third time or panic in the state machine).
#[test]
fn task_wakes_racing_its_poll_and_each_other_run_once() {
    bounded(2, || {
        let (l, q) = setup();
        let polls = Arc::new(AtomicUsize::new(0));
        let slot = Arc::new(Mutex::new(None));
        let published = [Arc::new(Notify::new()), Arc::new(Notify::new())];
        q.spawn(PublishOnce {
            polls: Arc::clone(&polls),
            slot: Arc::clone(&slot),
            published: published.clone(),
        })
        .detach();
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
            l.poll(true, &mut incoming);
        }
        for t in wakers {
            t.join().unwrap();
        }
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // Drop the waker (and with it the task) while the model is alive.
        lock(&slot).take();
    });
}

/// A wake from another thread races the close of the task's queue (the context's
/// drop): the future is dropped exactly once, by the closer or by the racing wake, and
/// the join handle says cancelled — unless the task ran to completion first.
#[test]
fn wake_racing_shutdown_drops_the_future_once() {
    bounded(3, || {
        let Spawned {
            l,
            q,
            polls,
            waker,
            drops,
            mut handle,
        } = spawn_wait_once();
        let mut incoming = VecDeque::new();
        let waker_thread = park_then_wake_from_another_thread(&l, &polls, &waker, &mut incoming);
        l.poll(false, &mut incoming);
        q.shutdown();
        waker_thread.join().unwrap();
        assert_eq!(
            drops.load(Ordering::Relaxed),
            1,
            "the future was dropped once"
        );
        match poll_join(&mut handle) {
            Poll::Ready(Ok(())) => assert_eq!(polls.load(Ordering::Relaxed), 2),
            Poll::Ready(Err(e)) => {
                assert!(e.is_cancelled());
                assert_eq!(polls.load(Ordering::Relaxed), 1);
            }
            Poll::Pending => panic!("the task neither finished nor was cancelled"),
        }
        // A wake after the close is a no-op.
        l.poll(false, &mut incoming);
    });
}

/// Pending until `release` is set; publishes `started` at its first poll.
struct Gate {
    started: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    _dropped: Dropped,
}

impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.started.store(true, Ordering::Release);
        Poll::Pending
    }
}

/// A shutdown from another thread while the home thread polls the task: the runner or
/// the closer drops the future, exactly once, never during the poll.
#[test]
fn shutdown_racing_the_tasks_poll_cancels_it_once() {
    bounded(3, || {
        let (l, q) = setup();
        let drops = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicBool::new(false));
        let mut handle = q.spawn(Gate {
            started: Arc::clone(&started),
            polls: Arc::clone(&polls),
            _dropped: Dropped(Arc::clone(&drops)),
        });
        let closer = {
            let q = Arc::clone(&q);
            loom::thread::spawn(move || q.shutdown())
        };
        let mut incoming = VecDeque::new();
        l.poll(false, &mut incoming);
        closer.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert!(polls.load(Ordering::Relaxed) <= 1);
        assert!(matches!(poll_join(&mut handle), Poll::Ready(Err(_))));
    });
}

/// A task that waits, in a nested blocking loop (what `block_on` inside a task does),
/// for a second task that another thread wakes. Each nested `poll` enters as
/// `AioContext::poll` does (the real `PollFrame::enter_with`: clear the drain mark, run
/// the queue if one of its drains is suspended below, notify after running tasks); the
/// drain's bottom half, running further up, is deferred by the real `BhInner::run`
/// ([BH7] (`bh.rs`)).
struct NestedWait {
    l: Arc<Loop>,
    target_polls: Arc<AtomicUsize>,
    slot: Arc<Mutex<Option<Waker>>>,
    waker_thread: Option<loom::thread::JoinHandle<()>>,
}

impl Future for NestedWait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        let w = lock(&self.slot).take().expect("the target parked first");
        self.waker_thread = Some(loom::thread::spawn(move || w.wake()));
        let mut incoming = VecDeque::new();
        while self.target_polls.load(Ordering::Relaxed) < 2 {
            self.l.poll(true, &mut incoming);
        }
        self.waker_thread
            .take()
            .expect("spawned above")
            .join()
            .unwrap();
        Poll::Ready(())
    }
}

/// The nested wait of a task ends. (It used to hang: a wake during a drain only pushed,
/// and the drain's bottom half cannot run nested; [RQ2] (`run_queue.rs`) is the fix.)
#[test]
fn nested_wait_in_a_task_for_a_task_woken_by_another_thread_ends() {
    bounded(3, || {
        let Spawned {
            l,
            q,
            polls,
            waker,
            drops,
            handle,
        } = spawn_wait_once();
        let mut incoming = VecDeque::new();
        while polls.load(Ordering::Relaxed) == 0 {
            l.poll(true, &mut incoming);
        }
        let mut outer = q.spawn(NestedWait {
            l: Arc::clone(&l),
            target_polls: Arc::clone(&polls),
            slot: waker,
            waker_thread: None,
        });
        while !outer.is_finished() {
            l.poll(true, &mut incoming);
        }
        assert!(matches!(poll_join(&mut outer), Poll::Ready(Ok(()))));
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(handle);
    });
}

// ---------------------------------------------------------------------------------
// co_lock: CoQueue and CoMutex, cancelled while being woken.

/// A waker that records that it was called.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn flag_waker() -> Waker {
    Waker::from(Arc::new(Flag(AtomicBool::new(false))))
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(&flag_waker()))
}

/// Two waiters; `wake` runs on another thread while the first waiter is dropped: the
/// second waiter ends up woken either way.
fn co_queue_wake_vs_cancel(wake: fn(&crate::CoQueue)) {
    let q = Arc::new(crate::CoQueue::new());
    let mut w1 = Box::pin(q.wait_unlocked());
    let mut w2 = Box::pin(q.wait_unlocked());
    assert!(poll_once(w1.as_mut()).is_pending());
    assert!(poll_once(w2.as_mut()).is_pending());
    let waker = {
        let q = Arc::clone(&q);
        loom::thread::spawn(move || wake(&q))
    };
    drop(w1);
    waker.join().unwrap();
    assert!(
        poll_once(w2.as_mut()).is_ready(),
        "the wake was lost with the cancelled first waiter"
    );
}

/// `CoQueue::wake_one` racing the cancellation of the waiter it pops: the wake passes
/// on to the next waiter.
#[test]
fn co_queue_wake_one_racing_cancel_of_first_waiter_is_passed_on() {
    loom::model(|| {
        co_queue_wake_vs_cancel(|q| {
            q.wake_one();
        })
    });
}

/// The ordering `wake_one` had before (mark the waiter woken after releasing the
/// queue's lock), written out here as a mutation: loom must find the lost wake.
#[test]
#[should_panic(expected = "the wake was lost")]
fn co_queue_mutation_marking_woken_after_unlock_loses_the_wake() {
    loom::model(|| {
        co_queue_wake_vs_cancel(|q| {
            let w = lock(&q.waiters).pop_front();
            if let Some(w) = w {
                w.mark_woken();
                w.fire();
            }
        })
    });
}

/// `CoMutex` hand-off racing the cancellation of the first waiter: the lock reaches the
/// second waiter, and is free once that one lets go.
#[test]
fn co_mutex_handoff_racing_cancel_of_first_waiter_reaches_the_next() {
    loom::model(|| {
        // 'static, so that another loom thread may drop the guard.
        let m: &'static crate::CoMutex<u32> = Box::leak(Box::new(crate::CoMutex::new(0)));
        let guard = m.try_lock().expect("free");
        let mut l1 = Box::pin(m.lock());
        let mut l2 = Box::pin(m.lock());
        assert!(poll_once(l1.as_mut()).is_pending());
        assert!(poll_once(l2.as_mut()).is_pending());
        let unlocker = loom::thread::spawn(move || drop(guard));
        drop(l1);
        unlocker.join().unwrap();
        match poll_once(l2.as_mut()) {
            Poll::Ready(mut g) => *g += 1,
            Poll::Pending => panic!("the hand-off was lost with the cancelled first waiter"),
        }
        drop(l2);
        assert!(!m.is_locked());
    });
}

/// `CoQueue::wake_all` racing the cancellation of one waiter: the other is woken.
#[test]
fn co_queue_wake_all_racing_cancel_wakes_the_rest() {
    loom::model(|| co_queue_wake_vs_cancel(crate::CoQueue::wake_all));
}
