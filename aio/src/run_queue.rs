//! Per-context run queues and the task entry points: `spawn`, `block_on`,
//! `yield_now`, `reschedule_to` (QEMU: `aio_co_schedule`,
//! `co_schedule_bh_cb`, `aio_co_reschedule_self` in util/async.c).
//!
//! Each context has one run queue and one bottom half that drains it
//! (`co_schedule_bh_cb`); QEMU's two lists — the cross-thread `scheduled_coroutines`
//! and the per-thread wake-up queue — collapse into this one FIFO. The task state
//! machine ([TK1]–[TK7]) is in `task.rs`; the queue adds:
//!
//! [RQ1] A wake (or spawn) whose innermost frame on the calling thread is this queue's
//!    drain loop — no `poll` in between — only pushes: the drain loop picks the task up
//!    (chaining, never recursion). Anywhere else it pushes and schedules the queue's
//!    bottom half, which notifies the context ([N1] (`notify.rs`): push, then notify).
//! [RQ2] A `poll` of the context on its home thread while one of its drains is on the
//!    stack (a task nested `block_on`, `poll` or `wait_while`) runs the queued tasks
//!    itself, before it decides to sleep: the drain's bottom half is running further up
//!    the stack, so the nested `poll` would defer it ([BH7] (`bh.rs`)), and a task pushed by
//!    [RQ1] would wait for a drain loop that is not looping. The task that made the
//!    nested call is `RUNNING`, so it is never re-entered ([TK3] (`task.rs`)).
//! [RQ3] One drain runs at most [`DRAIN_BUDGET`] tasks, then reschedules its bottom half,
//!     so tasks that keep waking each other cannot starve timers, fd handlers and I/O.
//! [RQ4] A detached task's panic unwinds the drain (and `poll`); the drain reschedules its
//!     bottom half on the way out when tasks are left, so the queue keeps draining.
//! [RQ5] The queue keeps the registry of its unfinished tasks ([TK5] (`task.rs`)). Closing it —
//!     the context's drop, [`AioContext::shutdown_tasks`], an `IoThread`'s drop — takes
//!     the registry and cancels every task in it on the calling thread ([TK6] (`task.rs`));
//!     from then on a task spawned or moved here, or pushed here by a racing wake, is
//!     cancelled instead of queued. No lock is held while a future is dropped.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::resume_unwind;
use std::pin::{Pin, pin};
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;

use crate::bh::Bh;
use crate::context::AioContext;
use crate::current::enter_current;
use crate::join::JoinHandle;
use crate::local::ContextLocal;
use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::task::{Header, Panic, Schedule, TaskRef, move_current_task, new_task};

/// How many tasks one drain of a run queue runs before it yields to the loop (\[RQ3\]).
pub const DRAIN_BUDGET: usize = 256;

/// How a run queue gets drained: its context's bottom half (or, in the loom models, a
/// stand-in on the modelled loop).
pub(crate) trait Kick: Send + Sync + 'static {
    /// Schedules the drain and notifies the loop.
    fn kick(&self);
}

impl Kick for Bh {
    fn kick(&self) {
        self.schedule();
    }
}

/// The queue proper and the registry, under one lock.
struct Inner {
    ready: VecDeque<TaskRef>,
    /// Every unfinished task that belongs here ([RQ5]; [TK5] (`task.rs`)).
    tasks: Slab<TaskRef>,
    closed: bool,
}

/// One context's run queue and the bottom half that drains it (QEMU:
/// `AioContext::scheduled_coroutines` and `co_schedule_bh`).
pub(crate) struct RunQueue<K: Kick = Bh> {
    inner: Mutex<Inner>,
    kick: K,
    /// How many drains of this queue are on the home thread's stack (home thread only).
    draining: AtomicU32,
}

#[cfg(not(all(loom, test)))]
std::thread_local! {
    /// The address of the run queue whose drain loop is the innermost frame of this
    /// thread that runs tasks, or 0 ([RQ1]). A `poll` clears it for its duration.
    static DRAINING: Cell<usize> = const { Cell::new(0) };
}

// The same, per loom thread (loom's threads share one OS thread; its `thread_local!`
// has no `const` form).
#[cfg(all(loom, test))]
loom::thread_local! {
    static DRAINING: Cell<usize> = Cell::new(0);
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
                        let _current = enter_current(&ctx);
                        q.drain();
                    }
                });
                RunQueue::new(bh)
            })
        })
    }
}

impl<K: Kick> RunQueue<K> {
    pub(crate) fn new(kick: K) -> Self {
        Self {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                tasks: Slab::new(),
                closed: false,
            }),
            kick,
            draining: AtomicU32::new(0),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    fn home(self: &Arc<Self>) -> Weak<dyn Schedule> {
        let weak: Weak<dyn Schedule> = Arc::downgrade(self) as Weak<dyn Schedule>;
        weak
    }

    /// Kicks the queue's drain unless this thread's innermost drain loop is this
    /// queue's ([RQ1]).
    fn kick_unless_draining(&self) {
        if DRAINING.with(Cell::get) != self.addr() {
            self.kick.kick();
        }
    }

    /// Creates a task of this queue, registers and queues it — or, on a closed queue,
    /// cancels it at once ([RQ5]).
    pub(crate) fn spawn<F>(self: &Arc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, handle) = new_task(future, self.home());
        let refused = {
            let mut inner = lock(&self.inner);
            if inner.closed {
                Some(task)
            } else {
                let key = inner.tasks.insert(Arc::clone(&task));
                task.header().set_key(key);
                inner.ready.push_back(task);
                None
            }
        };
        match refused {
            // The handle exists, so a panic of the destructor goes to it.
            Some(task) => drop(task.cancel()),
            None => self.kick_unless_draining(),
        }
        handle
    }

    /// Whether no task is queued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.inner).ready.is_empty()
    }

    /// Runs queued tasks, FIFO, up to the budget ([RQ1], [RQ3] and [RQ4]). The caller made
    /// the queue's context current.
    pub(crate) fn drain(&self) {
        // Relaxed: home-thread-only counter.
        self.draining.fetch_add(1, Ordering::Relaxed);
        let outer = DRAINING.with(|d| d.replace(self.addr()));
        /// Leaves the drain; on unwind (a detached task panicked), reschedules the
        /// queue's bottom half if tasks are left, so they still run ([RQ4]).
        struct Leave<'a, K: Kick>(&'a RunQueue<K>, usize);
        impl<K: Kick> Drop for Leave<'_, K> {
            fn drop(&mut self) {
                DRAINING.with(|d| d.set(self.1));
                self.0.draining.fetch_sub(1, Ordering::Relaxed);
                if std::thread::panicking() && !self.0.is_empty() {
                    self.0.kick.kick();
                }
            }
        }
        let _leave = Leave(self, outer);
        for _ in 0..DRAIN_BUDGET {
            let task = lock(&self.inner).ready.pop_front();
            match task {
                Some(task) => task.run(),
                None => return,
            }
        }
        if !self.is_empty() {
            self.kick.kick();
        }
    }

    /// Closes the queue and cancels every unfinished task of it on the calling thread
    /// ([RQ5]); returns how many there were, and the first panic of a detached task's
    /// destructor (the others are logged). Tasks running on another thread at this
    /// moment are cancelled by their runner when their poll returns.
    pub(crate) fn shutdown(&self) -> (usize, Option<Panic>) {
        let (tasks, ready) = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            (
                std::mem::take(&mut inner.tasks),
                std::mem::take(&mut inner.ready),
            )
        };
        let count = tasks.len();
        let mut first: Option<Panic> = None;
        for (_, task) in tasks {
            if let Some(panic) = task.cancel() {
                match first {
                    None => first = Some(panic),
                    Some(_) => log::error!("a cancelled task's destructor panicked as well"),
                }
            }
        }
        // Every queued task was registered, so it was cancelled above.
        drop(ready);
        (count, first)
    }
}

impl<K: Kick> Schedule for RunQueue<K> {
    fn schedule(&self, task: TaskRef) {
        let refused = {
            let mut inner = lock(&self.inner);
            if inner.closed {
                Some(task)
            } else {
                inner.ready.push_back(task);
                None
            }
        };
        match refused {
            // A wake racing the close: the task is cancelled by whichever of this
            // cancel and the closer's claims it ([TK6] (`task.rs`)).
            Some(task) => {
                if task.cancel().is_some() {
                    log::error!("a cancelled task's destructor panicked");
                }
            }
            None => self.kick_unless_draining(),
        }
    }

    fn register(&self, task: TaskRef) -> Result<(), TaskRef> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Err(task);
        }
        let key = inner.tasks.insert(Arc::clone(&task));
        task.header().set_key(key);
        Ok(())
    }

    fn unregister(&self, header: &Header) -> Option<TaskRef> {
        let mut inner = lock(&self.inner);
        let key = header.key();
        // The key may name another task by now (keys are reused): check it is ours.
        match inner.tasks.get(key) {
            Some(t) if std::ptr::eq(t.header(), header) => Some(inner.tasks.remove(key)),
            _ => None,
        }
    }
}

/// Called by [`AioContext::poll`] on entry, on the home thread: ends [RQ1]'s "innermost
/// drain" for the duration of the poll, and applies [RQ2]. When it ran tasks, it
/// notifies the context, so that the poll does not sleep ([N3] (`notify.rs`)) after making
/// progress, and the frame says so. The returned guard restores the outer drain's mark.
pub(crate) fn enter_poll(ctx: &AioContext) -> PollFrame {
    PollFrame::enter_with(ctx.local_if_set(&RUN_QUEUE).map(|q| &**q), |q| {
        let _current = enter_current(&ctx.arc());
        q.drain();
        ctx.notify();
    })
}

impl<K: Kick> RunQueue<K> {
    /// [RQ2]'s test, on the home thread: a drain of this queue is on the stack (below
    /// the poll being entered) and tasks are queued.
    pub(crate) fn needs_nested_drain(&self) -> bool {
        // Relaxed: home-thread-only counter.
        self.draining.load(Ordering::Relaxed) > 0 && !self.is_empty()
    }
}

/// See [`enter_poll`].
pub(crate) struct PollFrame {
    outer: usize,
    pub(crate) ran: bool,
}

impl PollFrame {
    /// Clears [RQ1]'s mark for the duration of a poll.
    pub(crate) fn enter() -> Self {
        Self {
            outer: DRAINING.with(|d| d.replace(0)),
            ran: false,
        }
    }

    /// [`enter_poll`] on the run queue `q` (if the context has one): clears the mark
    /// and, when [RQ2] applies, runs `drain_and_notify` (drain `q`, then notify the
    /// context so a sleep decision above sees the tasks that ran).
    pub(crate) fn enter_with<K: Kick>(
        q: Option<&RunQueue<K>>,
        drain_and_notify: impl FnOnce(&RunQueue<K>),
    ) -> Self {
        let mut frame = Self::enter();
        if let Some(q) = q
            && q.needs_nested_drain()
        {
            frame.ran = true;
            drain_and_notify(q);
        }
        frame
    }

    /// Whether the poll ran tasks on entry (progress, for `poll`'s result).
    pub(crate) fn ran_tasks(&self) -> bool {
        self.ran
    }
}

impl Drop for PollFrame {
    fn drop(&mut self) {
        DRAINING.with(|d| d.set(self.outer));
    }
}

/// The context's drop: closes its run queue, if it has one, and cancels its tasks
/// ([RQ5]). Never panics, so the rest of the drop (which waits for the kernel to let
/// go of buffers) always runs: a panic from a detached task's destructor is logged.
pub(crate) fn shutdown(ctx: &AioContext) {
    let Some(q) = ctx.local_if_set(&RUN_QUEUE) else {
        return;
    };
    let (_, panic) = q.shutdown();
    if let Some(panic) = panic {
        log::error!(
            "{}: the destructor of a detached task's future panicked while the context was \
             dropped: {}",
            ctx.name(),
            crate::task::describe(&*panic)
        );
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
            // sleep through it ([N3] (`notify.rs`)); a task the future pushed without a
            // kick (nested in a task: [RQ1]) is run by the poll itself ([RQ2]).
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
