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
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aioctx::aio::{
    AioContext, CoQueue, IoThread, JoinError, current, reschedule_to, sleep, try_current,
    with_current, yield_now,
};
use common::{Watchdog, new_ctx};

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
type Park = common::ParkOnce<Arc<Mutex<Option<Waker>>>>;

fn assert_cancelled<T: std::fmt::Debug>(r: Result<T, JoinError>) {
    let e = r.expect_err("the task was cancelled, so its JoinHandle yields an error");
    assert!(e.is_cancelled(), "{e:?}");
    assert!(e.to_string().contains("cancelled"), "{e}");
}

// --- Tasks end with their context -----------------------------------------------

#[test]
fn regress_join_handle_resolves_cancelled_after_context_drop() {
    let _w = Watchdog::arm_secs(30);
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
    let _w = Watchdog::arm_secs(30);
    let (drops, guard) = counter();
    let io = IoThread::new("regress-cur").unwrap();
    let weak_ctx = Arc::downgrade(io.ctx());
    let bh = io.ctx().bh_new(|| {});
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
    assert!(
        bh.try_schedule().is_err(),
        "a BH of the gone context still schedules"
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
    let _w = Watchdog::arm_secs(30);
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
fn regress_reschedule_to_a_gone_or_shut_down_context_cancels_the_task() {
    let _w = Watchdog::arm_secs(30);
    let a = new_ctx();
    for shut_down in [false, true] {
        let (drops, guard) = counter();
        let b = new_ctx();
        let to_b = reschedule_to(&b);
        if shut_down {
            b.shutdown_tasks();
        } else {
            drop(b);
        }
        let moved = Arc::new(AtomicBool::new(false));
        let m = Arc::clone(&moved);
        let handle = a.spawn(async move {
            let _g = guard;
            to_b.await;
            m.store(true, Ordering::SeqCst);
        });
        assert_cancelled(a.block_on(handle));
        assert!(
            !moved.load(Ordering::SeqCst),
            "the task ran on after its move failed"
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn regress_nested_block_on_ends_when_the_awaited_tasks_iothread_drops() {
    let _w = Watchdog::arm_secs(30);
    let io1 = IoThread::new("regress-nest1").unwrap();
    let io2 = IoThread::new("regress-nest2").unwrap();
    let remote_task = io2.ctx().spawn(pending::<()>());
    let (tx, rx) = mpsc::channel();
    let outer = io1.ctx().spawn(async move {
        tx.send(()).unwrap();
        // Blocks io1's thread in a nested loop until io2's task ends.
        current().block_on(remote_task)
    });
    rx.recv().unwrap();
    drop(io2);
    let r = new_ctx().block_on(outer);
    assert_cancelled(r.expect("the outer task finished"));
    drop(io1);
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
    let _w = Watchdog::arm_secs(60);
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
    let _w = Watchdog::on_ctx(&ctx);
    let c = Arc::clone(&ctx);
    let outer = ctx.spawn(async move { c.block_on(c.spawn(async { 7 })) });
    assert_eq!(ctx.block_on(outer).unwrap().unwrap(), 7);
}

#[test]
fn regress_block_on_nested_in_task_waits_for_another_thread() {
    let ctx = new_ctx();
    let _w = Watchdog::on_ctx(&ctx);
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
    let _w = Watchdog::on_ctx(&ctx);
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
    let _w = Watchdog::on_ctx(&ctx);
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
    let _w = Watchdog::on_ctx(&ctx);
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
    let _w = Watchdog::arm_secs(30);
    let ctx = new_ctx();
    let c = Arc::clone(&ctx);
    let (tx, rx) = mpsc::channel();
    let outer = ctx.spawn(async move {
        let inner = c.spawn(pending::<()>());
        tx.send(()).unwrap();
        // Cancelled by the shutdown below, from another thread.
        c.block_on(inner)
    });
    let ctx2 = Arc::clone(&ctx);
    let shut = std::thread::spawn(move || {
        rx.recv().unwrap();
        ctx2.shutdown_tasks()
    });
    let r = ctx.block_on(outer);
    assert_eq!(shut.join().unwrap(), 2);
    // The outer task finished its poll with the inner task's cancellation (its output
    // stands: a cancel lands on a running task only when its poll returns Pending).
    assert_cancelled(r.expect("the outer task returned before it could be cancelled"));
}

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("destructor boom");
    }
}

#[test]
fn regress_destructor_panic_of_cancelled_task_goes_to_its_awaiter() {
    let b = new_ctx();
    let handle = b.spawn(async {
        let _p = PanicOnDrop;
        pending::<()>().await;
    });
    b.poll(false);
    drop(b);
    let other = new_ctx();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| other.block_on(handle)))
        .expect_err("the destructor's panic reaches the awaiter");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"destructor boom"));
}

/// Ready at once; its destructor panics after it returned its output.
struct ReadyThenPanic {
    _p: PanicOnDrop,
}

impl Future for ReadyThenPanic {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<u32> {
        Poll::Ready(5)
    }
}

#[test]
fn regress_destructor_panic_after_ready_completes_the_task() {
    let ctx = new_ctx();
    let _w = Watchdog::on_ctx(&ctx);
    let joined = ctx.spawn(ReadyThenPanic { _p: PanicOnDrop });
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.block_on(joined)))
        .expect_err("the destructor's panic reaches the awaiter");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"destructor boom"));
    // Detached: the panic unwinds the loop, and the task is complete, not stuck running.
    ctx.spawn(ReadyThenPanic { _p: PanicOnDrop }).detach();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| while ctx.poll(false) {}))
        .expect_err("a detached task's panic unwinds the poll");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"destructor boom"));
    assert_eq!(
        ctx.shutdown_tasks(),
        0,
        "the task is finished, not left registered"
    );
}

#[test]
fn regress_detached_destructor_panic_does_not_stop_context_drop() {
    let (drops, guard) = counter();
    let b = new_ctx();
    b.spawn(async {
        let _p = PanicOnDrop;
        pending::<()>().await;
    })
    .detach();
    b.spawn(async move {
        let _g = guard;
        pending::<()>().await;
    })
    .detach();
    b.poll(false);
    let weak = Arc::downgrade(&b);
    drop(b); // logs the panic, cancels the other task, finishes the drop
    assert!(weak.upgrade().is_none());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn regress_detached_destructor_panic_resumes_from_shutdown_tasks_after_all_cancelled() {
    let (drops, guard) = counter();
    let b = new_ctx();
    b.spawn(async {
        let _p = PanicOnDrop;
        pending::<()>().await;
    })
    .detach();
    b.spawn(async move {
        let _g = guard;
        pending::<()>().await;
    })
    .detach();
    b.poll(false);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.shutdown_tasks()))
        .expect_err("the detached task's destructor panic is not swallowed");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"destructor boom"));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the other task was cancelled too"
    );
    // The context is still usable for everything but tasks.
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    b.schedule_oneshot(move || r.store(true, Ordering::SeqCst));
    while !ran.load(Ordering::SeqCst) {
        b.poll(true);
    }
}

/// A buffer that counts its drops (a read's buffer is owned by the kernel while the
/// read is in flight, and must be freed once, after the read is reaped).
struct CountedBuf {
    bytes: Vec<u8>,
    _drops: DropCount,
}

// SAFETY: the bytes live on the heap in a Vec that is never resized, so the pointer is
// stable while the buffer moves; `len` bytes are initialized.
unsafe impl aioctx::aio::IoBuf for CountedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.bytes.len()
    }
}

// SAFETY: as above; the Vec's `len` bytes are valid for writes.
unsafe impl aioctx::aio::IoBufMut for CountedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }
}

#[test]
fn regress_iothread_drop_cancels_task_holding_current_with_a_read_in_flight() {
    use std::os::fd::AsRawFd;
    if std::env::var(aioctx::aio::BACKEND_ENV).is_ok_and(|v| v == "epoll") {
        // A read of a pipe is refused at once by the epoll back end's pread (ESPIPE):
        // there is no read in flight to test. The timer variant above covers epoll.
        println!("skipped: needs io_uring, and this run selects epoll");
        return;
    }
    let builder = AioContext::builder().backend(aioctx::aio::Backend::IoUring);
    let io = match IoThread::with_builder("regress-read", builder) {
        Ok(io) => io,
        Err(e) => {
            println!("skipped: io_uring is unavailable here: {e}");
            return;
        }
    };
    let _w = Watchdog::arm_secs(30);
    let (rd, wr) = std::io::pipe().unwrap();
    let (buf_drops, buf_guard) = counter();
    let (drops, guard) = counter();
    let weak_ctx = Arc::downgrade(io.ctx());
    let fd = rd.as_raw_fd();
    let (tx, rx) = mpsc::channel();
    let handle = io.ctx().spawn(async move {
        let _g = guard;
        let ctx = current();
        let buf = CountedBuf {
            bytes: vec![0; 16],
            _drops: buf_guard,
        };
        let read = ctx.read_at(fd, buf, 0);
        tx.send(()).unwrap();
        let (res, _buf) = read.await;
        res.map(|_| ())
    });
    rx.recv().unwrap();
    drop(io);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(
        weak_ctx.upgrade().is_none(),
        "the context outlived its IoThread"
    );
    assert_eq!(
        buf_drops.load(Ordering::SeqCst),
        1,
        "the read's buffer was freed once"
    );
    assert_cancelled(new_ctx().block_on(handle));
    drop((rd, wr));
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

// --- Random lifecycles ---------------------------------------------------------------

/// One tracked task of the random test.
struct Tracked {
    handle: aioctx::aio::JoinHandle<usize>,
    drops: Arc<AtomicUsize>,
    slot: Arc<Mutex<Option<Waker>>>,
}

/// Random interleavings of spawn, wakes (here and from other threads), polls, nested
/// `block_on` inside tasks, `shutdown_tasks` and context drops, on three contexts: every
/// future is dropped exactly once, and every handle ends `Ok(its id)` or cancelled.
#[test]
fn regress_random_task_lifecycles_drop_each_future_once_and_resolve() {
    let _w = Watchdog::arm_secs(120);
    let (mut finished, mut cancelled) = (0, 0);
    let mut finished_single_threaded = 0;
    for seed in 0..60 {
        let mut rng = common::Rng::new(seed);
        let mut ctxs: Vec<Option<Arc<AioContext>>> = (0..3).map(|_| Some(new_ctx())).collect();
        let mut tasks: Vec<Tracked> = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..80 {
            match rng.below(12) {
                0..=2 => {
                    let Some(ctx) = ctxs[rng.below(3)].clone() else {
                        continue;
                    };
                    let (drops, guard) = counter();
                    let slot = Arc::new(Mutex::new(None));
                    let (s, id, parks, nested) = (
                        Arc::clone(&slot),
                        tasks.len(),
                        1 + rng.below(3),
                        rng.below(2) == 0,
                    );
                    // Some tasks move to another context (all three share this thread)
                    // after their first park; it may be shut down or dropped by then.
                    let to = ctxs[rng.below(3)]
                        .as_ref()
                        .filter(|_| rng.below(3) == 0)
                        .map(reschedule_to);
                    let handle = ctx.spawn(async move {
                        let _g = guard;
                        for i in 0..parks {
                            Park {
                                slot: Arc::clone(&s),
                                parked: false,
                            }
                            .await;
                            if i == 0
                                && let Some(to) = to
                            {
                                to.await;
                                break;
                            }
                        }
                        if nested {
                            // Nested in the task: runs the inner task (or sees it
                            // cancelled by a shutdown), never hangs.
                            let c = current();
                            let inner = c.spawn(async {
                                yield_now().await;
                                1
                            });
                            let _ = c.block_on(inner);
                        }
                        id
                    });
                    tasks.push(Tracked {
                        handle,
                        drops,
                        slot,
                    });
                }
                3..=5 => {
                    if tasks.is_empty() {
                        continue;
                    }
                    let t = &tasks[rng.below(tasks.len())];
                    let waker = t.slot.lock().unwrap().take();
                    if let Some(w) = waker {
                        // The first seeds wake on this thread only, so that their
                        // outcomes are the same on every run.
                        if seed < 20 || rng.below(2) == 0 {
                            w.wake();
                        } else {
                            threads.push(std::thread::spawn(move || w.wake()));
                        }
                    }
                }
                6..=9 => {
                    if let Some(ctx) = &ctxs[rng.below(3)] {
                        for _ in 0..=rng.below(4) {
                            ctx.poll(false);
                        }
                    }
                }
                10 => {
                    if rng.below(3) == 0
                        && let Some(ctx) = &ctxs[rng.below(3)]
                    {
                        ctx.shutdown_tasks();
                    }
                }
                _ => {
                    if rng.below(3) == 0 {
                        ctxs[rng.below(3)] = None;
                    }
                }
            }
        }
        ctxs.clear();
        for t in threads {
            t.join().unwrap();
        }
        let other = new_ctx();
        for (id, t) in tasks.into_iter().enumerate() {
            t.slot.lock().unwrap().take();
            assert!(
                t.handle.is_finished(),
                "seed {seed}: task {id} outlived its context"
            );
            assert_eq!(t.drops.load(Ordering::SeqCst), 1, "seed {seed}: task {id}");
            match other.block_on(t.handle) {
                Ok(got) => {
                    assert_eq!(got, id, "seed {seed}");
                    finished += 1;
                    if seed < 20 {
                        finished_single_threaded += 1;
                    }
                }
                Err(e) => {
                    assert!(e.is_cancelled());
                    cancelled += 1;
                }
            }
        }
    }
    // Both outcomes occur in the single-threaded seeds, whose runs are deterministic:
    // the test exercises what it claims.
    println!(
        "{finished} tasks finished ({finished_single_threaded} single-threaded), {cancelled} cancelled"
    );
    assert!(finished_single_threaded > 0 && cancelled > 0);
}
