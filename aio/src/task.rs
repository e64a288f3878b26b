//! Tasks: futures run by a context, QEMU's coroutines (DESIGN §6).
//!
//! QEMU: `aio_co_schedule`, `aio_co_wake`, `aio_co_enter`, `aio_co_reschedule_self`,
//! `co_schedule_bh_cb` (util/async.c).
//!
//! A task is one `Arc` holding a state word, the task's home (the run queue of the
//! context it belongs to, held weakly), its join waker and its future. The run queues,
//! `spawn`, `block_on`, `yield_now` and `reschedule_to` are in `run_queue.rs`.
//!
//! # State word
//!
//! Lifecycle bits (exactly one of these lifecycle values at any time, anything else is a
//! bug and panics with the value): `IDLE` (0, parked, waiting for a wake),
//! `SCHEDULED` (on exactly one run queue), `RUNNING` (being polled),
//! `RUNNING | NOTIFIED` (woken while being polled), `COMPLETE` (finished; wakes are
//! no-ops). `JOIN_INTEREST` is independent: set while a [`JoinHandle`] exists.
//!
//! # Rules
//!
//! 1. Only the waker whose CAS moves `IDLE → SCHEDULED` pushes the task on a run queue,
//!    so a task is on at most one queue at a time: waking a scheduled task is a no-op.
//! 2. Only the runner that popped the task moves `SCHEDULED → RUNNING`; so a task is
//!    polled by one thread at a time.
//! 3. A wake during the poll sets `NOTIFIED`; when the poll returns `Pending` the runner
//!    moves `RUNNING | NOTIFIED → SCHEDULED` and pushes the task itself (rule 1 holds:
//!    nobody else could push it meanwhile), or `RUNNING → IDLE` when no wake came.
//! 4. The home is changed only by the task itself while `RUNNING`
//!    ([`reschedule_to`](crate::reschedule_to), through [`move_current_task`]) and read
//!    by whoever pushes the task, after rule 1 or 3 made it the only pusher; so a task
//!    moved to another context is pushed there only after its poll on the old one has
//!    returned: it never runs on two threads at once.
//!
//! The interleaving rule 3 must survive (a wake from another thread racing the end of
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

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Weak;
use std::task::{Context, Poll, Wake, Waker};

use crate::sync::atomic::{AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// Parked: not queued, not running.
const IDLE: u32 = 0;
/// On exactly one run queue (rule 1).
const SCHEDULED: u32 = 1 << 0;
/// Being polled (rule 2).
const RUNNING: u32 = 1 << 1;
/// Woken while running: requeue after the poll (rule 3).
const NOTIFIED: u32 = 1 << 2;
/// The future finished (or panicked); wakes are no-ops.
const COMPLETE: u32 = 1 << 3;
/// A [`JoinHandle`] exists and will take the output.
const JOIN_INTEREST: u32 = 1 << 4;
/// The bits that make up the lifecycle value.
const LIFECYCLE: u32 = SCHEDULED | RUNNING | NOTIFIED | COMPLETE;

fn lifecycle(state: u32) -> u32 {
    state & LIFECYCLE
}

fn is_complete(state: u32) -> bool {
    lifecycle(state) == COMPLETE
}

fn has_join_interest(state: u32) -> bool {
    state & JOIN_INTEREST != 0
}

#[cold]
fn invalid(state: u32, what: &str) -> ! {
    panic!("task state word {state:#07b} is impossible when {what} (a task bug)")
}

/// A task's state word. See the module docs.
pub(crate) struct State(AtomicU32);

impl State {
    fn new(initial: u32) -> Self {
        Self(AtomicU32::new(initial))
    }

    /// A wake: returns `true` when the caller moved the task to `SCHEDULED` and must
    /// push it (rule 1); a wake of a running task sets `NOTIFIED` (rule 3).
    pub(crate) fn wake(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = match lifecycle(cur) {
                IDLE => cur | SCHEDULED,
                RUNNING => cur | NOTIFIED,
                SCHEDULED | COMPLETE => return false,
                l if l == RUNNING | NOTIFIED => return false,
                _ => invalid(cur, "waking"),
            };
            // AcqRel: Release publishes what the waker wrote before waking to the next
            // poll (read by the Acquire in `start_run` or `finish_pending`); Acquire
            // pairs with the runner's Release in `finish_pending`, so the pusher sees
            // the home the task last set (rule 4).
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return lifecycle(next) == SCHEDULED,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The runner took the task off a run queue: `SCHEDULED → RUNNING` (rule 2).
    pub(crate) fn start_run(&self) {
        // Acquire: pairs with the Release of the wake (or of `finish_pending`) that
        // scheduled the task.
        let prev = self.0.fetch_xor(SCHEDULED | RUNNING, Ordering::Acquire);
        if lifecycle(prev) != SCHEDULED {
            invalid(prev, "starting a run");
        }
    }

    /// The poll returned `Pending`: returns `true` when a wake came during the poll and
    /// the runner must push the task again (rule 3).
    pub(crate) fn finish_pending(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (next, requeue) = match lifecycle(cur) {
                RUNNING => (cur & !RUNNING, false),
                l if l == RUNNING | NOTIFIED => ((cur & !(RUNNING | NOTIFIED)) | SCHEDULED, true),
                _ => invalid(cur, "finishing a poll"),
            };
            // AcqRel: Release publishes the future's state and home to the next
            // pusher/runner; Acquire pairs with the Release of the wake that set
            // NOTIFIED.
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return requeue,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The future finished: `RUNNING[|NOTIFIED] → COMPLETE`. Returns the old word.
    pub(crate) fn complete(&self) -> u32 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if lifecycle(cur) & !NOTIFIED != RUNNING {
                invalid(cur, "completing");
            }
            let next = (cur & !(RUNNING | NOTIFIED)) | COMPLETE;
            // AcqRel: Release publishes the stored output to the JoinHandle's Acquire
            // load; Acquire pairs with `drop_join_interest`.
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return cur,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The JoinHandle went away; returns whether the task had already completed.
    fn drop_join_interest(&self) -> bool {
        // AcqRel: pairs with `complete`; of the two RMWs exactly one sees the other, so
        // exactly one side drops the output.
        is_complete(self.0.fetch_and(!JOIN_INTEREST, Ordering::AcqRel))
    }

    fn load(&self) -> u32 {
        // Acquire: pairs with the Release in `complete`, so the output is visible.
        self.0.load(Ordering::Acquire)
    }
}

/// Where a task is pushed when it is woken: a context's run queue (or, in the loom
/// model, a stand-in with the same protocol).
pub(crate) trait Schedule: Send + Sync {
    /// Pushes `task`, which the caller just moved to `SCHEDULED`, and makes sure the
    /// queue will be drained (rule 5).
    fn schedule(&self, task: TaskRef);
}

/// A type-erased task on a run queue.
pub(crate) type TaskRef = Arc<dyn Runnable>;

/// What a run queue can do with a task.
pub(crate) trait Runnable: Send + Sync {
    /// Polls the task once (the caller popped it off a run queue).
    fn run(self: Arc<Self>);
}

/// The part of a task that does not depend on its future.
pub(crate) struct Header {
    pub(crate) state: State,
    home: Mutex<Weak<dyn Schedule>>,
    join_waker: Mutex<Option<Waker>>,
}

enum Stage<F: Future> {
    Running(F),
    Finished(std::thread::Result<F::Output>),
    Consumed,
}

/// A spawned future and its header.
pub(crate) struct Task<F: Future> {
    header: Header,
    stage: Mutex<Stage<F>>,
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
                home: Mutex::new(home),
                join_waker: Mutex::new(None),
            },
            stage: Mutex::new(Stage::Running(future)),
        })
    }

    /// Pushes the task on its home queue; a task whose context is gone is dropped here
    /// and never runs again.
    fn push(self: Arc<Self>) {
        let home = lock(&self.header.home).upgrade();
        if let Some(home) = home {
            home.schedule(self);
        }
    }

    /// Stores the result and hands it to the JoinHandle, or drops it when there is none.
    fn finish(&self, result: std::thread::Result<F::Output>) {
        *lock(&self.stage) = Stage::Finished(result);
        let prev = self.header.state.complete();
        if has_join_interest(prev) {
            let waker = lock(&self.header.join_waker).take();
            if let Some(w) = waker {
                w.wake();
            }
        } else {
            let stage = std::mem::replace(&mut *lock(&self.stage), Stage::Consumed);
            if let Stage::Finished(Err(panic)) = stage {
                // A detached task's panic is not swallowed: it unwinds the loop.
                resume_unwind(panic);
            }
        }
    }
}

impl<F> Runnable for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn run(self: Arc<Self>) {
        self.header.state.start_run();
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        let polled = {
            let _current = CurrentTask::enter(&self.header);
            let mut stage = lock(&self.stage);
            let Stage::Running(future) = &mut *stage else {
                unreachable!("a RUNNING task has its future")
            };
            // SAFETY: the future lives inside the task's `Arc` allocation, which never
            // moves, and it is dropped in place (by `finish` or by the task's drop)
            // before that memory is freed: the pinning guarantee holds.
            let future = unsafe { Pin::new_unchecked(future) };
            catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)))
        };
        match polled {
            Ok(Poll::Pending) => {
                if self.header.state.finish_pending() {
                    self.push();
                }
            }
            Ok(Poll::Ready(output)) => self.finish(Ok(output)),
            Err(panic) => self.finish(Err(panic)),
        }
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

/// What a [`JoinHandle`] needs from its task, without the future's type.
trait Join<T>: Send + Sync {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<T>;
    fn is_finished(&self) -> bool;
    fn drop_handle(&self);
}

impl<F> Join<F::Output> for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !is_complete(self.header.state.load()) {
            {
                let mut slot = lock(&self.header.join_waker);
                match &mut *slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
            }
            // Checked again after storing the waker: `finish` sets COMPLETE before it
            // takes the waker under the same lock, so one of the two sees the other.
            if !is_complete(self.header.state.load()) {
                return Poll::Pending;
            }
        }
        match std::mem::replace(&mut *lock(&self.stage), Stage::Consumed) {
            Stage::Finished(Ok(output)) => Poll::Ready(output),
            Stage::Finished(Err(panic)) => resume_unwind(panic),
            _ => panic!("JoinHandle polled after it returned the task's output"),
        }
    }

    fn is_finished(&self) -> bool {
        is_complete(self.header.state.load())
    }

    fn drop_handle(&self) {
        if self.header.state.drop_join_interest() {
            let stage = std::mem::replace(&mut *lock(&self.stage), Stage::Consumed);
            if let Stage::Finished(Err(_)) = stage {
                log::error!("a task panicked and its JoinHandle was dropped without awaiting it");
            }
        }
    }
}

/// An owned permission to await a spawned task's output (QEMU has no equivalent: a
/// coroutine's caller waits with its own primitives).
///
/// Awaiting it yields the task's output; if the task panicked, awaiting resumes the
/// panic. Dropping it — or calling [`detach`](Self::detach) — detaches the task: it
/// keeps running, and its output is dropped when it finishes (a detached task's panic
/// unwinds the loop that ran it).
///
/// ```
/// let ctx = aioctx_aio::AioContext::new()?;
/// let handle = ctx.spawn(async { 6 * 7 });
/// assert_eq!(ctx.block_on(handle), 42);
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping a JoinHandle detaches the task; call `detach` to say so"]
pub struct JoinHandle<T> {
    task: Option<Arc<dyn Join<T>>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> JoinHandle<T> {
    /// Lets the task run on without anyone awaiting it.
    pub fn detach(self) {}

    /// Whether the task has finished (completed or panicked).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let task = self
            .task
            .as_ref()
            .expect("JoinHandle polled after it returned the task's output");
        let out = task.poll_join(cx);
        if out.is_ready()
            && let Some(task) = self.task.take()
        {
            task.drop_handle();
        }
        out
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.drop_handle();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Creates a task that is `SCHEDULED` on `home` and its [`JoinHandle`]; the caller
/// pushes the returned reference (rule 1: it is the only pusher).
pub(crate) fn new_task<F>(future: F, home: Weak<dyn Schedule>) -> (TaskRef, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = Task::new(future, home);
    let handle = JoinHandle {
        task: Some(Arc::clone(&task) as Arc<dyn Join<F::Output>>),
        _marker: PhantomData,
    };
    (task, handle)
}

/// Moves the task being polled on this thread to `target` (rule 4). Returns `None`
/// outside a task, `Some(false)` when the task already lives there, and `Some(true)`
/// when it was moved: it is pushed on `target` once the current poll returns.
pub(crate) fn move_current_task(target: Weak<dyn Schedule>) -> Option<bool> {
    let header = CURRENT_TASK.with(Cell::get)?;
    // SAFETY: CURRENT_TASK points at the header of the task being polled on this
    // thread; it is set only for the duration of that poll, during which the runner
    // holds an `Arc` to the task, and our caller runs inside that poll.
    let header = unsafe { header.as_ref() };
    {
        let mut home = lock(&header.home);
        if Weak::ptr_eq(&home, &target) {
            return Some(false);
        }
        *home = target; // rule 4: only the running task writes its home
    }
    // The task is RUNNING, so this only sets NOTIFIED; the runner pushes it on the new
    // home once this poll has returned (rule 3).
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
static_assertions::assert_impl_all!(JoinHandle<u32>: Send, Sync, Unpin);
