//! Tasks: futures run by a context, QEMU's coroutines
//!
//! QEMU: `aio_co_schedule`, `aio_co_wake`, `aio_co_enter`, `aio_co_reschedule_self`,
//! `co_schedule_bh_cb` (util/async.c).
//!
//! A task is one `Arc` holding a state word, the task's home (the run queue of the
//! context it belongs to, held weakly), its key in that queue's registry, its join waker
//! and its future. The run queues, `spawn`, `block_on`, `yield_now` and `reschedule_to`
//! are in `run_queue.rs`.
//!
//! # State word
//!
//! Lifecycle bits (exactly one of these lifecycle values at any time, anything else is a
//! bug and panics with the value): `IDLE` (0, parked, waiting for a wake),
//! `SCHEDULED` (on exactly one run queue), `RUNNING` (being polled, or being cancelled),
//! `RUNNING | NOTIFIED` (woken while being polled), `COMPLETE` (finished or cancelled;
//! wakes are no-ops). `JOIN_INTEREST` is independent: set while a [`JoinHandle`] exists.
//! `CANCELLED` is independent too: set once by a cancel, never cleared.
//!
//! # Rules
//!
//! [TK1] Only the waker whose CAS moves `IDLE → SCHEDULED` pushes the task on a run queue,
//!    so a task is on at most one queue at a time: waking a scheduled task is a no-op.
//! [TK2] Only the runner that popped the task moves `SCHEDULED → RUNNING`; so a task is
//!    polled by one thread at a time.
//! [TK3] A wake during the poll sets `NOTIFIED`; when the poll returns `Pending` the runner
//!    moves `RUNNING | NOTIFIED → SCHEDULED` and pushes the task itself ([TK1] holds:
//!    nobody else could push it meanwhile), or `RUNNING → IDLE` when no wake came.
//! [TK4] The home is changed only by the task itself while `RUNNING`
//!    ([`reschedule_to`](crate::reschedule_to), through [`move_current_task`]) and read
//!    by whoever pushes the task, after [TK1] or [TK3] made it the only pusher; so a task
//!    moved to another context is pushed there only after its poll on the old one has
//!    returned: it never runs on two threads at once.
//!
//! The interleaving [TK3] must survive (a wake from another thread racing the end of
//! a poll):
//!
//! ```text
//!   runner (home thread)                    waker (any thread)
//!   --------------------                    ------------------
//!   poll() -> Pending
//!                                           CAS RUNNING -> RUNNING|NOTIFIED
//!   CAS RUNNING|NOTIFIED -> SCHEDULED, push
//!   (had the runner's CAS come first: RUNNING -> IDLE, and then the waker's CAS
//!    IDLE -> SCHEDULED makes the waker push it)
//! ```
//!
//! Both CASes are on the same word, so exactly one side sees the other and pushes.
//!
//! # Cancellation
//!
//! [TK5] A task belongs to the run queue its home names: that queue's registry holds it
//!    (strongly) from `spawn` until it completes, and [`move_current_task`] moves the
//!    entry along with the home. A closed queue (its context dropped or shut down)
//!    registers nothing: a task spawned on it or moved to it is cancelled.
//! [TK6] A cancel sets `CANCELLED`. On an `IDLE` or `SCHEDULED` task the same CAS claims it
//!    (`→ RUNNING | CANCELLED`): the canceller drops the future, on its own thread, and
//!    completes the task. On a `RUNNING` task the runner does that when the poll returns
//!    `Pending` (a `Ready` output wins). A claimed task still on a run queue is skipped
//!    when popped. So the future is dropped exactly once, never while it is polled.
//! [TK7] A cancelled task's `JoinHandle` yields `Err(JoinError)` with `is_cancelled()`.
//!
//! # Exclusive cells, no locks
//!
//! [TK8] The home and the stage (the future, then its output) are plain cells: the state
//!    word already gives one thread at a time the right to touch them, so a lock would
//!    only add two RMWs per access.
//!    - The home is written only by the task itself while `RUNNING` ([TK4]), and read
//!      by the single pusher ([TK1] and [TK3]: a pusher reads it before its queue push,
//!      which happens before any runner's pop and so before the next `RUNNING`), by
//!      the runner and by a claiming canceller ([TK6]) — never while a writer runs.
//!    - The stage is touched by whoever holds `RUNNING` (the poller; a canceller whose
//!      CAS claimed the task) until `complete`; after `complete`, by exactly one of
//!      the runner and the join side: the one the `JOIN_INTEREST` RMWs pick
//!      (`complete` vs `drop_join_interest`), or the `JoinHandle` that saw `COMPLETE`
//!      with its Acquire load. Each hand-over is a Release/Acquire pair on the state
//!      word (`finish_pending`/`start_run`/`cancel`, `complete`/`load`).
//!
//! [TK9] The join waker is a cell too, handed over by the `JOIN_WAKER` bit. While the bit
//!    is clear, only the `JoinHandle` touches the cell: it writes its waker there, then
//!    sets the bit with a CAS that fails once the task is `COMPLETE` (it then takes the
//!    output). While the bit is set, the cell is read-only: the handle compares its
//!    waker with it, and to replace it clears the bit first (a CAS that fails once the
//!    task is `COMPLETE`); the runner, when its `complete` finds the bit set, reads the
//!    waker there and wakes it. The bit's set and clear and `complete` are RMWs on one
//!    word, so a runner reads the cell only between a set and the next clear, which no
//!    clear can follow once `COMPLETE` is in: the two sides never write the cell at
//!    once, and the handle never misses the completion (its CAS fails on it) nor the
//!    runner the waker (the set came first, Release/Acquire). The waker is dropped with
//!    the task.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use crate::join::{Join, JoinError, JoinHandle};
use crate::sync::Arc;
use crate::sync::atomic::{AtomicUsize, Ordering};

mod state;

use state::{AfterPoll, State};
use state::{JOIN_INTEREST, SCHEDULED, has_join_interest, has_join_waker, is_complete};

/// A cell whose accesses the task state word makes exclusive ([TK8]).
struct Exclusive<T>(std::cell::UnsafeCell<T>);

// SAFETY: [TK8]: at most one thread writes the value at a time, each hand-over being
// a Release/Acquire pair on the task's state word; the value moves between threads
// only that way, so `T: Send` suffices for the stage. Only two cells are read by two
// threads at once, and their types are `Sync`: the home (`Weak<dyn Schedule>`) and the
// join waker (`Option<Waker>`, [TK9]).
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// # Safety
    /// The caller holds the right to touch the value ([TK8]) for the borrow's life:
    /// no other thread reads or writes it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self) -> &mut T {
        // SAFETY: exclusive per the caller's contract.
        unsafe { &mut *self.0.get() }
    }

    /// # Safety
    /// No thread writes the value for the borrow's life (readers may overlap).
    unsafe fn read(&self) -> &T {
        // SAFETY: no writer per the caller's contract.
        unsafe { &*self.0.get() }
    }
}

/// Where a task is pushed when it is woken: a context's run queue. It also keeps the
/// registry of the tasks that belong to it ([TK5]).
pub(crate) trait Schedule: Send + Sync {
    /// Pushes `task`, which the caller just moved to `SCHEDULED`, and makes sure the
    /// queue will be drained ([RQ1] (`run_queue.rs`)); on a closed queue, cancels it instead.
    fn schedule(&self, task: TaskRef);

    /// [`schedule`](Self::schedule) for a caller whose innermost drain loop is this
    /// queue's ([RQ7] (`run_queue.rs`)): the push alone, on the home queue, no kick.
    fn schedule_draining(&self, task: TaskRef);

    /// Enters `task` in the registry; gives it back when the queue is closed.
    fn register(&self, task: TaskRef) -> Result<(), TaskRef>;

    /// Takes the task of `header` out of the registry, if it is there.
    fn unregister(&self, header: &Header) -> Option<TaskRef>;
}

/// A type-erased task on a run queue.
pub(crate) type TaskRef = Arc<dyn Runnable>;

/// A panic caught from a task's future (its poll or its destructor).
pub(crate) type Panic = Box<dyn Any + Send>;

/// What a run queue can do with a task.
pub(crate) trait Runnable: Send + Sync {
    /// Polls the task once (the caller popped it off a run queue).
    fn run(self: Arc<Self>);

    /// Cancels the task ([TK6]). When this call claimed it, the future is dropped
    /// here; a panic from its destructor is returned for a detached task (a joined one
    /// hands it to its `JoinHandle`).
    fn cancel(self: Arc<Self>) -> Option<Panic>;

    /// The part of the task that does not depend on its future.
    fn header(&self) -> &Header;
}

/// The part of a task that does not depend on its future.
pub(crate) struct Header {
    pub(crate) state: State,
    home: Exclusive<Weak<dyn Schedule>>,
    /// [TK9].
    join_waker: Exclusive<Option<Waker>>,
    /// The task's key in its home's registry; read and written only under that
    /// registry's lock ([TK5]), hence Relaxed.
    key: AtomicUsize,
}

impl Header {
    /// The registry key (caller holds the registry's lock).
    pub(crate) fn key(&self) -> usize {
        self.key.load(Ordering::Relaxed)
    }

    /// Sets the registry key (caller holds the registry's lock).
    pub(crate) fn set_key(&self, key: usize) {
        self.key.store(key, Ordering::Relaxed);
    }
}

/// Why a task produced no output.
enum Failure {
    Panic(Panic),
    Cancelled,
}

enum Stage<F: Future> {
    Running(F),
    Finished(Result<F::Output, Failure>),
    Consumed,
}

/// A spawned future and its header.
pub(crate) struct Task<F: Future> {
    header: Header,
    stage: Exclusive<Stage<F>>,
}

thread_local! {
    /// The header of the task being polled on this thread (for [`reschedule_to`]).
    static CURRENT_TASK: Cell<Option<NonNull<Header>>> = const { Cell::new(None) };
}

/// Whether the calling code runs inside a spawned task's poll (QEMU:
/// `qemu_in_coroutine`). Code that must not run in a task — the graph writer, which
/// polls the main loop — asserts on it.
pub fn in_task() -> bool {
    CURRENT_TASK.with(|c| c.get().is_some())
}

/// Sets [`CURRENT_TASK`] for the duration of a poll, restoring the outer one after.
struct CurrentTask(Option<NonNull<Header>>);

impl CurrentTask {
    fn enter(header: &Header) -> Self {
        Self(CURRENT_TASK.with(|c| c.replace(Some(NonNull::from(header)))))
    }
}

impl Drop for CurrentTask {
    fn drop(&mut self) {
        CURRENT_TASK.with(|c| c.set(self.0));
    }
}

impl<F> Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// A new task that is `SCHEDULED` with a JoinHandle; the caller pushes it.
    pub(crate) fn new(future: F, home: Weak<dyn Schedule>) -> Arc<Self> {
        Arc::new(Self {
            header: Header {
                state: State::new(SCHEDULED | JOIN_INTEREST),
                home: Exclusive::new(home),
                join_waker: Exclusive::new(None),
                key: AtomicUsize::new(usize::MAX),
            },
            stage: Exclusive::new(Stage::Running(future)),
        })
    }

    /// Pushes the task on its home queue. A home that is gone has cancelled the task
    /// already ([TK5]), so this cancel only completes a claim nobody else can make.
    fn push(self: Arc<Self>) {
        // SAFETY: the caller is the single pusher ([TK1] and [TK3]), reading before its
        // queue push; the task is not `RUNNING`, so nobody writes the home ([TK8]).
        let home = unsafe { self.header.home.read() };
        let queue = Weak::as_ptr(home);
        if crate::run_queue::is_draining_here(queue.cast()) {
            // [RQ7] (`run_queue.rs`): the drain of the queue at this address is on this
            // thread's stack, and `home`'s allocation is that queue's (a `Weak` keeps its
            // allocation, so no other queue can share the address): no upgrade needed.
            // SAFETY: the queue lives while its drain on this thread's stack runs ([RQ7]).
            return unsafe { &*queue }.schedule_draining(self);
        }
        match home.upgrade() {
            Some(home) => home.schedule(self),
            None => {
                if let Some(panic) = self.cancel() {
                    log::error!(
                        "a cancelled task's destructor panicked: {}",
                        describe(&*panic)
                    );
                }
            }
        }
    }

    /// Stores the result (dropping the future in place, if it is still there; a panic
    /// of its destructor becomes the result), completes the task, takes it out of its
    /// home's registry and hands the result to the JoinHandle, or drops it when there
    /// is none. Returns a detached task's panic, for the caller to resume.
    fn finish(&self, result: Result<F::Output, Failure>) -> Option<Panic> {
        let stored = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the caller holds `RUNNING` (the runner, or a claiming canceller),
            // and `complete` has not run yet ([TK8]).
            *unsafe { self.stage.get() } = Stage::Finished(result);
        }));
        if let Err(panic) = stored {
            // The future's destructor panicked (the assignment still stored `result`):
            // that panic is the task's outcome, and the task still completes.
            // SAFETY: as above.
            *unsafe { self.stage.get() } = Stage::Finished(Err(Failure::Panic(panic)));
        }
        let prev = self.header.state.complete();
        // SAFETY: only a `RUNNING` task writes its home, and this one never runs again
        // ([TK8]); other readers may overlap, writers cannot.
        let home = unsafe { self.header.home.read() }.upgrade();
        if let Some(home) = home {
            drop(home.unregister(&self.header));
        }
        if has_join_interest(prev) {
            if has_join_waker(prev) {
                // SAFETY: [TK9]: `complete` found `JOIN_WAKER` set, so the handle has
                // published the cell and can no longer take it back: readers only.
                if let Some(w) = unsafe { self.header.join_waker.read() } {
                    w.wake_by_ref();
                }
            }
            None
        } else {
            // SAFETY: no join interest at `complete`: the join side gave the stage up
            // (its `drop_join_interest` saw the task unfinished), so it is this
            // thread's alone ([TK8]).
            let stage = std::mem::replace(unsafe { self.stage.get() }, Stage::Consumed);
            match stage {
                // A detached task's panic is not swallowed: it unwinds the loop.
                Stage::Finished(Err(Failure::Panic(panic))) => Some(panic),
                _ => None,
            }
        }
    }

    /// [TK9]: leaves `waker` in the join waker cell for the runner, unless it is there
    /// already; returns `true` when the task turned out `COMPLETE` meanwhile.
    fn publish_join_waker(&self, state: u32, waker: &Waker) -> bool {
        if has_join_waker(state) {
            // SAFETY: [TK9]: the bit is set: the cell is read-only, for both sides.
            let current = unsafe { self.header.join_waker.read() };
            if current.as_ref().is_some_and(|w| w.will_wake(waker)) {
                return false;
            }
            if !self.header.state.clear_join_waker() {
                return true;
            }
        }
        // SAFETY: [TK9]: the bit is clear (this handle is the only one that sets it), so
        // the runner does not read the cell, whether or not it completes meanwhile.
        let slot = unsafe { self.header.join_waker.get() };
        match slot {
            Some(w) => w.clone_from(waker),
            None => *slot = Some(waker.clone()),
        }
        !self.header.state.set_join_waker()
    }

    /// Drops the future of a claimed task on this thread and completes it as cancelled
    /// ([TK6]); a panic from the future's destructor takes the place of the result.
    fn finish_cancelled(&self) -> Option<Panic> {
        self.finish(Err(Failure::Cancelled))
    }
}

/// A panic payload's message, for logs.
pub(crate) fn describe(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

impl<F> Runnable for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn run(self: Arc<Self>) {
        if !self.header.state.start_run() {
            return; // claimed by a canceller while queued ([TK6])
        }
        // The poll's waker borrows `self`'s reference instead of taking one: no count
        // RMW per poll. `ManuallyDrop` keeps it from ever giving back the reference it
        // does not own; a clone the future keeps takes its own (std's `Wake` vtable).
        // The pointer comes from a live `Arc<Self>` (`self`), which outlives the waker
        // (dropped, without touching the count, at the end of this function).
        // SAFETY: `self` keeps the pointee alive; `Waker::from` only turns it back.
        let borrowed = unsafe { Arc::from_raw(Arc::as_ptr(&self)) };
        let waker = std::mem::ManuallyDrop::new(Waker::from(borrowed));
        let mut cx = Context::from_waker(&waker);
        let polled = {
            let _current = CurrentTask::enter(&self.header);
            // SAFETY: `start_run` gave this thread `RUNNING` ([TK8]); nothing in the
            // poll touches the stage (a `JoinHandle` of this task sees it unfinished).
            let stage = unsafe { self.stage.get() };
            let Stage::Running(future) = stage else {
                unreachable!("a RUNNING task has its future")
            };
            // SAFETY: the future lives inside the task's `Arc` allocation, which never
            // moves, and it is dropped in place (by `finish` or by the task's drop)
            // before that memory is freed: the pinning guarantee holds.
            let future = unsafe { Pin::new_unchecked(future) };
            catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)))
        };
        let panic = match polled {
            Ok(Poll::Pending) => match self.header.state.finish_pending() {
                AfterPoll::Park => None,
                AfterPoll::Requeue => {
                    self.push();
                    None
                }
                AfterPoll::Cancel => self.finish_cancelled(),
            },
            Ok(Poll::Ready(output)) => self.finish(Ok(output)),
            Err(panic) => self.finish(Err(Failure::Panic(panic))),
        };
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }

    fn cancel(self: Arc<Self>) -> Option<Panic> {
        if self.header.state.cancel() {
            self.finish_cancelled()
        } else {
            None
        }
    }

    fn header(&self) -> &Header {
        &self.header
    }
}

impl<F> Wake for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn wake(self: Arc<Self>) {
        if self.header.state.wake() {
            self.push();
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.header.state.wake() {
            Arc::clone(self).push();
        }
    }
}

impl<F> Join<F::Output> for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<F::Output, JoinError>> {
        let state = self.header.state.load();
        if !is_complete(state) && !self.publish_join_waker(state, cx.waker()) {
            return Poll::Pending;
        }
        // SAFETY: an Acquire load or CAS saw `COMPLETE` with `JOIN_INTEREST` held by
        // this handle: the runner no longer touches the stage ([TK8]).
        match std::mem::replace(unsafe { self.stage.get() }, Stage::Consumed) {
            Stage::Finished(Ok(output)) => Poll::Ready(Ok(output)),
            Stage::Finished(Err(Failure::Cancelled)) => Poll::Ready(Err(JoinError(()))),
            Stage::Finished(Err(Failure::Panic(panic))) => resume_unwind(panic),
            _ => panic!("JoinHandle polled after it returned the task's output"),
        }
    }

    fn is_finished(&self) -> bool {
        is_complete(self.header.state.load())
    }

    fn drop_handle(&self) {
        if self.header.state.drop_join_interest() {
            // SAFETY: `drop_join_interest` saw the task complete while it still had join
            // interest, so the runner left the stage to this side ([TK8]).
            let stage = std::mem::replace(unsafe { self.stage.get() }, Stage::Consumed);
            if let Stage::Finished(Err(Failure::Panic(panic))) = stage {
                log::error!(
                    "a task panicked and its JoinHandle was dropped without awaiting it: {}",
                    describe(&*panic)
                );
            }
        }
    }
}

/// Creates a task that is `SCHEDULED` on `home` and its [`JoinHandle`]; the caller
/// pushes the returned reference ([TK1]: it is the only pusher).
pub(crate) fn new_task<F>(future: F, home: Weak<dyn Schedule>) -> (TaskRef, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = Task::new(future, home);
    let handle = JoinHandle::new(Arc::clone(&task) as Arc<dyn Join<F::Output>>);
    (task, handle)
}

/// Moves the task being polled on this thread to `target` ([TK4] and [TK5]). Returns
/// `None` outside a task, `Some(false)` when the task already lives there, and
/// `Some(true)` when it was moved: it is pushed on `target` once the current poll
/// returns — or, when `target` is gone or closed, cancelled then.
pub(crate) fn move_current_task(target: Weak<dyn Schedule>) -> Option<bool> {
    let header = CURRENT_TASK.with(Cell::get)?;
    // SAFETY: CURRENT_TASK points at the header of the task being polled on this
    // thread; it is set only for the duration of that poll, during which the runner
    // holds an `Arc` to the task, and our caller runs inside that poll.
    let header = unsafe { header.as_ref() };
    let old = {
        // SAFETY: the task is `RUNNING` on this thread (we are inside its poll): only
        // it writes its home, and no pusher reads it now ([TK8]).
        let home = unsafe { header.home.get() };
        if Weak::ptr_eq(home, &target) {
            return Some(false);
        }
        // [TK4]: only the running task writes its home.
        std::mem::replace(home, target.clone())
    };
    // [TK5]: the registry entry follows the home. No lock is held across the two.
    let me = old.upgrade().and_then(|q| q.unregister(header));
    let registered = match (me, target.upgrade()) {
        (Some(me), Some(q)) => q.register(me).is_ok(),
        // Not registered any more (a shutdown of the old home took it and set
        // CANCELLED), or the target is gone.
        _ => false,
    };
    if !registered {
        // Running, so this only sets CANCELLED: the runner cancels after the poll.
        let claimed = header.state.cancel();
        debug_assert!(!claimed, "a running task was claimed by its own cancel");
    }
    // The task is RUNNING, so this only sets NOTIFIED; the runner pushes it on the new
    // home once this poll has returned ([TK3]).
    let pushed = header.state.wake();
    debug_assert!(!pushed, "a running task was pushed by its own wake");
    Some(true)
}

#[cfg(not(all(loom, test)))]
static_assertions::const_assert!(
    std::mem::size_of::<Header>() + 2 * std::mem::size_of::<usize>() <= 128
);
#[cfg(not(all(loom, test)))]
static_assertions::const_assert!(
    std::mem::size_of::<Task<std::future::Ready<()>>>() + 2 * std::mem::size_of::<usize>() <= 128
);
