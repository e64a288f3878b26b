//! Per-context run queues and the task entry points: `spawn`, `block_on`,
//! `yield_now`, `reschedule_to` (DESIGN §6; QEMU: `aio_co_schedule`,
//! `co_schedule_bh_cb`, `aio_co_reschedule_self` in util/async.c).
//!
//! Each context has one run queue and one bottom half that drains it
//! (`co_schedule_bh_cb`); QEMU's two lists — the cross-thread `scheduled_coroutines`
//! and the per-thread wake-up queue — collapse into this one FIFO. The task state
//! machine (rules 1–4) is in `task.rs`; the queue adds:
//!
//! 5. A waker that fires on the home thread of the task's context while that context
//!    is draining its run queue only pushes (the drain loop picks the task up: chaining,
//!    never recursion). Anywhere else it pushes and schedules the context's run-queue
//!    bottom half, which notifies the context (notify rule 1: push, then notify).
//! 6. One drain runs at most [`DRAIN_BUDGET`] tasks, then reschedules its bottom half,
//!    so tasks that keep waking each other cannot starve timers, fd handlers and I/O.
//! 7. A detached task's panic unwinds the drain (and `poll`); the drain reschedules its
//!    bottom half on the way out when tasks are left, so the queue keeps draining.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use crate::bh::Bh;
use crate::context::{AioContext, enter_current};
use crate::local::ContextLocal;
use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::task::{JoinHandle, Schedule, TaskRef, move_current_task, new_task};

/// How many tasks one drain of a run queue runs before it yields to the loop (rule 6).
pub const DRAIN_BUDGET: usize = 256;

/// One context's run queue and the bottom half that drains it (QEMU:
/// `AioContext::scheduled_coroutines` and `co_schedule_bh`).
pub(crate) struct RunQueue {
    queue: Mutex<VecDeque<TaskRef>>,
    bh: Bh,
    ctx: Weak<AioContext>,
    /// How many drains of this queue are on the home thread's stack (home thread only).
    draining: AtomicU32,
}

static RUN_QUEUE: ContextLocal<Arc<RunQueue>> = ContextLocal::new();

impl RunQueue {
    /// The run queue of `ctx`, created on first use.
    pub(crate) fn of(ctx: &AioContext) -> &Arc<RunQueue> {
        ctx.local(&RUN_QUEUE, || {
            Arc::new_cyclic(|me: &Weak<RunQueue>| {
                let (me, weak_ctx) = (me.clone(), ctx.weak());
                let bh = ctx.bh_new(move || {
                    if let (Some(q), Some(ctx)) = (me.upgrade(), weak_ctx.upgrade()) {
                        q.drain(&ctx);
                    }
                });
                RunQueue {
                    queue: Mutex::new(VecDeque::new()),
                    bh,
                    ctx: ctx.weak(),
                    draining: AtomicU32::new(0),
                }
            })
        })
    }

    fn home(self: &Arc<Self>) -> Weak<dyn Schedule> {
        let weak: Weak<dyn Schedule> = Arc::downgrade(self) as Weak<dyn Schedule>;
        weak
    }

    /// Runs queued tasks, FIFO, up to the budget (rules 5 and 6).
    fn drain(&self, ctx: &Arc<AioContext>) {
        let _current = enter_current(ctx);
        // Relaxed: home-thread-only counter.
        self.draining.fetch_add(1, Ordering::Relaxed);
        /// Leaves the drain; on unwind (a detached task panicked), reschedules the
        /// queue's bottom half if tasks are left, so they still run (rule 7).
        struct Leave<'a>(&'a RunQueue);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.draining.fetch_sub(1, Ordering::Relaxed);
                if std::thread::panicking() && !lock(&self.0.queue).is_empty() {
                    self.0.bh.schedule();
                }
            }
        }
        let _leave = Leave(self);
        for _ in 0..DRAIN_BUDGET {
            let task = lock(&self.queue).pop_front();
            match task {
                Some(task) => task.run(),
                None => return,
            }
        }
        if !lock(&self.queue).is_empty() {
            self.bh.schedule();
        }
    }
}

impl Schedule for RunQueue {
    fn schedule(&self, task: TaskRef) {
        lock(&self.queue).push_back(task);
        // Relaxed: only meaningful on the home thread, which is the only writer.
        if self.draining.load(Ordering::Relaxed) > 0
            && self.ctx.upgrade().is_some_and(|c| c.is_home_thread())
        {
            return;
        }
        self.bh.schedule();
    }
}

/// Wakes a `block_on` caller: sets a flag and notifies its context.
struct BlockOnSignal {
    woken: AtomicBool,
    ctx: Weak<AioContext>,
}

impl Wake for BlockOnSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release: pairs with the Acquire swap in `block_on`.
        self.woken.store(true, Ordering::Release);
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.notify();
        }
    }
}

impl AioContext {
    /// Spawns `future` as a task of this context and schedules it: it first runs at the
    /// next `poll` of the context (QEMU: `qemu_coroutine_create` + `aio_co_schedule`).
    /// Callable from any thread. The task may move to another context with
    /// [`reschedule_to`], hence `Send`.
    ///
    /// A task whose context is dropped never runs again; its future is dropped with the
    /// last waker that refers to it. Tasks and their wakers hold their context weakly,
    /// so a parked task does not keep it alive — unless its future owns an `Arc` of
    /// it: inside a task, reach the context through [`current`](crate::current) when
    /// the context should be droppable while the task waits.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let c = Arc::clone(&ctx);
    /// let handle = ctx.spawn(async move {
    ///     // Inside a task, `current()` is the task's context.
    ///     assert!(Arc::ptr_eq(&aioctx_aio::current(), &c));
    ///     "done"
    /// });
    /// assert_eq!(ctx.block_on(handle), "done");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let queue = RunQueue::of(self);
        let (task, handle) = new_task(future, queue.home());
        queue.schedule(task);
        handle
    }

    /// Polls `future` on the calling thread, running this context's loop while it is
    /// pending, and returns its output. The future need not be `Send`; inside it,
    /// [`current`](crate::current) is this context. May nest.
    ///
    /// ```
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let v = ctx.block_on(async {
    ///     aioctx_aio::yield_now().await;
    ///     std::rc::Rc::new(5) // not Send: fine for block_on
    /// });
    /// assert_eq!(*v, 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// Off the context's home thread (the first that polled it), or when `future`
    /// panics.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.check_home("block_on");
        let ctx = self.arc();
        let signal = Arc::new(BlockOnSignal {
            woken: AtomicBool::new(true),
            ctx: self.weak(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            // Acquire: pairs with the Release store in `BlockOnSignal::wake_by_ref`.
            if signal.woken.swap(false, Ordering::Acquire) {
                let _current = enter_current(&ctx);
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            // A wake after the swap has notified the context, so this poll does not
            // sleep through it (notify rule 3).
            self.poll(true);
        }
    }
}

/// Lets the other tasks of the context (and, past the drain budget, the rest of the
/// loop) run before the caller continues. QEMU: `aio_co_schedule(ctx, self)` +
/// `qemu_coroutine_yield`.
///
/// ```
/// let ctx = aioctx_aio::AioContext::new()?;
/// ctx.block_on(async { aioctx_aio::yield_now().await });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Moves the calling task to `ctx`: when the returned future completes, the task runs
/// on `ctx`'s home thread (QEMU: `aio_co_reschedule_self`). The task finishes its
/// current poll on the old context before it is queued on the new one, so it never
/// runs on two threads at once. Moving to the task's own context completes at once.
///
/// ```
/// use std::sync::Arc;
/// let io = aioctx_aio::IoThread::new("io-resched")?;
/// let ctx = aioctx_aio::AioContext::new()?;
/// let target = Arc::clone(io.ctx());
/// let handle = ctx.spawn(async move {
///     aioctx_aio::reschedule_to(&target).await;
///     std::thread::current().name().map(str::to_owned)
/// });
/// assert_eq!(ctx.block_on(handle).as_deref(), Some("io-resched"));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
/// When awaited outside a task (for instance directly in [`AioContext::block_on`]).
pub fn reschedule_to(ctx: &Arc<AioContext>) -> RescheduleTo {
    RescheduleTo {
        target: Arc::clone(RunQueue::of(ctx)),
        moved: false,
    }
}

/// The future of [`reschedule_to`].
#[must_use = "futures do nothing unless awaited"]
pub struct RescheduleTo {
    target: Arc<RunQueue>,
    moved: bool,
}

impl Future for RescheduleTo {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.moved {
            return Poll::Ready(());
        }
        match move_current_task(self.target.home()) {
            None => {
                panic!("reschedule_to awaited outside a task: spawn the future on an AioContext")
            }
            Some(false) => return Poll::Ready(()),
            Some(true) => {}
        }
        self.moved = true;
        Poll::Pending
    }
}

impl fmt::Debug for RescheduleTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RescheduleTo")
            .field("moved", &self.moved)
            .finish()
    }
}
