//! Regressions for tasks: a context's unfinished tasks are cancelled when it goes away
//! (their futures dropped once, their `JoinHandle`s resolving to a cancelled
//! `JoinError`, no cycle keeping memory alive); `block_on`, `poll` and `with_current`
//! nest inside tasks and callbacks without hanging or panicking. Each test runs on the
//! back end `AIOCTX_BACKEND` selects (run the suite with `AIOCTX_BACKEND=epoll` too).
#![cfg(not(loom))]

mod common;

use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aioctx::aio::{
    AioContext, CoQueue, IoThread, JoinError, current, reschedule_to, sleep, try_current,
    with_current, yield_now,
};
use common::{Watchdog, new_ctx, watchdog};

/// Counts how many times it was dropped.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counter() -> (Arc<AtomicUsize>, DropCount) {
    let n = Arc::new(AtomicUsize::new(0));
    (Arc::clone(&n), DropCount(n))
}

/// Parks on its first poll, publishing its waker to `slot`; ready when polled again.
struct Park {
    slot: Arc<Mutex<Option<Waker>>>,
    parked: bool,
}

impl Future for Park {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.parked {
            return Poll::Ready(());
        }
        *self.slot.lock().unwrap() = Some(cx.waker().clone());
        self.parked = true;
        Poll::Pending
    }
}

fn assert_cancelled<T: std::fmt::Debug>(r: Result<T, JoinError>) {
    let e = r.expect_err("the task was cancelled, so its JoinHandle yields an error");
    assert!(e.is_cancelled(), "{e:?}");
    assert!(e.to_string().contains("cancelled"), "{e}");
}

// --- Tasks end with their context -----------------------------------------------

#[test]
fn regress_join_handle_resolves_cancelled_after_context_drop() {
    let _w = watchdog("join after context drop", 30);
    let (drops, guard) = counter();
    let b = new_ctx();
    let handle = b.spawn(async move {
        let _g = guard;
        pending::<u32>().await
    });
    // Run it once so that it is parked (not queued) when the context goes.
    b.poll(false);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(b);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the future is dropped with its context"
    );
    assert!(handle.is_finished());
    let other = new_ctx();
    assert_cancelled(other.block_on(handle));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn regress_queued_task_cancelled_when_context_drops_before_it_ran() {
    let (drops, guard) = counter();
    let b = new_ctx();
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    let handle = b.spawn(async move {
        let _g = guard;
        r.store(true, Ordering::SeqCst);
    });
    drop(b);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_cancelled(new_ctx().block_on(handle));
}

#[test]
fn regress_detached_task_future_dropped_with_context_and_waker_after_is_noop() {
    let (drops, guard) = counter();
    let slot = Arc::new(Mutex::new(None));
    let b = new_ctx();
    let s = Arc::clone(&slot);
    b.spawn(async move {
        let _g = guard;
        Park {
            slot: s,
            parked: false,
        }
        .await;
        unreachable!("the context is gone before the wake");
    })
    .detach();
    b.poll(false);
    let waker = slot.lock().unwrap().take().expect("the task parked");
    drop(b);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // A wake of a task whose context is gone does nothing, from any thread.
    waker.wake_by_ref();
    std::thread::spawn(move || waker.wake()).join().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn regress_iothread_drop_cancels_task_that_holds_current() {
    let _w = watchdog("iothread drop with a task holding current()", 30);
    let (drops, guard) = counter();
    let io = IoThread::new("regress-cur").unwrap();
    let weak_ctx = Arc::downgrade(io.ctx());
    let (tx, rx) = mpsc::channel();
    let handle = io.ctx().spawn(async move {
        let _g = guard;
        // The natural idiom: the task holds its own context across an await.
        let ctx = current();
        tx.send(()).unwrap();
        sleep(Duration::from_secs(3600)).await;
        ctx.name().len()
    });
    rx.recv().unwrap();
    drop(io);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(
        weak_ctx.upgrade().is_none(),
        "the IoThread's context outlived it, kept alive by its own task"
    );
    assert_cancelled(new_ctx().block_on(handle));
}

#[test]
fn regress_reschedule_to_held_in_queued_task_does_not_leak() {
    let (drops, guard) = counter();
    let b = new_ctx();
    let weak_b = Arc::downgrade(&b);
    let to_b = reschedule_to(&b);
    b.spawn(async move {
        let _g = guard;
        let _keep = to_b;
        pending::<()>().await;
    })
    .detach();
    // Never polled: the task sits on b's queue holding a handle to b's run queue.
    drop(b);
    assert!(weak_b.upgrade().is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the queued task leaked");
}

#[test]
fn regress_task_moved_to_iothread_cancelled_when_it_drops() {
    let _w = watchdog("moved task cancelled with its new context", 30);
    let (drops, guard) = counter();
    let a = new_ctx();
    let io = IoThread::new("regress-move").unwrap();
    let target = Arc::clone(io.ctx());
    let (tx, rx) = mpsc::channel();
    let handle = a.spawn(async move {
        let _g = guard;
        reschedule_to(&target).await;
        drop(target);
        tx.send(std::thread::current().name().map(str::to_owned))
            .unwrap();
        pending::<()>().await;
    });
    while rx
        .try_recv()
        .map(|n| assert_eq!(n.as_deref(), Some("regress-move")))
        .is_err()
    {
        a.poll(false);
        std::thread::sleep(Duration::from_millis(1));
    }
    let weak_io = Arc::downgrade(io.ctx());
    drop(io);
    assert!(weak_io.upgrade().is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_cancelled(a.block_on(handle));
}

#[test]
fn regress_spawn_after_shutdown_is_cancelled_at_once() {
    let ctx = new_ctx();
    assert_eq!(ctx.shutdown_tasks(), 0);
    let (drops, guard) = counter();
    let handle = ctx.spawn(async move {
        let _g = guard;
        1
    });
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(handle.is_finished());
    assert_cancelled(new_ctx().block_on(handle));
}

#[test]
fn regress_shutdown_tasks_inside_a_task_cancels_it_after_its_poll() {
    let ctx = new_ctx();
    let (drops, guard) = counter();
    let c = Arc::clone(&ctx);
    let polls = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&polls);
    let handle = ctx.spawn(async move {
        let _g = guard;
        p.fetch_add(1, Ordering::SeqCst);
        c.shutdown_tasks();
        yield_now().await;
        p.fetch_add(1, Ordering::SeqCst);
    });
    let other = new_ctx();
    assert_cancelled(other.block_on(async {
        ctx.poll(false);
        handle.await
    }));
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn regress_future_destructor_runs_once_when_wakes_race_context_drop() {
    let _w = watchdog("wakes racing a context drop", 60);
    for round in 0..200 {
        let (drops, guard) = counter();
        let slot = Arc::new(Mutex::new(None));
        let ctx = new_ctx();
        let s = Arc::clone(&slot);
        let handle = ctx.spawn(async move {
            let _g = guard;
            loop {
                Park {
                    slot: Arc::clone(&s),
                    parked: false,
                }
                .await;
            }
        });
        while slot.lock().unwrap().is_none() {
            ctx.poll(false);
        }
        let waker = slot.lock().unwrap().clone().unwrap();
        let go = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&go);
        let waking = std::thread::spawn(move || {
            while !g.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            for _ in 0..(round % 7) * 10 {
                waker.wake_by_ref();
            }
        });
        go.store(true, Ordering::SeqCst);
        if round % 2 == 0 {
            ctx.poll(false);
        }
        drop(ctx);
        waking.join().unwrap();
        slot.lock().unwrap().take();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "round {round}");
        assert_cancelled(new_ctx().block_on(handle));
    }
}

/// A task that waits in a `CoQueue` of another context is cancelled with its own
/// context; a later wake of the queue passes over it.
#[test]
fn regress_co_queue_waiter_cancelled_with_its_context() {
    let (drops, guard) = counter();
    let queue = Arc::new(CoQueue::new());
    let b = new_ctx();
    let q = Arc::clone(&queue);
    let handle = b.spawn(async move {
        let _g = guard;
        q.wait_unlocked().await;
    });
    b.poll(false);
    assert!(!queue.is_empty());
    drop(b);
    assert!(queue.is_empty(), "the cancelled wait left the queue");
    assert!(!queue.wake_one());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_cancelled(new_ctx().block_on(handle));
}

// --- Nesting inside tasks and callbacks -------------------------------------------

#[test]
fn regress_block_on_nested_in_task_runs_the_spawned_task() {
    let ctx = new_ctx();
    let _w = Watchdog::for_ctx("block_on nested in a task", &ctx);
    let c = Arc::clone(&ctx);
    let outer = ctx.spawn(async move { c.block_on(c.spawn(async { 7 })) });
    assert_eq!(ctx.block_on(outer).unwrap().unwrap(), 7);
}

#[test]
fn regress_block_on_nested_in_task_waits_for_another_thread() {
    let ctx = new_ctx();
    let _w = Watchdog::for_ctx("block_on in a task, woken by another thread", &ctx);
    let c = Arc::clone(&ctx);
    let slot = Arc::new(Mutex::new(None));
    let s = Arc::clone(&slot);
    let outer = ctx.spawn(async move {
        // A second task parks; another thread wakes it while this task blocks on it.
        let parked = c.spawn(Park {
            slot: Arc::clone(&s),
            parked: false,
        });
        let s2 = Arc::clone(&s);
        let waker_thread = std::thread::spawn(move || {
            loop {
                let w = s2.lock().unwrap().take();
                if let Some(w) = w {
                    w.wake();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        c.block_on(parked).unwrap();
        waker_thread.join().unwrap();
        3
    });
    assert_eq!(ctx.block_on(outer).unwrap(), 3);
}

#[test]
fn regress_poll_loop_nested_in_task_runs_tasks_it_woke() {
    let ctx = new_ctx();
    let _w = Watchdog::for_ctx("poll loop nested in a task", &ctx);
    let c = Arc::clone(&ctx);
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    let outer = ctx.spawn(async move {
        let d2 = Arc::clone(&d);
        c.spawn(async move {
            yield_now().await;
            d2.store(true, Ordering::SeqCst);
        })
        .detach();
        while !d.load(Ordering::SeqCst) {
            c.poll(true);
        }
    });
    ctx.block_on(outer).unwrap();
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn regress_block_on_nested_in_task_of_task_runs_the_innermost() {
    let ctx = new_ctx();
    let _w = Watchdog::for_ctx("block_on nested two tasks deep", &ctx);
    let c = Arc::clone(&ctx);
    let outer = ctx.spawn(async move {
        let c2 = Arc::clone(&c);
        let mid = c.spawn(async move { c2.block_on(c2.spawn(async { 5 })).unwrap() + 1 });
        c.block_on(mid).unwrap() + 1
    });
    assert_eq!(ctx.block_on(outer).unwrap(), 7);
}

#[test]
fn regress_block_on_nested_in_bh_callback_runs_tasks() {
    let ctx = new_ctx();
    let _w = Watchdog::for_ctx("block_on nested in a BH", &ctx);
    let c = Arc::clone(&ctx);
    let got = Arc::new(AtomicUsize::new(0));
    let g = Arc::clone(&got);
    ctx.schedule_oneshot(move || {
        let v = c.block_on(c.spawn(async { 9 })).unwrap();
        g.store(v, Ordering::SeqCst);
    });
    while got.load(Ordering::SeqCst) == 0 {
        ctx.poll(true);
    }
    assert_eq!(got.load(Ordering::SeqCst), 9);
}

#[test]
fn regress_block_on_nested_in_task_racing_shutdown() {
    let _w = watchdog("nested block_on racing a shutdown", 30);
    let ctx = new_ctx();
    let c = Arc::clone(&ctx);
    let (tx, rx) = mpsc::channel();
    let outer = ctx.spawn(async move {
        let inner = c.spawn(pending::<()>());
        tx.send(Arc::downgrade(&c)).unwrap();
        // Cancelled by the shutdown below, from another thread.
        c.block_on(inner)
    });
    let ctx2 = Arc::clone(&ctx);
    let shut = std::thread::spawn(move || {
        let weak: Weak<AioContext> = rx.recv().unwrap();
        drop(weak);
        ctx2.shutdown_tasks()
    });
    let r = ctx.block_on(outer);
    shut.join().unwrap();
    // The outer task may be cancelled itself (shutdown cancels it after its poll) or
    // finish with the inner task's cancellation: never a hang.
    match r {
        Ok(inner) => assert_cancelled(inner),
        Err(e) => assert!(e.is_cancelled()),
    }
}

// --- with_current --------------------------------------------------------------------

#[test]
fn regress_block_on_inside_with_current() {
    std::thread::spawn(|| {
        let ctx = new_ctx();
        ctx.make_current();
        let v = with_current(|c| {
            let c = c.expect("a context is current");
            c.block_on(async {
                yield_now().await;
                // `current()` inside is the same context, reached through a nested
                // enter of the thread's current context.
                assert!(try_current().is_some());
                4
            })
        });
        assert_eq!(v, 4);
        // A draining poll inside: the task makes its context current while it runs.
        let h = ctx.spawn(async { current().name().len() });
        let n = with_current(|c| {
            let c = c.unwrap();
            while !h.is_finished() {
                c.poll(true);
            }
            2
        });
        assert_eq!(n, 2);
        assert_eq!(ctx.block_on(h).unwrap(), "aio-context".len());
    })
    .join()
    .unwrap();
}

#[test]
fn regress_make_current_inside_with_current_is_refused_with_reason() {
    let msg = std::thread::spawn(|| {
        let a = new_ctx();
        let b = new_ctx();
        a.make_current();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_current(|_| {
                b.make_current();
            })
        }));
        let p = r.expect_err("make_current inside with_current panics");
        p.downcast_ref::<String>().cloned().unwrap_or_default()
    })
    .join()
    .unwrap();
    assert!(msg.contains("with_current"), "{msg}");
}
