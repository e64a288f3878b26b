//! QEMU tests/unit/test-aio.c coroutine cases, ported to tasks, plus the task API's
//! own behaviour (join, detach, current, migration, CoQueue, CoMutex).
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use aioctx::aio::{AioContext, CoMutex, CoQueue, IoThread, current, reschedule_to, yield_now};

/// QEMU's `qemu_coroutine_yield`: parks the task until someone takes the waker from
/// `slot` and wakes it (the test kit's park-once future).
fn park(slot: &Mutex<Option<Waker>>) -> common::ParkOnce<&Mutex<Option<Waker>>> {
    common::ParkOnce::new(slot)
}

/// QEMU's `aio_co_enter(ctx, co)` for a parked task: wake it if it is parked.
fn enter(slot: &Mutex<Option<Waker>>) {
    let waker = slot.lock().unwrap().take();
    if let Some(w) = waker {
        w.wake();
    }
}

/// The stack pointer (read from the register: under ASan, locals may live on a heap
/// "fake stack", so their addresses say nothing about stack depth).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn stack_addr() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer register into a local; no memory is touched.
    unsafe { std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    sp
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
fn stack_addr() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

thread_local! {
    static POLL_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static MAX_POLL_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts how deeply polls of wrapped futures nest on this thread: a wake that ran the
/// other task from inside this one (recursion instead of chaining) would nest them.
struct DepthProbe<F>(Pin<Box<F>>);

impl<F: Future> Future for DepthProbe<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let depth = POLL_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        MAX_POLL_DEPTH.with(|m| m.set(m.get().max(depth)));
        let out = self.0.as_mut().poll(cx);
        POLL_DEPTH.with(|d| d.set(d.get() - 1));
        out
    }
}

struct ChainData {
    i: AtomicU32,
    max: u32,
    me: Mutex<Option<Waker>>,
    stack_lo: AtomicUsize,
    stack_hi: AtomicUsize,
}

impl ChainData {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            i: AtomicU32::new(0),
            max,
            me: Mutex::new(None),
            stack_lo: AtomicUsize::new(usize::MAX),
            stack_hi: AtomicUsize::new(0),
        })
    }

    fn record_stack(&self) {
        let sp = stack_addr();
        self.stack_lo.fetch_min(sp, Ordering::Relaxed);
        self.stack_hi.fetch_max(sp, Ordering::Relaxed);
    }
}

/// `chain()` of test_queue_chaining: wake the other task, then yield, `max` times.
async fn chain(d: Arc<ChainData>, other: Arc<ChainData>) {
    while d.i.load(Ordering::Relaxed) < d.max {
        d.record_stack();
        enter(&other.me);
        park(&d.me).await;
        d.i.fetch_add(1, Ordering::Relaxed);
    }
}

/// /aio/coroutine/queue-chaining: two tasks wake each other 25,000 times each; the
/// wakes are queued (chained), never nested, so the stack does not grow.
#[test]
fn queue_chaining() {
    let _wd = common::watchdog("queue_chaining", 60);
    const MAX: u32 = 25_000;
    let ctx = AioContext::new().unwrap();
    let (a, b) = (ChainData::new(MAX), ChainData::new(MAX));
    let ja = ctx.spawn(DepthProbe(Box::pin(chain(Arc::clone(&a), Arc::clone(&b)))));
    let jb = ctx.spawn(DepthProbe(Box::pin(chain(Arc::clone(&b), Arc::clone(&a)))));
    ctx.block_on(ja).unwrap();
    assert_eq!(a.i.load(Ordering::Relaxed), MAX);
    assert_eq!(b.i.load(Ordering::Relaxed), MAX - 1);
    assert!(
        !jb.is_finished(),
        "B must still be parked after its last yield"
    );
    enter(&b.me);
    ctx.block_on(jb).unwrap();
    assert_eq!(b.i.load(Ordering::Relaxed), MAX);
    for d in [&a, &b] {
        let spread = d.stack_hi.load(Ordering::Relaxed) - d.stack_lo.load(Ordering::Relaxed);
        // Nested wakes would put 25,000 polls on top of each other (megabytes).
        assert!(
            spread < 16 * 1024,
            "the stack grew by {spread} bytes across chained wakes"
        );
    }
    assert_eq!(
        MAX_POLL_DEPTH.with(std::cell::Cell::get),
        1,
        "a task was polled from inside another task's poll"
    );
    assert!(!ctx.poll(false));
}

/// /aio/coroutine/worker-thread-co-enter: a plain thread wakes a task of this context;
/// the task runs later, on this thread, inside a poll.
#[test]
fn worker_thread_co_enter() {
    let _wd = common::watchdog("worker_thread_co_enter", 30);
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let me = std::thread::current().id();
    let slot = Arc::new(Mutex::new(None));
    let ran = Arc::new(AtomicBool::new(false));
    let (s, r) = (Arc::clone(&slot), Arc::clone(&ran));
    let task = ctx.spawn(async move {
        park(&s).await;
        // co_check_current_thread: runs in the main (home) thread.
        assert_eq!(std::thread::current().id(), me);
        r.store(true, Ordering::Relaxed);
    });
    assert!(ctx.poll(false), "the spawned task's first run is progress");
    assert!(slot.lock().unwrap().is_some(), "the task parked");
    let s = Arc::clone(&slot);
    std::thread::spawn(move || enter(&s)).join().unwrap();
    assert!(
        !ran.load(Ordering::Relaxed),
        "the task must not run on the worker"
    );
    assert!(ctx.poll(true));
    assert!(ran.load(Ordering::Relaxed));
    assert!(!ctx.poll(false));
    assert!(task.is_finished());
    task.detach();
}

#[test]
fn join_handle_returns_output_and_detach_keeps_running() {
    let ctx = AioContext::new().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    ctx.spawn(async move {
        yield_now().await;
        d.store(true, Ordering::Relaxed);
    })
    .detach();
    let h = ctx.spawn(async { String::from("out") });
    assert_eq!(ctx.block_on(h).unwrap(), "out");
    while !done.load(Ordering::Relaxed) {
        ctx.poll(true);
    }
}

#[test]
fn waking_a_scheduled_task_is_a_noop() {
    let ctx = AioContext::new().unwrap();
    let polls = Arc::new(AtomicU32::new(0));
    let slot = Arc::new(Mutex::new(None::<Waker>));
    let (p, s) = (Arc::clone(&polls), Arc::clone(&slot));
    let h = ctx.spawn(std::future::poll_fn(move |cx| {
        let n = p.fetch_add(1, Ordering::Relaxed) + 1;
        *s.lock().unwrap() = Some(cx.waker().clone());
        if n == 3 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }));
    assert!(ctx.poll(false));
    let w = slot.lock().unwrap().clone().unwrap();
    for _ in 0..10 {
        w.wake_by_ref(); // only the first schedules
    }
    assert!(ctx.poll(false));
    assert_eq!(polls.load(Ordering::Relaxed), 2);
    w.wake_by_ref();
    ctx.block_on(h).unwrap();
    assert_eq!(polls.load(Ordering::Relaxed), 3);
    w.wake(); // completed: a no-op
    assert!(!ctx.poll(false));
}

#[test]
fn current_inside_a_task_is_its_context() {
    let ctx = AioContext::new().unwrap();
    let c = Arc::clone(&ctx);
    let h = ctx.spawn(async move { Arc::ptr_eq(&current(), &c) });
    assert!(ctx.block_on(h).unwrap());
    // On this thread, outside a task, no context is current.
    assert!(aioctx::aio::try_current().is_none());
}

#[test]
fn reschedule_to_moves_the_task_and_back() {
    let _wd = common::watchdog("reschedule_to_moves_the_task_and_back", 30);
    let io = IoThread::new("resched-io").unwrap();
    let ctx = AioContext::new().unwrap();
    let (home, other) = (Arc::clone(&ctx), Arc::clone(io.ctx()));
    let h = ctx.spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..50 {
            reschedule_to(&other).await;
            assert!(Arc::ptr_eq(&current(), &other));
            seen.push(std::thread::current().name().map(str::to_owned));
            reschedule_to(&home).await;
            assert!(Arc::ptr_eq(&current(), &home));
            assert!(home.is_home_thread());
        }
        seen
    });
    let seen = ctx.block_on(h).unwrap();
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|n| n.as_deref() == Some("resched-io")));
}

#[test]
#[should_panic(expected = "reschedule_to awaited outside a task")]
fn reschedule_to_outside_a_task_panics() {
    let ctx = AioContext::new().unwrap();
    let c = Arc::clone(&ctx);
    ctx.block_on(async move { reschedule_to(&c).await });
}

#[test]
fn task_panic_resumes_in_the_awaiter() {
    let ctx = AioContext::new().unwrap();
    let h = ctx.spawn(async {
        panic!("boom in task");
    });
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.block_on(h)))
        .expect_err("the panic reaches the awaiter");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"boom in task"));
}

#[test]
fn spawn_from_another_thread_runs_on_the_home_thread() {
    let _wd = common::watchdog("spawn_from_another_thread", 30);
    let ctx = AioContext::new().unwrap();
    ctx.make_current();
    let me = std::thread::current().id();
    let c = Arc::clone(&ctx);
    let handle = std::thread::spawn(move || c.spawn(async move { std::thread::current().id() }))
        .join()
        .unwrap();
    assert_eq!(ctx.block_on(handle).unwrap(), me);
}

#[test]
fn co_queue_wakes_one_and_all_in_order() {
    let ctx = AioContext::new().unwrap();
    let q = Arc::new(CoQueue::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (q, order) = (Arc::clone(&q), Arc::clone(&order));
            ctx.spawn(async move {
                q.wait_unlocked().await;
                order.lock().unwrap().push(i);
            })
        })
        .collect();
    while ctx.poll(false) {}
    assert!(!q.is_empty());
    assert!(q.wake_one());
    while ctx.poll(false) {}
    assert_eq!(*order.lock().unwrap(), [0]);
    q.wake_all();
    ctx.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    assert!(q.is_empty());
    assert!(!q.wake_one());
}

#[test]
fn co_queue_wait_with_lock_sees_the_condition() {
    let _wd = common::watchdog("co_queue_wait_with_lock", 30);
    let io = IoThread::new("coq-io").unwrap();
    let ctx = AioContext::new().unwrap();
    let state = Arc::new((CoMutex::new(0u32), CoQueue::new()));
    // A consumer on the iothread waits for the producer on this thread, many times.
    let s = Arc::clone(&state);
    let consumer = io.ctx().spawn(async move {
        let (m, q) = &*s;
        let mut seen = 0;
        while seen < 1000 {
            let mut g = m.lock().await;
            while *g == seen {
                g = q.wait(g).await;
            }
            seen = *g;
        }
    });
    ctx.block_on(async {
        let (m, q) = &*state;
        for _ in 0..1000 {
            *m.lock().await += 1;
            q.wake_all();
            yield_now().await;
        }
        consumer.await.unwrap();
    });
}

#[test]
fn co_mutex_dropped_waiter_passes_the_lock_on() {
    let ctx = AioContext::new().unwrap();
    let m = Arc::new(CoMutex::new(()));
    let g = m.try_lock().unwrap();
    // A waiter that is cancelled after the lock was handed to it must hand it on.
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut first = Box::pin(m.lock());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let m2 = Arc::clone(&m);
    let second = ctx.spawn(async move {
        drop(m2.lock().await);
    });
    while ctx.poll(false) {}
    drop(g); // handed to `first`
    drop(first); // cancelled: hands to the task
    ctx.block_on(second).unwrap();
    assert!(!m.is_locked());
}

#[test]
fn co_mutex_is_fifo() {
    let ctx = AioContext::new().unwrap();
    let m = Arc::new(CoMutex::new(Vec::new()));
    let g = m.try_lock().unwrap();
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let m = Arc::clone(&m);
            ctx.spawn(async move { m.lock().await.push(i) })
        })
        .collect();
    while ctx.poll(false) {}
    assert!(m.try_lock().is_none(), "waiters queue behind the holder");
    drop(g);
    ctx.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
    assert_eq!(*m.try_lock().unwrap(), [0, 1, 2, 3, 4]);
}

/// Tasks that yield to each other forever do not starve the rest of the loop: a drain
/// stops after its budget, so the bottom half below gets to run.
#[test]
fn yielding_tasks_do_not_starve_bottom_halves() {
    let _wd = common::watchdog("yielding_tasks_do_not_starve_bottom_halves", 30);
    let ctx = AioContext::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            ctx.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    yield_now().await;
                }
            })
        })
        .collect();
    let s = Arc::clone(&stop);
    ctx.schedule_oneshot(move || s.store(true, Ordering::Relaxed));
    ctx.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
}
