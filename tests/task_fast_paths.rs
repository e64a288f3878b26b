//! The home-thread fast paths of tasks: a push from the run queue's home thread goes on
//! its home queue without a lock, one from any other thread on the injection queue that
//! the drain splices in; a wake from inside the drain of the task's own queue does not
//! upgrade the task's home; a wake of `block_on`'s waker on its own thread is a flag and
//! a home-thread notify. Each path is taken nested inside a callback, inside a task,
//! racing a wake from another thread, and with the context dropped under it.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use aioctx::aio::{AioContext, yield_now};
use common::{ParkOnce, Watchdog, new_ctx};

type Slot = Arc<Mutex<Option<Waker>>>;

fn slot() -> Slot {
    Arc::new(Mutex::new(None))
}

fn take(slot: &Slot) -> Waker {
    slot.lock().unwrap().take().expect("the task parked")
}

/// Counts its drops.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A task that parks once, counting its polls and its future's drop.
fn parked_task(
    ctx: &AioContext,
    slot: &Slot,
) -> (
    aioctx::aio::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let (polls, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (p, d) = (Arc::clone(&polls), Dropped(Arc::clone(&drops)));
    let mut park = ParkOnce::new(Arc::clone(slot));
    let h = ctx.spawn(std::future::poll_fn(move |cx| {
        let _keep = &d;
        p.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut park).poll(cx)
    }));
    (h, polls, drops)
}

/// Runs the loop until `done`.
fn run_until(ctx: &AioContext, done: impl Fn() -> bool) {
    while !done() {
        ctx.poll(true);
    }
}

#[test]
fn wake_and_spawn_from_a_bh_callback_take_the_home_queue() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("wake_from_bh", &ctx);
    let s = slot();
    let (h, polls, _) = parked_task(&ctx, &s);
    run_until(&ctx, || polls.load(Ordering::Relaxed) == 1);
    let spawned = Arc::new(Mutex::new(None));
    let (s2, sp, c) = (Arc::clone(&s), Arc::clone(&spawned), Arc::downgrade(&ctx));
    ctx.schedule_oneshot(move || {
        // Home thread, inside `poll`, outside any drain: a home push and a kick.
        take(&s2).wake();
        let ctx = c.upgrade().unwrap();
        *sp.lock().unwrap() = Some(ctx.spawn(async { 5 }));
    });
    run_until(&ctx, || h.is_finished());
    assert_eq!(polls.load(Ordering::Relaxed), 2);
    let inner = spawned
        .lock()
        .unwrap()
        .take()
        .expect("the callback spawned");
    assert_eq!(ctx.block_on(inner).unwrap(), 5);
    ctx.block_on(h).unwrap();
}

#[test]
fn wake_and_spawn_inside_a_task_chain_in_the_same_drain() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("wake_in_task", &ctx);
    let s = slot();
    let (h, polls, _) = parked_task(&ctx, &s);
    run_until(&ctx, || polls.load(Ordering::Relaxed) == 1);
    let c = Arc::clone(&ctx);
    let waker_task = ctx.spawn(async move {
        // Inside the drain of the parked task's own queue: no upgrade of its home.
        take(&s).wake();
        // Spawned inside a task: on the home queue, run by this same drain.
        let inner = c.spawn(async { 6 });
        // A nested loop inside the task runs it ([RQ2]).
        c.block_on(inner).unwrap()
    });
    assert_eq!(ctx.block_on(waker_task).unwrap(), 6);
    ctx.block_on(h).unwrap();
    assert_eq!(polls.load(Ordering::Relaxed), 2);
}

/// Wakes itself until `stop` is set, counting its polls.
struct SpinUntil {
    stop: Arc<AtomicBool>,
    polls: u64,
}

impl Future for SpinUntil {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        self.polls += 1;
        if self.stop.load(Ordering::Acquire) {
            return Poll::Ready(self.polls);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Tasks woken and spawned from another thread (the injection queue) while a home
/// task keeps waking itself (the home queue, forever until told): every injected task
/// runs — the drain splices them in instead of starving them behind the home queue —
/// and the last one stops the spinner.
#[test]
fn cross_thread_wakes_racing_a_busy_home_queue_all_run() {
    const N: usize = 64;
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("cross_thread_vs_home", &ctx);
    let slots: Vec<Slot> = (0..N).map(|_| slot()).collect();
    let parked: Vec<_> = slots.iter().map(|s| parked_task(&ctx, s)).collect();
    run_until(&ctx, || {
        parked
            .iter()
            .all(|(_, p, _)| p.load(Ordering::Relaxed) == 1)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = ctx.spawn(SpinUntil {
        stop: Arc::clone(&stop),
        polls: 0,
    });
    let c = Arc::clone(&ctx);
    let other = std::thread::spawn(move || {
        for s in &slots {
            take(s).wake();
        }
        // Spawned from another thread: on the injection queue, behind the wakes.
        c.spawn(async move { stop.store(true, Ordering::Release) })
    });
    let polls = ctx.block_on(spinner).unwrap();
    assert!(polls >= 1);
    let last = other.join().unwrap();
    ctx.block_on(last).unwrap();
    for (h, p, d) in parked {
        ctx.block_on(h).unwrap();
        assert_eq!(p.load(Ordering::Relaxed), 2);
        assert_eq!(d.load(Ordering::Relaxed), 1);
    }
}

/// A task woken on the home thread (on the home queue, its drain scheduled) when the
/// context is dropped before the drain: the task is cancelled, its future dropped
/// once, never polled again; a later wake, on this thread or another, does nothing.
#[test]
fn context_dropped_under_a_task_on_the_home_queue_cancels_it() {
    let ctx = new_ctx();
    let s = slot();
    let (h, polls, drops) = parked_task(&ctx, &s);
    {
        let _dog = Watchdog::for_ctx("drop_under_home_queue", &ctx);
        run_until(&ctx, || polls.load(Ordering::Relaxed) == 1);
    }
    let w = take(&s);
    w.wake_by_ref(); // home thread, outside any poll: on the home queue
    drop(ctx);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        1,
        "the future was dropped once"
    );
    w.wake_by_ref();
    std::thread::spawn(move || w.wake()).join().unwrap();
    assert_eq!(polls.load(Ordering::Relaxed), 1, "a cancelled task ran");
    assert!(new_ctx().block_on(h).unwrap_err().is_cancelled());
}

/// The same, with the task parked on the home queue of a context whose queue another
/// thread closes (`shutdown_tasks` off the home thread leaves the home queue alone):
/// the queued task is skipped by the next drain, and the loop goes on.
#[test]
fn shutdown_from_another_thread_skips_the_home_queue() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("shutdown_other_thread", &ctx);
    let s = slot();
    let (h, polls, drops) = parked_task(&ctx, &s);
    run_until(&ctx, || polls.load(Ordering::Relaxed) == 1);
    take(&s).wake(); // on the home queue
    let c = Arc::clone(&ctx);
    let n = std::thread::spawn(move || c.shutdown_tasks())
        .join()
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(drops.load(Ordering::Relaxed), 1);
    ctx.poll(false); // the drain pops the cancelled task and skips it
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    assert!(ctx.block_on(h).unwrap_err().is_cancelled());
}

/// `block_on`'s waker woken on its own thread from everywhere it can be: the future
/// itself, a bottom half run by the loop, a task, and (after `block_on` returned) from
/// outside it, also once the context is gone; and from another thread while it runs.
#[test]
fn block_on_waker_woken_on_its_thread_and_from_another() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("block_on_wake", &ctx);
    // The future wakes itself.
    ctx.block_on(async {
        for _ in 0..3 {
            yield_now().await;
        }
    });
    // A bottom half wakes it (same thread, inside the loop's poll).
    let s = slot();
    let s2 = Arc::clone(&s);
    let c = Arc::downgrade(&ctx);
    let kept = ctx.block_on(async move {
        let w = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        // Runs once this future returned `Pending` below, with its waker in the slot.
        c.upgrade()
            .unwrap()
            .schedule_oneshot(move || take(&s2).wake());
        // Wait for the BH's wake through this future's own waker.
        let mut woken = false;
        std::future::poll_fn(|cx| {
            if woken {
                return Poll::Ready(());
            }
            woken = true;
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        w
    });
    // A task wakes it.
    let s = slot();
    let s2 = Arc::clone(&s);
    let t = ctx.spawn(async move {
        yield_now().await;
        take(&s2).wake();
    });
    ctx.block_on(ParkOnce::new(Arc::clone(&s)));
    ctx.block_on(t).unwrap();
    // Another thread wakes it.
    let s = slot();
    let s2 = Arc::clone(&s);
    let other = std::thread::spawn(move || {
        loop {
            if let Some(w) = s2.lock().unwrap().take() {
                w.wake();
                return;
            }
            std::thread::yield_now();
        }
    });
    ctx.block_on(ParkOnce::new(Arc::clone(&s)));
    other.join().unwrap();
    // After `block_on` returned: on this thread while the context lives, then after
    // it is gone; and from another thread.
    kept.wake_by_ref();
    drop(ctx);
    kept.wake_by_ref();
    std::thread::spawn(move || kept.wake()).join().unwrap();
}

/// A join handle polled on another thread, first with one waker and then awaited in
/// that thread's `block_on` (a second waker replaces the first in the task), while the
/// task completes on its home thread: the second waker is woken. Then the same with
/// the task's context dropped under the waiting handle: the cancel wakes it.
#[test]
fn join_waker_replaced_on_another_thread_is_woken_by_completion_and_by_cancel() {
    for drop_ctx in [false, true] {
        let ctx = new_ctx();
        let _dog = Watchdog::for_ctx("join_waker", &ctx);
        let s = slot();
        let (mut h, polls, drops) = parked_task(&ctx, &s);
        run_until(&ctx, || polls.load(Ordering::Relaxed) == 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::spawn(move || {
            assert!(common::poll_once(&mut h).is_pending());
            let other = new_ctx();
            // `block_on` polls with its own waker (a replacement), then waits.
            tx.send(()).unwrap();
            other.block_on(h)
        });
        rx.recv().unwrap();
        if drop_ctx {
            drop(ctx);
            assert_eq!(drops.load(Ordering::Relaxed), 1);
            assert!(joiner.join().unwrap().unwrap_err().is_cancelled());
        } else {
            take(&s).wake();
            run_until(&ctx, || polls.load(Ordering::Relaxed) == 2);
            joiner.join().unwrap().unwrap();
        }
    }
}
