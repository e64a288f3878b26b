//! Allocation counts of the loop's hot paths, on the home thread: a pre-allocated BH's
//! schedule + run and a task's same-thread wake (its `waker.wake()` + its next poll)
//! allocate nothing; a spawn allocates once (the task: one `Arc` holding its state,
//! home, join slot and future).
//!
//! The test kit's counting allocator counts per thread (a `const` thread-local, which
//! itself never allocates), so tests running in parallel — and the context's own helper threads —
//! cannot disturb a count. Each test warms its paths first (buffers grow to their
//! working size once) and then asserts on the counts of many repetitions.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use common::{Watchdog, new_ctx};

// The test kit's per-thread counting allocator.
#[global_allocator]
static GLOBAL: common::CountingAlloc = common::CountingAlloc;

/// Allocations made by this thread while `f` runs.
fn allocs_in(f: impl FnOnce()) -> u64 {
    common::count_allocs(f).1
}

const ROUNDS: u64 = 1000;

#[test]
fn prealloc_bh_schedule_and_run_allocate_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("prealloc_bh_alloc", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    for _ in 0..16 {
        bh.schedule();
        ctx.poll(false);
    }
    let n = allocs_in(|| {
        for _ in 0..ROUNDS {
            bh.schedule();
            assert!(ctx.poll(false));
        }
    });
    assert_eq!(runs.load(Ordering::Relaxed), ROUNDS + 16);
    assert_eq!(n, 0, "{n} allocations in {ROUNDS} BH schedule + run rounds");
}

/// A BH scheduled from inside another BH's callback (the home thread inside `poll`)
/// allocates nothing either.
#[test]
fn prealloc_bh_scheduled_from_a_callback_allocates_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("nested_bh_alloc", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let inner = Arc::new(ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    }));
    let i = Arc::clone(&inner);
    let outer = ctx.bh_new(move || i.schedule());
    let round = || {
        outer.schedule();
        ctx.poll(false); // runs `outer`, which schedules `inner`
        ctx.poll(false); // runs `inner`
    };
    for _ in 0..16 {
        round();
    }
    let n = allocs_in(|| (0..ROUNDS).for_each(|_| round()));
    assert_eq!(runs.load(Ordering::Relaxed), ROUNDS + 16);
    assert_eq!(n, 0, "{n} allocations in {ROUNDS} nested BH rounds");
    drop(outer);
}

/// A future that parks until woken, `rounds` times, keeping its waker where the test
/// can wake it.
struct Parks {
    slot: Arc<Mutex<Option<Waker>>>,
    polls: Arc<AtomicU64>,
    rounds: u64,
}

impl Future for Parks {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.rounds {
            return Poll::Ready(n);
        }
        let mut slot = self.slot.lock().unwrap();
        match &mut *slot {
            Some(w) => w.clone_from(cx.waker()),
            None => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[test]
fn same_thread_task_wake_and_poll_allocate_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("task_wake_alloc", &ctx);
    let slot = Arc::new(Mutex::new(None::<Waker>));
    let polls = Arc::new(AtomicU64::new(0));
    let warm = 16;
    let task = ctx.spawn(Parks {
        slot: Arc::clone(&slot),
        polls: Arc::clone(&polls),
        rounds: warm + ROUNDS,
    });
    ctx.poll(false);
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    let round = || {
        let w = slot.lock().unwrap().take().expect("the task parked");
        w.wake();
        ctx.poll(false);
    };
    for _ in 0..warm - 1 {
        round();
    }
    let n = allocs_in(|| (0..ROUNDS).for_each(|_| round()));
    assert_eq!(polls.load(Ordering::Relaxed), warm + ROUNDS);
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} same-thread wakes + polls"
    );
    round(); // the last wake: the task finishes
    assert_eq!(ctx.block_on(task).unwrap(), warm + ROUNDS + 1);
}

/// A spawn allocates once: the task itself (one `Arc` holding its state word, home,
/// join slot and future); the run queue and the task registry reuse their buffers.
/// Running and joining the task allocate nothing more.
#[test]
fn spawn_allocates_once_and_run_and_join_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("spawn_alloc", &ctx);
    for i in 0..16u64 {
        let h = ctx.spawn(async move { i });
        assert_eq!(ctx.block_on(h).unwrap(), i);
    }
    let (mut spawns, mut rest) = (0, 0);
    for i in 0..ROUNDS {
        let mut h = None;
        spawns += allocs_in(|| h = Some(ctx.spawn(async move { i })));
        let h = h.unwrap();
        rest += allocs_in(|| {
            ctx.poll(false);
        });
        let mut h = std::pin::pin!(h);
        rest += allocs_in(|| assert_eq!(common::poll_once(&mut h), Poll::Ready(Ok(i))));
    }
    assert!(spawns <= ROUNDS, "{spawns} allocations in {ROUNDS} spawns");
    assert_eq!(
        rest, 0,
        "{rest} allocations running and joining {ROUNDS} tasks"
    );
}

/// A wake of `block_on`'s own waker on its thread (a `yield_now` awaited directly in
/// `block_on`: the wake, a loop pass, the next poll) allocates nothing.
#[test]
fn block_on_same_thread_wake_allocates_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("block_on_wake_alloc", &ctx);
    let n = ctx.block_on(async {
        for _ in 0..16 {
            aioctx::aio::yield_now().await;
        }
        let before = common::allocs();
        for _ in 0..ROUNDS {
            aioctx::aio::yield_now().await;
        }
        common::allocs() - before
    });
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} same-thread wakes of block_on"
    );
}

/// A NOP submitted with a kept handler (`submit_raw_handler`) and dispatched by a poll
/// allocates nothing: the loop holds a reference to the caller's handler, its op table
/// and dispatch queue reuse their slots. Batches of 1 and of 32 (several CQEs per
/// poll). io_uring only: epoll has no ring.
#[test]
fn handler_nop_with_reused_state_allocates_nothing() {
    use aioctx::aio::CompletionHandler;
    use aioctx::aio::io_uring::opcode;

    struct Count(AtomicU64);
    impl CompletionHandler for Count {
        fn complete(&self, res: i32, _flags: u32) {
            assert_eq!(res, 0);
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let Some(ctx) = common::uring_ctx(
        "handler_nop_with_reused_state_allocates_nothing",
        aioctx::aio::AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("handler_nop_alloc", &ctx);
    let count = Arc::new(Count(AtomicU64::new(0)));
    let batch = |n: u64| {
        let target = count.0.load(Ordering::Relaxed) + n;
        for _ in 0..n {
            // SAFETY: a NOP names no memory.
            unsafe { ctx.submit_raw_handler(opcode::Nop::new().build(), Arc::clone(&count)) }
                .unwrap();
        }
        while count.0.load(Ordering::Relaxed) < target {
            ctx.poll(true);
        }
    };
    for n in [1, 32] {
        for _ in 0..16 {
            batch(n);
        }
        let allocs = allocs_in(|| (0..ROUNDS / n).for_each(|_| batch(n)));
        assert_eq!(
            allocs,
            0,
            "{allocs} allocations in {} handler NOPs in batches of {n}",
            ROUNDS / n * n
        );
    }
}
