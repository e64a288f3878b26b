//! The calling thread's current context (QEMU: `qemu_get_current_aio_context`,
//! `qemu_get_aio_context`): what [`current`], [`try_current`] and [`with_current`]
//! return, set by [`AioContext::make_current`] and, for the duration of a task's poll or
//! a `block_on`, by the executor.
//!
//! [CU1] Inside a task, the current context is the task's. A run queue's drain makes its
//!    context current once for all the tasks it runs (not at all when it is current
//!    already), so [`AioContext::make_current`] inside a task is refused with a panic:
//!    it would become the current context of the tasks polled after it.

use std::cell::{Cell, RefCell};
use std::sync::{OnceLock, Weak};

use crate::context::{AioContext, thread_label};
use crate::sync::Arc;

thread_local! {
    /// The thread's current context. Borrowed only for a replace or a read, never
    /// across other code (so `with_current`'s closure may nest anything).
    static CURRENT: RefCell<Option<Arc<AioContext>>> = const { RefCell::new(None) };
    /// How many `with_current` closures run on this thread.
    static LENDING: Cell<u32> = const { Cell::new(0) };
}

/// `make_current`'s slot write: returns the context that was current before.
pub(crate) fn replace_current(ctx: Arc<AioContext>) -> Option<Arc<AioContext>> {
    // [CU1]: a replacement here would be what the tasks polled after this one see as
    // their context.
    if crate::task::in_task() {
        panic!(
            "AioContext::make_current called on thread {} inside a task, which runs with its \
             own context current (as do the tasks polled after it): call it outside tasks",
            thread_label()
        );
    }
    if LENDING.with(Cell::get) > 0 {
        panic!(
            "AioContext::make_current called on thread {} inside a with_current closure, \
             which borrows the thread's current context: call it outside the closure",
            thread_label()
        );
    }
    CURRENT
        .try_with(|c| c.replace(Some(ctx)))
        .unwrap_or_else(|_| {
            panic!(
                "AioContext::make_current called on thread {} while its thread-locals are \
                 being destroyed (from a thread-local's destructor): there is no current \
                 context to set any more",
                thread_label()
            )
        })
}

/// Makes `ctx` the calling thread's current context until the guard drops; the task
/// executor uses it so that [`current`] inside a task is the task's context.
///
/// In a thread-local's destructor, once the slot is gone, this does nothing: code run
/// there sees no current context (see [`with_current`]). When `ctx` is current already
/// it does nothing either (no `Arc` count traffic: `block_on` enters once per poll of its
/// future); a [`make_current`](AioContext::make_current) made under such a guard then
/// outlasts it, as one made outside any guard does.
pub(crate) fn enter_current(ctx: &Arc<AioContext>) -> CurrentGuard {
    CurrentGuard(
        CURRENT
            .try_with(|c| {
                let same = c.borrow().as_ref().is_some_and(|cur| Arc::ptr_eq(cur, ctx));
                (!same).then(|| c.replace(Some(Arc::clone(ctx))))
            })
            .ok()
            .flatten(),
    )
}

/// [`enter_current`] for a context held weakly: `None` when it is gone. When it is the
/// current context already, the `Weak` is not even upgraded (the thread's slot holds it
/// alive): the run queue's drain enters this way once per pass.
pub(crate) fn enter_current_weak(ctx: &Weak<AioContext>) -> Option<CurrentGuard> {
    let same = CURRENT
        .try_with(|c| {
            c.borrow()
                .as_ref()
                .is_some_and(|cur| std::ptr::eq(Arc::as_ptr(cur), ctx.as_ptr()))
        })
        .unwrap_or(false);
    if same {
        return Some(CurrentGuard(None));
    }
    ctx.upgrade().map(|ctx| enter_current(&ctx))
}

/// Restores the previous current context (see [`enter_current`]); `None` when
/// `enter_current` found the slot destroyed or `ctx` current already.
pub(crate) struct CurrentGuard(Option<Option<Arc<AioContext>>>);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.0.take() {
            // The replaced value is dropped after the borrow ends (its `Drop` may call
            // back in). `try_with`: never panic in a destructor.
            let _old = CURRENT.try_with(|c| c.replace(prev));
        }
    }
}

static MAIN: OnceLock<Arc<AioContext>> = OnceLock::new();

/// The process-wide main context (QEMU: `qemu_get_aio_context`). Created on first use;
/// its home thread is the first thread that polls it, normally `main`.
///
/// # Panics
/// When the context cannot be created (io_uring denied or out of memory); the message
/// carries the cause.
pub fn main_context() -> &'static Arc<AioContext> {
    MAIN.get_or_init(|| {
        AioContext::builder()
            .name("main")
            .build()
            .unwrap_or_else(|e| panic!("cannot create the main AioContext: {e}"))
    })
}

/// The context of the calling thread: the one it made current (an [`IoThread`] does), or
/// the main context on the main context's home thread (QEMU:
/// `qemu_get_current_aio_context`). `None` on other threads.
///
/// [`IoThread`]: crate::IoThread
pub fn try_current() -> Option<Arc<AioContext>> {
    with_current(|c| c.map(AioContext::arc))
}

/// Calls `f` with the calling thread's context as [`try_current`] finds it, without
/// touching the `Arc`'s count: the hot paths of upper layers (the graph lock's
/// `rdlock`) look up per-context state this way.
///
/// From a thread-local's destructor run after the thread's current-context slot was
/// destroyed, `f` gets what a thread with no context made current gets.
///
/// No borrow of the thread's state is held while `f` runs, so `f` may do anything a
/// caller outside could — `block_on`, a draining `poll`, spawning and running tasks
/// (which make their own context current while they run) — except replace the
/// thread's current context for good.
///
/// # Panics
/// When `f` calls [`AioContext::make_current`]: the context lent to `f` is kept alive by
/// the thread's current-context slot, which `make_current` would overwrite.
pub fn with_current<R>(f: impl FnOnce(Option<&AioContext>) -> R) -> R {
    // A destroyed slot (a thread-local's destructor calling in, e.g. through a guard's
    // `Drop`) is "no context made current": never a panic inside a destructor.
    let lent = CURRENT
        .try_with(|c| c.borrow().as_deref().map(std::ptr::from_ref))
        .ok()
        .flatten();
    match lent {
        Some(ctx) => {
            let _lending = Lending::enter();
            // `make_current` (the one public way to overwrite the slot) panics while
            // `LENDING > 0`, and `enter_current`'s guards keep the `Arc` they displace
            // and put it back before the code that created them (so `f`) returns.
            // SAFETY: `ctx` points into the `Arc` the thread's CURRENT slot holds,
            // which, as just said, is never dropped while `f` runs.
            f(Some(unsafe { &*ctx }))
        }
        None => f(MAIN.get().filter(|m| m.is_home_thread()).map(|m| &**m)),
    }
}

/// Counts the [`with_current`] closures running on this thread (see its safety note).
struct Lending;

impl Lending {
    fn enter() -> Self {
        LENDING.with(|n| n.set(n.get() + 1));
        Self
    }
}

impl Drop for Lending {
    fn drop(&mut self) {
        LENDING.with(|n| n.set(n.get() - 1));
    }
}

/// Like [`try_current`], for code that must run in a context. Inside a task it is the
/// task's context.
///
/// The returned `Arc` keeps the context alive. Held across an `.await` inside a task of
/// that context (`let ctx = current(); ... .await`), it ties the two together: the task
/// lives as long as the context, and the context as long as the task. An
/// [`IoThread`](crate::IoThread) breaks the tie when dropped (it cancels its context's
/// tasks with [`AioContext::shutdown_tasks`]); for a context owned through a bare `Arc`,
/// call `shutdown_tasks` before letting it go, or call `current()` again after each
/// `.await` instead of holding it (or use [`with_current`]).
///
/// # Panics
/// When the calling thread has no current context; the message names the thread.
pub fn current() -> Arc<AioContext> {
    try_current().unwrap_or_else(|| {
        panic!(
            "no AioContext is current on thread {}: call this from an IoThread, from the main \
             context's home thread, or after AioContext::make_current",
            thread_label()
        )
    })
}
