//! QEMU tests/unit/test-aio-multithread.c, ported: tasks scheduled across five
//! iothreads, and CoMutex under contention and handoff, with a std Mutex baseline.
//! Each test runs for about a second (duration-bounded) and asserts only correctness.
#![cfg(not(loom))]

mod common;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aioctx::aio::{AioContext, CoMutex, IoThread, JoinHandle, current, reschedule_to};

const NUM_CONTEXTS: usize = 5;

thread_local! {
    /// QEMU's thread-local `id`: which of the iothreads this is (-1 elsewhere).
    static ID: Cell<isize> = const { Cell::new(-1) };
}

fn id() -> usize {
    let id = ID.with(Cell::get);
    assert!(id >= 0, "id() called outside the test's iothreads");
    id as usize
}

/// `ctx_run`: runs `f` on `ctx`'s thread and waits for it.
fn ctx_run(ctx: &AioContext, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    ctx.schedule_oneshot(move || {
        f();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("ctx_run: the iothread did not run the callback within 20 s");
}

/// `create_aio_contexts`: five iothreads, each told its id.
fn create_aio_contexts() -> Vec<IoThread> {
    let threads: Vec<IoThread> = (0..NUM_CONTEXTS)
        .map(|i| IoThread::new(&format!("multi{i}")).unwrap())
        .collect();
    for (i, t) in threads.iter().enumerate() {
        ctx_run(t.ctx(), move || ID.with(|id| id.set(i as isize)));
    }
    threads
}

/// `join_aio_contexts`: stops and joins every iothread.
fn join_aio_contexts(threads: Vec<IoThread>) {
    drop(threads);
}

/// Waits for every handle from this thread (with a context of its own).
fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let waiter = AioContext::new().unwrap();
    waiter.block_on(async {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    })
}

/// /aio/multi/lifecycle
#[test]
fn lifecycle() {
    let _wd = common::watchdog("lifecycle", 30);
    let threads = create_aio_contexts();
    for t in &threads {
        let name = t.name().to_owned();
        ctx_run(t.ctx(), move || {
            assert_eq!(std::thread::current().name(), Some(name.as_str()));
            assert!(Arc::ptr_eq(&current(), &current()));
        });
    }
    join_aio_contexts(threads);
}

/// Parks the task with its waker in `slot` (QEMU: `atomic_set_mb(&to_schedule[id],
/// self)` + `qemu_coroutine_yield`); ready on the next poll.
type ParkIn<'a> = common::ParkOnce<&'a Mutex<Option<Waker>>>;

struct ScheduleState {
    to_schedule: [Mutex<Option<Waker>>; NUM_CONTEXTS],
    stop: [AtomicBool; NUM_CONTEXTS],
    count_retry: AtomicU64,
    count_here: AtomicU64,
    count_other: AtomicU64,
}

impl ScheduleState {
    /// `schedule_next`: wakes the task parked on context `n`, if any.
    fn schedule_next(&self, n: usize) -> bool {
        let waker = self.to_schedule[n].lock().unwrap().take();
        let Some(w) = waker else {
            self.count_retry.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if ID.with(Cell::get) == n as isize {
            self.count_here.fetch_add(1, Ordering::Relaxed);
        } else {
            self.count_other.fetch_add(1, Ordering::Relaxed);
        }
        w.wake();
        true
    }
}

/// /aio/multi/schedule: five tasks on five iothreads wake each other at random, across
/// threads. A double schedule would run a task that is not parked (the slot check
/// fails, or the task state machine panics); a lost wake would hang (watchdog).
///
/// In QEMU's version a "token" (a woken task) dies whenever its random pick finds an
/// empty slot, so the run soon settles with every task parked. Here the main thread
/// also calls `schedule_next` at random for the whole second — out-of-loop wakes
/// (QEMU: `aio_co_schedule` from a non-iothread) — which keeps the tasks busy.
#[test]
fn multi_co_schedule() {
    let _wd = common::watchdog("multi_co_schedule", 60);
    let st = Arc::new(ScheduleState {
        to_schedule: Default::default(),
        stop: Default::default(),
        count_retry: AtomicU64::new(0),
        count_here: AtomicU64::new(0),
        count_other: AtomicU64::new(0),
    });
    let threads = create_aio_contexts();
    let handles: Vec<_> = threads
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let st = Arc::clone(&st);
            t.ctx().spawn(async move {
                let mut rng = common::Rng::new(i as u64 + 1);
                let mut runs = 0u64;
                let me = id();
                assert!(st.to_schedule[me].lock().unwrap().is_none());
                while !st.stop[me].load(Ordering::Relaxed) {
                    let n = rng.below(NUM_CONTEXTS);
                    st.schedule_next(n);
                    ParkIn {
                        slot: &st.to_schedule[me],
                        parked: false,
                    }
                    .await;
                    // Whoever woke us cleared the slot; we run where we parked.
                    assert_eq!(id(), me);
                    assert!(st.to_schedule[me].lock().unwrap().is_none());
                    runs += 1;
                }
                runs
            })
        })
        .collect();
    let mut rng = common::Rng::new(99);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        if !st.schedule_next(rng.below(NUM_CONTEXTS)) {
            std::thread::yield_now();
        }
    }
    for (i, t) in threads.iter().enumerate() {
        let s = Arc::clone(&st);
        ctx_run(t.ctx(), move || {
            s.stop[id()].store(true, Ordering::Relaxed);
            s.schedule_next(id());
        });
        assert!(st.to_schedule[i].lock().unwrap().is_none());
    }
    let runs = join_all(handles);
    join_aio_contexts(threads);
    let (here, other, retry) = (
        st.count_here.load(Ordering::Relaxed),
        st.count_other.load(Ordering::Relaxed),
        st.count_retry.load(Ordering::Relaxed),
    );
    eprintln!(
        "scheduled {other}, queued {here}, retry {retry}, total {}; runs {runs:?}",
        other + here + retry
    );
    // Every successful schedule_next woke exactly one parked task, and each wake made
    // exactly one run (the final wakes by finish_cb included).
    assert_eq!(runs.iter().sum::<u64>(), here + other);
    assert!(other > 0, "no cross-thread wake happened");
}

struct MutexTest<M> {
    mutex: M,
    atomic_counter: AtomicU32,
    running: AtomicU32,
    now_stopping: AtomicBool,
}

/// The shared shape of /aio/multi/mutex/*: `threads` tasks on as many iothreads loop
/// lock; counter++; unlock; atomic_counter++ until told to stop.
fn test_multi_mutex<M, F, Fut>(
    threads: usize,
    dur: Duration,
    mutex: M,
    entry: F,
) -> Arc<MutexTest<M>>
where
    M: Send + Sync + 'static,
    F: Fn(Arc<MutexTest<M>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let t = Arc::new(MutexTest {
        mutex,
        atomic_counter: AtomicU32::new(0),
        running: AtomicU32::new(threads as u32),
        now_stopping: AtomicBool::new(false),
    });
    let iothreads = create_aio_contexts();
    assert!(threads <= NUM_CONTEXTS);
    for io in iothreads.iter().take(threads) {
        io.ctx().spawn(entry(Arc::clone(&t))).detach();
    }
    std::thread::sleep(dur);
    t.now_stopping.store(true, Ordering::Relaxed);
    while t.running.load(Ordering::Acquire) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    join_aio_contexts(iothreads);
    t
}

async fn co_mutex_entry(t: Arc<MutexTest<CoMutex<u32>>>) {
    while !t.now_stopping.load(Ordering::Relaxed) {
        {
            let mut g = t.mutex.lock().await;
            *g += 1;
        }
        // After the unlock, as in QEMU (the counter must not run ahead of the lock).
        t.atomic_counter.fetch_add(1, Ordering::Relaxed);
    }
    // Release: pairs with the Acquire load of `running` in the test's main thread.
    t.running.fetch_sub(1, Ordering::Release);
}

fn run_co_mutex(threads: usize, dur: Duration) {
    let t = test_multi_mutex(threads, dur, CoMutex::new(0u32), co_mutex_entry);
    let counter = *t.mutex.try_lock().expect("the mutex is free at the end");
    eprintln!(
        "{threads} contexts: {} iterations/second",
        counter as f64 / dur.as_secs_f64()
    );
    assert_eq!(counter, t.atomic_counter.load(Ordering::Relaxed));
    assert!(counter > 0);
}

/// /aio/multi/mutex/contended: five contexts on one CoMutex (mostly the waiter queue).
#[test]
fn multi_co_mutex_contended() {
    let _wd = common::watchdog("multi_co_mutex_contended", 60);
    run_co_mutex(5, Duration::from_millis(1000));
}

/// /aio/multi/mutex/handoff: two contexts (mostly the unlock-to-waiter handoff).
#[test]
fn multi_co_mutex_handoff() {
    let _wd = common::watchdog("multi_co_mutex_handoff", 60);
    run_co_mutex(2, Duration::from_millis(1500));
}

/// /aio/multi/mutex/pthread: the baseline, a std Mutex that blocks the iothread.
#[test]
fn multi_co_mutex_pthread() {
    let _wd = common::watchdog("multi_co_mutex_pthread", 60);
    let dur = Duration::from_millis(1000);
    let t = test_multi_mutex(5, dur, Mutex::new(0u32), |t| async move {
        while !t.now_stopping.load(Ordering::Relaxed) {
            *t.mutex.lock().unwrap() += 1;
            t.atomic_counter.fetch_add(1, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire load of `running` in the main thread.
        t.running.fetch_sub(1, Ordering::Release);
    });
    let counter = *t.mutex.lock().unwrap();
    eprintln!(
        "pthread: {} iterations/second",
        counter as f64 / dur.as_secs_f64()
    );
    assert_eq!(counter, t.atomic_counter.load(Ordering::Relaxed));
    assert!(counter > 0);
}

/// Polls `inner`, asserting that no two polls of it overlap (the task never runs on two
/// threads at once).
struct Exclusive<F> {
    busy: Arc<AtomicBool>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Exclusive<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        assert!(
            !self.busy.swap(true, Ordering::Acquire),
            "a task was polled on two threads at once"
        );
        let out = self.inner.as_mut().poll(cx);
        self.busy.store(false, Ordering::Release);
        out
    }
}

/// Tasks that migrate between the five iothreads at random while other tasks wake
/// them from everywhere: every hop lands on the target, no task runs twice at once.
#[test]
fn multi_co_reschedule() {
    let _wd = common::watchdog("multi_co_reschedule", 60);
    let threads = create_aio_contexts();
    let ctxs: Arc<Vec<Arc<AioContext>>> =
        Arc::new(threads.iter().map(|t| Arc::clone(t.ctx())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let hops = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let first = Arc::clone(&ctxs[i as usize % NUM_CONTEXTS]);
            let (ctxs, stop, hops) = (Arc::clone(&ctxs), Arc::clone(&stop), Arc::clone(&hops));
            let fut = async move {
                let mut rng = common::Rng::new(100 + i);
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.below(NUM_CONTEXTS);
                    reschedule_to(&ctxs[n]).await;
                    assert_eq!(id(), n, "a task ran on the wrong iothread");
                    assert!(Arc::ptr_eq(&current(), &ctxs[n]));
                    hops.fetch_add(1, Ordering::Relaxed);
                    if rng.below(4) == 0 {
                        aioctx::aio::yield_now().await;
                    }
                }
            };
            first.spawn(Exclusive {
                busy: Arc::new(AtomicBool::new(false)),
                inner: Box::pin(fut),
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    join_all(handles);
    join_aio_contexts(threads);
    assert!(hops.load(Ordering::Relaxed) > 0);
}
