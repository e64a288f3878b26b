//! loom models of a run queue's home queue and injection queue ([RQ6], [RQ7]
//! (`run_queue.rs`)): a cross-thread wake racing the home drain, a wake racing the
//! task's completion, a wake racing the queue's end; and the join waker's hand-over
//! ([TK9] (`task.rs`)).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::Notify;
use loom::sync::atomic::{AtomicBool, AtomicUsize};

use super::{
    Spawned, bounded, park_then_wake_from_another_thread, poll_join, setup, spawn_wait_once,
};
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Mutex, lock};

/// Wakes itself `left` times (each wake is a push by the thread whose innermost drain
/// is the task's home: [RQ7]'s path), then completes.
struct Yields {
    left: usize,
    polls: Arc<AtomicUsize>,
}

impl Future for Yields {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A wake from another thread (a push on the injection queue) races the home thread's
/// drain of a task that keeps waking itself (pushes on the home queue, without the
/// lock): both tasks run to the end, each poll exactly once per wake, and the home
/// thread does not sleep while the injected task waits.
#[test]
fn cross_thread_wake_racing_the_home_drain_is_spliced_and_runs_once() {
    bounded(2, || {
        let Spawned {
            l,
            q,
            polls,
            waker,
            drops,
            mut handle,
        } = spawn_wait_once();
        let mut incoming = VecDeque::new();
        // The first drain binds the home thread and parks the task.
        while polls.load(Ordering::Relaxed) == 0 {
            l.poll(true, &mut incoming);
        }
        let yields = Arc::new(AtomicUsize::new(0));
        // Spawned on the home thread after the first drain: on the home queue.
        let mut local = q.spawn(Yields {
            left: 2,
            polls: Arc::clone(&yields),
        });
        let w = lock(&waker).take().expect("the task published its waker");
        let waker_thread = loom::thread::spawn(move || w.wake());
        while polls.load(Ordering::Relaxed) < 2 || !local.is_finished() {
            l.poll(true, &mut incoming);
        }
        waker_thread.join().unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert_eq!(yields.load(Ordering::Relaxed), 3);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert!(matches!(poll_join(&mut handle), Poll::Ready(Ok(()))));
        assert!(matches!(poll_join(&mut local), Poll::Ready(Ok(()))));
        assert_eq!(q.shutdown().0, 0, "finished tasks left the registry");
    });
}

/// Publishes its waker to another thread and completes in the same poll.
struct ReadyAfterPublishing {
    polls: Arc<AtomicUsize>,
    slot: Arc<Mutex<Option<Waker>>>,
    published: Arc<Notify>,
}

impl Future for ReadyAfterPublishing {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
        assert_eq!(n, 1, "a completed task was polled again");
        *lock(&self.slot) = Some(cx.waker().clone());
        self.published.notify();
        Poll::Ready(7)
    }
}

/// A wake from another thread races the task's completion (it lands on `RUNNING`,
/// setting `NOTIFIED`, or on `COMPLETE`): the task is never pushed again, and its
/// output reaches the join handle.
#[test]
fn wake_racing_task_completion_pushes_nothing() {
    bounded(3, || {
        let (l, q) = setup();
        let polls = Arc::new(AtomicUsize::new(0));
        let slot = Arc::new(Mutex::new(None));
        let published = Arc::new(Notify::new());
        let mut handle = q.spawn(ReadyAfterPublishing {
            polls: Arc::clone(&polls),
            slot: Arc::clone(&slot),
            published: Arc::clone(&published),
        });
        let waker_thread = {
            let slot = Arc::clone(&slot);
            loom::thread::spawn(move || {
                loop {
                    published.wait();
                    let w = lock(&slot).take();
                    if let Some(w) = w {
                        w.wake();
                        return;
                    }
                }
            })
        };
        let mut incoming = VecDeque::new();
        while !handle.is_finished() {
            l.poll(true, &mut incoming);
        }
        waker_thread.join().unwrap();
        // A wrongly pushed task would be polled (and fail its assertion) here.
        l.poll(false, &mut incoming);
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert!(matches!(poll_join(&mut handle), Poll::Ready(Ok(7))));
        assert_eq!(q.shutdown().0, 0, "the finished task left the registry");
    });
}

/// A wake from another thread races the context's end (its run queue closed, then
/// dropped, with the parked task still on the home thread's books): the future is
/// dropped exactly once, the late wake finds no queue (or a closed one) and does
/// nothing else, and the handle says cancelled.
#[test]
fn wake_racing_the_queue_drop_cancels_the_task_once() {
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
        // The context's drop: close the queue, then let it go.
        q.shutdown();
        drop(q);
        waker_thread.join().unwrap();
        l.poll(false, &mut incoming);
        assert_eq!(polls.load(Ordering::Relaxed), 1, "a cancelled task ran");
        assert_eq!(
            drops.load(Ordering::Relaxed),
            1,
            "the future was dropped once"
        );
        assert!(matches!(poll_join(&mut handle), Poll::Ready(Err(_))));
    });
}

/// A waker that raises a flag and notifies a loom `Notify`.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    notify: Notify,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        // Release: pairs with the Acquire load in `wait`.
        self.woken.store(true, Ordering::Release);
        self.notify.notify();
    }
}

impl Signal {
    fn wait(&self) {
        // Acquire: pairs with the Release store in `wake` (loom's Notify may wake
        // spuriously, hence the flag).
        while !self.woken.load(Ordering::Acquire) {
            self.notify.wait();
        }
    }
}

/// The task completes on the home thread while another thread polls its join handle,
/// first with one waker, then with another (which takes the cell back and republishes
/// it): the handle gets the output, or its last waker is woken and the next poll gets
/// it — never a lost wake, never both sides in the cell at once.
#[test]
fn join_waker_replaced_while_the_task_completes_is_woken() {
    bounded(3, || {
        let (l, q) = setup();
        let mut handle = q.spawn(async { 7u32 });
        let joiner = loom::thread::spawn(move || {
            let first = Waker::from(Arc::new(Signal::default()));
            if let Poll::Ready(out) = Pin::new(&mut handle).poll(&mut Context::from_waker(&first)) {
                return out.unwrap();
            }
            let signal = Arc::new(Signal::default());
            let second = Waker::from(Arc::clone(&signal));
            let mut cx = Context::from_waker(&second);
            if let Poll::Ready(out) = Pin::new(&mut handle).poll(&mut cx) {
                return out.unwrap();
            }
            signal.wait();
            match Pin::new(&mut handle).poll(&mut cx) {
                Poll::Ready(out) => out.unwrap(),
                Poll::Pending => panic!("the join waker was woken but the task is not done"),
            }
        });
        let mut incoming = VecDeque::new();
        l.poll(false, &mut incoming);
        assert_eq!(joiner.join().unwrap(), 7);
        assert_eq!(q.shutdown().0, 0, "the finished task left the registry");
    });
}
