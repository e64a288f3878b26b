//! QEMU's `aio_wait` on aioctx: the main loop waits for a condition that other threads
//! change, and those threads [`kick`] it awake — with no syscall and no allocation when
//! nobody waits.
//!
//! QEMU: util/aio-wait.c, include/block/aio-wait.h.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use aioctx_aio::IoThread;
//!
//! let iothread = IoThread::new("io0")?;
//! let done = Arc::new(AtomicBool::new(false));
//! let d = done.clone();
//! iothread.ctx().schedule_oneshot(move || {
//!     d.store(true, Ordering::Release);
//!     aioctx_wait::kick(); // the rule: change the condition, then kick
//! });
//! // The main loop sleeps in its own context until the kick arrives.
//! aioctx_wait::wait_while(Some(iothread.ctx()), || !done.load(Ordering::Acquire));
//!
//! // Or run a closure on the iothread and wait for its value.
//! let name = aioctx_wait::bh_oneshot(iothread.ctx(), || {
//!     std::thread::current().name().map(str::to_owned)
//! });
//! assert_eq!(name.as_deref(), Some("io0"));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The protocol and its proof are in `protocol.rs`: the waiter raises a count and
//! fences before it reads the condition; the kicker fences after it changed the
//! condition and reads the count; a waiter on an iothread's own context also leaves a
//! handle to it for the kicks. The two fences are asymmetric ([`FenceMode`]): where the
//! kernel grants `membarrier`, the kick's is a compiler fence and the waiter's a
//! `membarrier` call that stands for a full fence on every running thread (`fence.rs`,
//! which the graph lock's read side uses as well). A loom model of the protocol, and of three broken
//! variants that it must find deadlocking, is in `loom_tests.rs`
//! (`RUSTFLAGS="--cfg loom" cargo test -p aioctx-wait --release --lib`); the graph
//! lock's models run the same code (the `loom-model` feature).
#![deny(missing_docs)]

mod fence;
mod oneshot;
mod protocol;
mod sync;

#[cfg(all(loom, test))]
mod loom_tests;

use std::sync::OnceLock;

use std::sync::Arc;

use aioctx_aio::{AioContext, Bh, main_context, try_current};

pub use fence::{
    FENCES_ENV, FenceMode, fence_mode, heavy_fence, light_fence, membarrier_calls, set_fence_mode,
    try_fence_mode,
};
pub use oneshot::bh_oneshot;
use protocol::AioWait;
use protocol::EventLoop;
#[cfg(all(loom, feature = "loom-model"))]
#[doc(hidden)]
pub use protocol::{AioWait as ModelAioWait, EventLoop as ModelEventLoop};

/// A context as the protocol's event loop: sleeping is a blocking `poll` (on the home
/// thread), waking is `notify` (kicks wake the main loop with the dummy BH instead).
#[derive(Clone)]
struct ContextLoop(Arc<AioContext>);

impl EventLoop for ContextLoop {
    fn sleep(&self) {
        self.0.poll(true);
    }

    fn wake(&self) {
        self.0.notify();
    }
}

#[cfg(not(all(loom, any(test, feature = "loom-model"))))]
static GLOBAL: AioWait<ContextLoop> = AioWait::new();

/// The one process-wide waiter count (QEMU: `global_aio_wait`).
#[cfg(not(all(loom, any(test, feature = "loom-model"))))]
#[inline]
fn global() -> &'static AioWait<ContextLoop> {
    &GLOBAL
}

/// The one process-wide waiter count. Under loom the atomics cannot be built in a
/// `const`; the models build their own `AioWait` and never touch this one.
#[cfg(all(loom, any(test, feature = "loom-model")))]
fn global() -> &'static AioWait<ContextLoop> {
    static GLOBAL: OnceLock<AioWait<ContextLoop>> = OnceLock::new();
    GLOBAL.get_or_init(AioWait::new)
}

/// The main context's one dummy bottom half. Scheduling a pending BH is idempotent, so
/// one is enough for every kick (QEMU allocates a oneshot BH per kick), and a kick with
/// a waiter allocates nothing.
static DUMMY_BH: OnceLock<Bh> = OnceLock::new();

/// Wakes the main loop if a [`wait_while`] may be polling (QEMU: `aio_wait_kick`).
///
/// **The rule every caller must follow:** whoever changes a condition that a
/// `wait_while` may be polling calls `kick()` *after* the change. Without the kick the
/// waiter may sleep on, never seeing the change; with it, the wake-up cannot be lost
/// (the fence in `kick` pairs with the one `wait_while` issues after registering).
///
/// With no waiter, `kick` is a fence and one load: no allocation, no syscall. The fence
/// is a compiler fence in [`FenceMode::Asymmetric`] (the waiter's registration pays
/// with a `membarrier` instead) and a SeqCst fence in [`FenceMode::Symmetric`]; the
/// first kick of the process chooses the mode if nothing did (see [`fence_mode`]).
/// With a waiter it schedules the main context's one pre-allocated dummy bottom half,
/// which makes the main loop's `poll` return so that the waiter re-checks; that costs
/// an eventfd write only if the main loop sleeps, and allocates nothing. It also
/// notifies every iothread whose thread waits in [`wait_while`] on its own context.
///
/// Callable from any thread, also from inside bottom halves and with no waiter at all.
///
/// # Panics
/// When a waiter exists and the main context cannot be created (io_uring denied); when
/// this first kick must choose the fence mode and `AIOCTX_FENCES` is invalid or
/// refused (see [`fence_mode`]).
#[inline]
pub fn kick() {
    global().kick(kick_main_loop);
}

#[cold]
#[inline(never)]
fn kick_main_loop() {
    DUMMY_BH
        .get_or_init(|| {
            // QEMU: dummy_bh_cb. Its only job is to make the waiter's poll return.
            main_context().bh_new(|| {})
        })
        .schedule();
}

/// How many [`wait_while`] calls are in progress now, in all threads (a snapshot).
pub fn num_waiters() -> u32 {
    global().num_waiters()
}

/// Waits while `cond()` is true, running an event loop meanwhile; returns whether it
/// waited (whether `cond()` was true at least once). QEMU: `AIO_WAIT_WHILE`.
///
/// It registers as a waiter before the first evaluation of `cond`, then polls — with
/// blocking `poll`s — `ctx` if the calling thread is `ctx`'s home thread, or else the
/// main context. In the second case the calling thread must be the main loop's thread
/// (the main context's home thread, or a thread without context, which becomes its
/// home on the first poll). Either way, whatever changes the condition from another
/// thread must [`kick`] after changing it: the kick wakes the main loop and every
/// iothread waiting on its own context. (A change made by a callback of the polled
/// context itself needs no kick: its `poll` returns after running it.) When `cond()` is
/// false at once, `wait_while` returns `false` without polling.
///
/// ```
/// // Already false: no poll, no wait.
/// assert!(!aioctx_wait::wait_while(None, || false));
/// ```
///
/// # Panics
/// On an iothread (a thread whose current context is not the main context), when `ctx`
/// is not that thread's own context: waiting between two iothreads can deadlock, so it
/// must go through the main loop. Also whatever `cond` or the polled callbacks panic
/// with; the waiter count is lowered again on the way out.
pub fn wait_while(ctx: Option<&AioContext>, cond: impl FnMut() -> bool) -> bool {
    let target = loop_to_poll(ctx, "wait_while");
    let main = main_context();
    let is_main_loop = std::ptr::eq(target, &**main);
    let lp = ContextLoop(if is_main_loop {
        Arc::clone(main)
    } else {
        target.arc()
    });
    global().wait_while(&lp, is_main_loop, cond)
}

/// The context a waiter on `ctx` polls (QEMU: the two branches of `AIO_WAIT_WHILE`).
fn loop_to_poll<'a>(ctx: Option<&'a AioContext>, what: &str) -> &'a AioContext {
    if let Some(ctx) = ctx
        && ctx.is_home_thread()
    {
        return ctx;
    }
    let main = main_context();
    if !main.is_home_thread()
        && let Some(own) = try_current()
    {
        let thread = std::thread::current();
        let target = match ctx {
            Some(c) => format!("the context `{}`", c.name()),
            None => "the main loop (ctx = None)".to_owned(),
        };
        panic!(
            "aio_wait::{what} called on iothread `{}` (context `{}`) to wait on {target}: an \
             iothread may wait only on its own context. Waiting between two iothreads can \
             deadlock — the other side may be waiting for this thread, which runs no loop of \
             its own while it waits. Wait from the main loop instead.",
            thread.name().unwrap_or("<unnamed>"),
            own.name()
        );
    }
    main
}
