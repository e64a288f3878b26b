//! The task entry points of a context: `spawn`, `shutdown_tasks`, `block_on`, and the
//! futures `yield_now` and `reschedule_to` (the rules are in `run_queue.rs`, with
//! [RQ8] here).

use std::fmt;
use std::future::Future;
use std::panic::resume_unwind;
use std::pin::{Pin, pin};
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use super::RunQueue;
use crate::context::AioContext;
use crate::current::enter_current;
use crate::join::JoinHandle;
use crate::notify::thread_id;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::task::{Schedule, move_current_task};

/// Wakes a `block_on` caller: raises a flag and notifies its context.
///
/// [RQ8] A wake on the `block_on` thread while its loop runs (`active`, written and read
///    by that thread only) reaches the context through the `Weak`'s pointer, without
///    upgrading it: the `block_on` frame holds an `Arc` of the context for as long as
///    `active` is up. It then costs the flag's store and the home-thread notify
///    ([N5] (`notify.rs`)): no RMW, no lock. Any other wake upgrades the `Weak`.
struct BlockOnSignal {
    woken: AtomicBool,
    ctx: Weak<AioContext>,
    /// The `block_on` thread's id.
    thread: u64,
    /// [RQ8]: the `block_on` loop runs; touched by its thread only.
    active: AtomicBool,
}

impl Wake for BlockOnSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release: pairs with the Acquire swap in `block_on`.
        self.woken.store(true, Ordering::Release);
        // Relaxed: `active` is read only by the thread that writes it ([RQ8]).
        if self.thread == thread_id() && self.active.load(Ordering::Relaxed) {
            // SAFETY: [RQ8]: `active` is up, so the `block_on` frame on this thread holds
            // an `Arc` of the context, which the `Weak` points at.
            unsafe { &*self.ctx.as_ptr() }.notify();
        } else if let Some(ctx) = self.ctx.upgrade() {
            ctx.notify();
        }
    }
}

/// Lowers [RQ8]'s `active` when the `block_on` loop ends (also by a panic).
struct Active<'a>(&'a AtomicBool);

impl<'a> Active<'a> {
    fn enter(flag: &'a AtomicBool) -> Self {
        // Relaxed: [RQ8], one thread.
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        // Relaxed: [RQ8], one thread.
        self.0.store(false, Ordering::Relaxed);
    }
}

impl AioContext {
    /// Spawns `future` as a task of this context and schedules it: it first runs at the
    /// next `poll` of the context (QEMU: `qemu_coroutine_create` + `aio_co_schedule`).
    /// Callable from any thread. The task may move to another context with
    /// [`reschedule_to`], hence `Send`.
    ///
    /// # Tasks end with their context
    ///
    /// A context owns its unfinished tasks. When it is dropped — or shut down with
    /// [`shutdown_tasks`](Self::shutdown_tasks), which an [`IoThread`](crate::IoThread)'s
    /// drop does — every task that has not finished is cancelled: its future is dropped
    /// on the thread doing the drop (with no context made current for it: destructors
    /// must not need one), its [`JoinHandle`] yields `Err(JoinError)`, and later wakes
    /// of it do nothing. A task spawned on (or moved to) a shut-down context is
    /// cancelled at once. A future whose destructor panics hands the panic to its
    /// `JoinHandle`'s awaiter; a detached one's panic is resumed by `shutdown_tasks`,
    /// and logged by the context's drop.
    ///
    /// Tasks, their wakers and their run queue hold the context weakly, so a parked task
    /// does not keep its context alive — unless its future owns an `Arc` of it, as
    /// `let ctx = current();` held across an `.await` does. Such a task and its context
    /// keep each other alive until someone calls `shutdown_tasks` (an `IoThread` does
    /// when dropped, so the idiom is fine there). For a context you own through a bare
    /// `Arc`, call `shutdown_tasks` before dropping it, or do not hold the `Arc` across
    /// an `.await`: call [`current`](crate::current) again after it, or keep a `Weak`.
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
    /// assert_eq!(ctx.block_on(handle).unwrap(), "done");
    ///
    /// // A task holding its own context across an await: shut the tasks down to let
    /// // the context go.
    /// let weak = Arc::downgrade(&ctx);
    /// let parked = ctx.spawn(async {
    ///     let me = aioctx_aio::current();
    ///     std::future::pending::<()>().await;
    ///     drop(me);
    /// });
    /// ctx.poll(false); // the task runs, takes `current()` and parks
    /// assert_eq!(ctx.shutdown_tasks(), 1);
    /// drop(ctx);
    /// assert!(weak.upgrade().is_none());
    /// assert!(parked.is_finished());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        RunQueue::of(self).spawn(future)
    }

    /// Cancels every unfinished task of this context and refuses new ones: a task
    /// spawned or moved here afterwards is cancelled at once (tokio: dropping a
    /// runtime). Returns how many tasks were cancelled. Callable from any thread.
    ///
    /// The futures of parked and queued tasks are dropped on the calling thread before
    /// this returns, with no context made current for them; a task being polled on the
    /// home thread at this moment is cancelled when its poll returns `Pending` (if it
    /// returns `Ready`, its output stands). Their [`JoinHandle`]s yield `Err(JoinError)`.
    /// Dropping the context does this; an [`IoThread`](crate::IoThread)'s drop does it
    /// after stopping its thread, so a task that holds its own context (through
    /// [`current`](crate::current)) cannot keep it alive. The context itself stays
    /// usable for everything but tasks.
    ///
    /// # Panics
    /// When the destructor of a detached task's future panics: that panic is resumed
    /// after every task was cancelled. (Dropping the context logs it instead: the drop
    /// must go on to wait for the kernel's operations.)
    pub fn shutdown_tasks(&self) -> usize {
        let (count, panic) = RunQueue::of(self).shutdown();
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
        count
    }

    /// Polls `future` on the calling thread, running this context's loop while it is
    /// pending, and returns its output. The future need not be `Send`; inside it,
    /// [`current`](crate::current) is this context.
    ///
    /// May nest: in a callback (bottom half, fd handler, timer, completion), inside
    /// another `block_on`, and inside a task of this context — there the nested loop
    /// runs the context's other tasks (QEMU's nested `aio_poll` runs scheduled
    /// coroutines too), but never the calling task itself, which is being polled: a
    /// nested wait for something only the calling task would do never ends. (QEMU
    /// refuses `AIO_WAIT_WHILE` in a coroutine outright; here it works, with that
    /// caveat.) It runs only this context's loop: a wait here for a task of another
    /// context whose home is this thread ends only if that task can finish without
    /// this thread.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let v = ctx.block_on(async {
    ///     aioctx_aio::yield_now().await;
    ///     std::rc::Rc::new(5) // not Send: fine for block_on
    /// });
    /// assert_eq!(*v, 5);
    ///
    /// // Nested inside a task: the inner task runs.
    /// let c = Arc::clone(&ctx);
    /// let outer = ctx.spawn(async move { c.block_on(c.spawn(async { 7 })).unwrap() });
    /// assert_eq!(ctx.block_on(outer).unwrap(), 7);
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
            thread: thread_id(),
            active: AtomicBool::new(false),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        // Declared after `ctx`, so it is dropped first ([RQ8]).
        let _active = Active::enter(&signal.active);
        loop {
            // Relaxed, then the Acquire swap (pairs with the Release store in
            // `BlockOnSignal::wake_by_ref`): no RMW while nothing woke the future.
            if signal.woken.load(Ordering::Relaxed) && signal.woken.swap(false, Ordering::Acquire) {
                let _current = enter_current(&ctx);
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
            // A wake after the swap has notified the context, so this poll does not
            // sleep through it ([N3] (`notify.rs`)); a task the future pushed without a
            // kick (nested in a task: [RQ1]) is run by the poll itself ([RQ2]). When the
            // future woke itself already, the pass need not compute a sleep it would
            // not take (Relaxed: a stale `false` only makes it a blocking pass, which
            // the wake's notify keeps from sleeping).
            self.poll(!signal.woken.load(Ordering::Relaxed));
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
/// The returned future holds `ctx` weakly. If `ctx` is dropped or shut down before the
/// move, the task is cancelled (see [`AioContext::spawn`]).
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
/// assert_eq!(ctx.block_on(handle).unwrap().as_deref(), Some("io-resched"));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
/// When awaited outside a task (for instance directly in [`AioContext::block_on`]).
pub fn reschedule_to(ctx: &Arc<AioContext>) -> RescheduleTo {
    RescheduleTo {
        target: Arc::downgrade(RunQueue::of(ctx)),
        moved: false,
    }
}

/// The future of [`reschedule_to`].
#[must_use = "futures do nothing unless awaited"]
pub struct RescheduleTo {
    /// Weak: a task holding this must not keep the target's queue, and the tasks it
    /// owns, alive (no cycle through the queue).
    target: Weak<RunQueue>,
    moved: bool,
}

impl Future for RescheduleTo {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.moved {
            return Poll::Ready(());
        }
        let target: Weak<dyn Schedule> = self.target.clone();
        match move_current_task(target) {
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
