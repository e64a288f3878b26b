//! Per-context run queues and the task entry points: `spawn`, `block_on`,
//! `yield_now`, `reschedule_to` (QEMU: `aio_co_schedule`,
//! `co_schedule_bh_cb`, `aio_co_reschedule_self` in util/async.c).
//!
//! Each context has one run queue and one bottom half that drains it
//! (`co_schedule_bh_cb`). Like QEMU's two lists — the cross-thread
//! `scheduled_coroutines` and the per-thread wake-up queue — it has a home-only part and
//! a cross-thread part ([RQ6]); the drain splices the second onto the first. The task
//! state machine ([TK1]–[TK7]) is in `task.rs`; the entry points are in
//! `run_queue/api.rs`. The queue adds:
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
//!     cancelled instead of run. No lock is held while a future is dropped.
//!
//! # The home queue and the injection queue
//!
//! [RQ6] The ready queue has two parts. `local` is touched only by the queue's home
//!     thread: the thread of its drains, whose id the first drain writes in `home`, once
//!     (a drain on any other thread panics). A thread that reads its own id there is
//!     the home thread, since only the home thread wrote it; any other reads `0` or
//!     another id (the argument of [N6] (`notify.rs`)). `injected` is under the lock.
//!     A push from the home thread goes to `local`, with no lock and no RMW; a push from
//!     any other thread (or before the first drain) goes to `injected` and raises
//!     `has_injected` under the lock, then kicks ([RQ1]). A drain splices all of
//!     `injected` behind `local` when it starts and whenever `local` runs dry, and only
//!     when `has_injected` is up, so the home thread takes the lock only when another
//!     thread pushed.
//! [RQ7] A push by the thread whose innermost drain ([RQ1]) is the task's home queue goes
//!     to `local` without upgrading the task's weak home: that drain, further up this
//!     thread's stack, holds the queue alive, and the task's `Weak` keeps the queue's
//!     allocation, so no other queue can sit at the address the two compare equal on.
//!
//! Proof that [RQ6] loses no task. A cross-thread push publishes the task and raises the
//! flag under the lock, and then kicks: the bottom-half schedule that follows happens
//! before the drain the bottom half runs ([BH1] (`bh.rs`); in a nested poll, the notify's
//! acquiring clear, [N4] (`notify.rs`), before [RQ2]'s test), so that drain reads the flag
//! up — or a later `false`, written under the lock by a splice that took the task onto
//! `local` already. A drain that read the flag down while the push was in flight is
//! followed by the drain of that push's kick. The flag is cleared only under the lock,
//! together with the splice that empties `injected`, so a raised flag is never lost.
//! Fairness: every drain splices first, and a drain that ends on its budget reschedules
//! itself ([RQ3]), so a pushed task waits at most for the tasks ahead of it in `local`
//! at the splice, never for tasks that home-thread tasks keep pushing after it.
//! Closing: `closed` is set under the lock, so the cross-thread push and `spawn`, which
//! test it under the lock, are exact. The home-thread push tests it without the lock:
//! it may put a task on a queue that is closing — harmless, because that task is
//! `SCHEDULED` by the push's own wake and registered ([TK5] (`task.rs`)), so the closer's
//! cancel claims it ([TK6] (`task.rs`)) and the drain that pops it skips it. A closing
//! thread other than the home thread leaves `local` alone; what is on it is freed by the
//! next drain or with the queue.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Weak;

use slab::Slab;

use crate::bh::Bh;
use crate::context::AioContext;
use crate::current::{enter_current, enter_current_weak};
use crate::join::JoinHandle;
use crate::local::ContextLocal;
use crate::notify::thread_id;
use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::task::{Header, Panic, Schedule, TaskRef, new_task};

mod api;
mod home_only;

pub use api::{RescheduleTo, YieldNow, reschedule_to, yield_now};

use home_only::HomeOnly;

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

/// What other threads share with the home thread, under one lock.
struct Shared {
    /// Tasks pushed by other threads, spliced onto the home queue by a drain ([RQ6]).
    injected: VecDeque<TaskRef>,
    /// Every unfinished task that belongs here ([RQ5]; [TK5] (`task.rs`)).
    tasks: Slab<TaskRef>,
}

/// One context's run queue and the bottom half that drains it (QEMU:
/// `AioContext::scheduled_coroutines` and `co_schedule_bh`).
pub(crate) struct RunQueue<K: Kick = Bh> {
    /// The home thread's ready queue ([RQ6]).
    local: HomeOnly<VecDeque<TaskRef>>,
    /// The id of the thread that drains this queue ([RQ6]); `0` before the first drain.
    /// Not protocol state: only ever compared with the reader's own id, so `std` and
    /// Relaxed even under loom (as the notify state's home id, [N6] (`notify.rs`)).
    home: std::sync::atomic::AtomicU64,
    shared: Mutex<Shared>,
    /// `shared.injected` may be non-empty ([RQ6]); written only under the lock.
    has_injected: AtomicBool,
    /// The queue is closed ([RQ5]); written only under the lock.
    closed: AtomicBool,
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

/// Whether the innermost drain loop of the calling thread is that of the queue at
/// `queue` ([RQ1], [RQ7]).
pub(crate) fn is_draining_here(queue: *const ()) -> bool {
    DRAINING.with(Cell::get) == queue as usize
}

static RUN_QUEUE: ContextLocal<Arc<RunQueue>> = ContextLocal::new();

impl RunQueue {
    /// The run queue of `ctx`, created on first use.
    pub(crate) fn of(ctx: &AioContext) -> &Arc<RunQueue> {
        ctx.local(&RUN_QUEUE, || {
            Arc::new_cyclic(|me: &Weak<RunQueue>| {
                let (me, weak_ctx) = (me.clone(), ctx.weak());
                let bh = ctx.bh_new(move || {
                    if let Some(q) = me.upgrade()
                        && let Some(_current) = enter_current_weak(&weak_ctx)
                    {
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
            local: HomeOnly::new(VecDeque::new()),
            home: std::sync::atomic::AtomicU64::new(0),
            shared: Mutex::new(Shared {
                injected: VecDeque::new(),
                tasks: Slab::new(),
            }),
            has_injected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            kick,
            draining: AtomicU32::new(0),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    fn home_weak(self: &Arc<Self>) -> Weak<dyn Schedule> {
        let weak: Weak<dyn Schedule> = Arc::downgrade(self) as Weak<dyn Schedule>;
        weak
    }

    /// Whether the caller is the home thread ([RQ6]).
    fn is_home(&self) -> bool {
        // Relaxed: see the field.
        self.home.load(std::sync::atomic::Ordering::Relaxed) == thread_id()
    }

    /// Binds the calling thread as home at the first drain ([RQ6]).
    ///
    /// # Panics
    /// When another thread drained this queue before (a bug: drains run in the home
    /// thread's `poll`).
    fn bind_home(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let me = thread_id();
        // Relaxed: see the field.
        let home = match self.home.load(Relaxed) {
            0 => match self.home.compare_exchange(0, me, Relaxed, Relaxed) {
                Ok(_) => me,
                Err(owner) => owner,
            },
            home => home,
        };
        assert_eq!(home, me, "a run queue was drained off its home thread");
    }

    /// Kicks the queue's drain unless this thread's innermost drain loop is this
    /// queue's ([RQ1]).
    fn kick_unless_draining(&self) {
        if DRAINING.with(Cell::get) != self.addr() {
            self.kick.kick();
        }
    }

    /// Pushes on the home queue ([RQ6]).
    ///
    /// # Safety
    /// The caller is the home thread.
    unsafe fn push_local(&self, task: TaskRef) {
        // SAFETY: home thread (the caller's contract); `push_back` runs no user code.
        unsafe { self.local.with(|q| q.push_back(task)) }
    }

    /// Pushes `task` where the calling thread may ([RQ6]); gives it back when the queue
    /// is closed.
    fn push(&self, task: TaskRef) -> Result<(), TaskRef> {
        if self.is_home() {
            // Relaxed: a hint; a push that misses a racing close is harmless ([RQ6]'s
            // note on closing).
            if self.closed.load(Ordering::Relaxed) {
                return Err(task);
            }
            // SAFETY: `is_home` said so.
            unsafe { self.push_local(task) };
            return Ok(());
        }
        let mut shared = lock(&self.shared);
        // Relaxed: written under this lock.
        if self.closed.load(Ordering::Relaxed) {
            return Err(task);
        }
        shared.injected.push_back(task);
        // Relaxed: under the lock; the kick that follows orders it before the drain
        // that must see it ([RQ6]'s proof).
        self.has_injected.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Creates a task of this queue, registers and queues it — or, on a closed queue,
    /// cancels it at once ([RQ5]).
    pub(crate) fn spawn<F>(self: &Arc<Self>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, handle) = new_task(future, self.home_weak());
        let home = self.is_home();
        let refused = {
            let mut shared = lock(&self.shared);
            // Relaxed: written under this lock.
            if self.closed.load(Ordering::Relaxed) {
                Some(task)
            } else {
                let key = shared.tasks.insert(Arc::clone(&task));
                task.header().set_key(key);
                if home {
                    drop(shared);
                    // SAFETY: `is_home` said so. A close between the unlock and this
                    // push claims the registered task first ([RQ6]'s note on closing).
                    unsafe { self.push_local(task) };
                } else {
                    shared.injected.push_back(task);
                    // Relaxed: as in `push`.
                    self.has_injected.store(true, Ordering::Relaxed);
                }
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

    /// Whether no task is queued (home thread only).
    fn is_empty(&self) -> bool {
        // Relaxed: a stale `false` is followed by a kick ([RQ6]'s proof).
        // SAFETY: home thread (the callers: the drain, and [RQ2]'s test in a poll).
        !self.has_injected.load(Ordering::Relaxed) && unsafe { self.local.with(|q| q.is_empty()) }
    }

    /// Moves the injected tasks behind the home queue's, if any ([RQ6]); returns
    /// whether it moved some. Home thread only.
    fn splice(&self) -> bool {
        // Relaxed: see `is_empty`.
        if !self.has_injected.load(Ordering::Relaxed) {
            return false;
        }
        let mut shared = lock(&self.shared);
        // Relaxed: under the lock, with the splice that empties the queue.
        self.has_injected.store(false, Ordering::Relaxed);
        let moved = !shared.injected.is_empty();
        // SAFETY: home thread (the drain); `append` moves the tasks, running no user code.
        unsafe { self.local.with(|q| q.append(&mut shared.injected)) };
        moved
    }

    /// The next task to run (home thread only).
    fn pop(&self) -> Option<TaskRef> {
        // SAFETY: home thread (the drain); `pop_front` runs no user code.
        let task = unsafe { self.local.with(VecDeque::pop_front) };
        if task.is_some() || !self.splice() {
            return task;
        }
        // SAFETY: as above.
        unsafe { self.local.with(VecDeque::pop_front) }
    }

    /// Runs queued tasks, FIFO, up to the budget ([RQ1], [RQ3], [RQ4] and [RQ6]). The
    /// caller made the queue's context current.
    ///
    /// # Panics
    /// Off the queue's home thread, and when a detached task panics ([RQ4]).
    pub(crate) fn drain(&self) {
        self.bind_home();
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
        self.splice();
        for _ in 0..DRAIN_BUDGET {
            match self.pop() {
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
        let (tasks, injected) = {
            let mut shared = lock(&self.shared);
            // Relaxed: under the lock (the home-thread push reads it as a hint, [RQ6]).
            self.closed.store(true, Ordering::Relaxed);
            self.has_injected.store(false, Ordering::Relaxed);
            (
                std::mem::take(&mut shared.tasks),
                std::mem::take(&mut shared.injected),
            )
        };
        // Only the home thread may take the home queue ([RQ6]); elsewhere its tasks,
        // all registered, are cancelled below and skipped when popped.
        let local = if self.is_home() {
            // SAFETY: `is_home` said so; `take` runs no user code.
            unsafe { self.local.with(std::mem::take) }
        } else {
            VecDeque::new()
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
        drop((injected, local));
        (count, first)
    }

    /// Cancels a task whose push found the queue closed: whichever of this cancel and
    /// the closer's claims it drops the future ([TK6] (`task.rs`)).
    fn refuse(task: TaskRef) {
        if task.cancel().is_some() {
            log::error!("a cancelled task's destructor panicked");
        }
    }
}

impl<K: Kick> Schedule for RunQueue<K> {
    fn schedule(&self, task: TaskRef) {
        match self.push(task) {
            Err(task) => Self::refuse(task),
            Ok(()) => self.kick_unless_draining(),
        }
    }

    fn schedule_draining(&self, task: TaskRef) {
        debug_assert!(is_draining_here((self as *const Self).cast()));
        // Relaxed: a hint, as in `push`.
        if self.closed.load(Ordering::Relaxed) {
            return Self::refuse(task);
        }
        // SAFETY: this queue's drain is on the calling thread's stack (the caller's
        // contract), and drains run on the home thread only (`bind_home`).
        unsafe { self.push_local(task) };
    }

    fn register(&self, task: TaskRef) -> Result<(), TaskRef> {
        let mut shared = lock(&self.shared);
        // Relaxed: written under this lock.
        if self.closed.load(Ordering::Relaxed) {
            return Err(task);
        }
        let key = shared.tasks.insert(Arc::clone(&task));
        task.header().set_key(key);
        Ok(())
    }

    fn unregister(&self, header: &Header) -> Option<TaskRef> {
        let mut shared = lock(&self.shared);
        let key = header.key();
        // The key may name another task by now (keys are reused): check it is ours.
        match shared.tasks.get(key) {
            Some(t) if std::ptr::eq(t.header(), header) => Some(shared.tasks.remove(key)),
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
