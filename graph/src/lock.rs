//! The process-wide graph lock: the protocol of `state.rs` wired to the real contexts,
//! `aio_wait` and tasks (QEMU: `bdrv_graph_*`, block/graph-lock.c).

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use aioctx_aio::main_context;

use crate::quiesce::{Quiesced, Quiescers};
use crate::state::{AioWaiter, LockState, ReaderCounter, UnlockKick};
use crate::sync::Arc;

/// `aio_wait` from `aioctx_wait`, the real one.
struct MainLoopWait;

impl AioWaiter for MainLoopWait {
    #[inline]
    fn kick(&self) {
        aioctx_wait::kick();
    }

    fn wait_while(&self, cond: &mut dyn FnMut() -> bool) {
        aioctx_wait::wait_while(None, cond);
    }
}

/// A thread's registered reader counter; dropped when the thread exits, it moves the
/// count to the orphaned sum (QEMU: `unregister_aiocontext`, for the thread's context).
struct ThreadCounter(Arc<ReaderCounter>);

impl ThreadCounter {
    fn register() -> Self {
        let c = Arc::new(ReaderCounter::new());
        GRAPH_LOCK.state.register(Arc::clone(&c));
        Self(c)
    }
}

impl Drop for ThreadCounter {
    fn drop(&mut self) {
        // First, so that nothing reaches the counter through the cache once it is gone.
        CACHED.set(std::ptr::null());
        GRAPH_LOCK.state.unregister(&self.0);
    }
}

thread_local! {
    /// This thread's counter (inside `OWNER`'s `Arc`), or null before the thread's
    /// first read lock and after its exit dropped `OWNER`: the read lock's fast path is
    /// one load of this — no `Arc` count, no `RefCell`, no registry lock. `const` and
    /// without a destructor, so it stays readable in every thread-local destructor.
    static CACHED: Cell<*const ReaderCounter> = const { Cell::new(std::ptr::null()) };
    /// Owns this thread's counter and registers it, on the thread's first read lock.
    static OWNER: ThreadCounter = ThreadCounter::register();
}

/// Calls `f` with the calling thread's reader counter. A thread gets one on its first
/// read lock (or unlock), if `may_register()` allows; returns `None` when it has none —
/// not allowed, or the thread is exiting and its counter is gone.
#[inline]
fn with_thread_counter<R>(
    may_register: impl FnOnce() -> bool,
    f: impl FnOnce(&ReaderCounter) -> R,
) -> Option<R> {
    let mut p = CACHED.get();
    if p.is_null() {
        p = first_counter(may_register)?;
    }
    // `p` is non-null, so it points at the counter inside the `Arc` that this thread's
    // `OWNER` holds; `OWNER`'s `Drop` (only at thread exit, never inside `f`) nulls
    // `CACHED` before releasing the `Arc`. Only this thread reads `CACHED`.
    // SAFETY: `p` points at a counter this thread's `OWNER` keeps alive (above).
    Some(f(unsafe { &*p }))
}

#[cold]
#[inline(never)]
fn first_counter(may_register: impl FnOnce() -> bool) -> Option<*const ReaderCounter> {
    if !may_register() {
        return None;
    }
    let p = OWNER.try_with(|o| Arc::as_ptr(&o.0)).ok()?;
    CACHED.set(p);
    Some(p)
}

/// Whether the calling thread runs a context now.
fn runs_a_context() -> bool {
    aioctx_aio::with_current(|ctx| ctx.is_some())
}

static GRAPH_LOCK: GraphLock = GraphLock {
    state: LockState::new(),
    quiescers: Quiescers::new(),
};

/// The block-graph reader/writer lock: any number of readers, in tasks on any context,
/// or one writer on the main loop. There is one per process: [`graph_lock`].
///
/// Readers are cheap: a counter of their own thread (found through a thread-local
/// pointer, alone on its cache line), a compiler fence (a SeqCst fence in symmetric
/// [`FenceMode`](aioctx_wait::FenceMode)) and a load. The writer pays: a `membarrier`
/// per wait in asymmetric mode, and it waits in the main loop until every thread's
/// count is zero.
///
/// ```
/// use aioctx_graph::graph_lock;
/// use aioctx_aio::main_context;
/// let main = main_context();
/// main.make_current(); // this thread runs the main loop
/// let lock = graph_lock();
/// main.block_on(async {
///     let guard = lock.rdlock().await; // fast path: no writer
///     drop(guard);
/// });
/// let writer = lock.wrlock();
/// lock.assert_writable();
/// drop(writer);
/// ```
pub struct GraphLock {
    state: LockState,
    quiescers: Quiescers,
}

/// The process-wide graph lock.
pub fn graph_lock() -> &'static GraphLock {
    &GRAPH_LOCK
}

/// Calls `f` with the calling thread's reader counter, registering it on the thread's
/// first read lock — which must come from a thread that runs a context.
#[inline]
fn with_counter<R>(what: &str, f: impl FnOnce(&ReaderCounter) -> R) -> R {
    let thread = || {
        std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_owned()
    };
    let may_register = || {
        assert!(
            runs_a_context(),
            "GraphLock::{what} called on thread `{}`, which runs no AioContext: take the \
             read lock from a task, or use rdlock_main_loop on the main loop",
            thread()
        );
        true
    };
    with_thread_counter(may_register, f).unwrap_or_else(|| {
        panic!(
            "GraphLock::{what} called on thread `{}` while it exits (from a thread-local \
             destructor), after its reader counter was dropped",
            thread()
        )
    })
}

fn assert_main_loop(what: &str) {
    let main = main_context();
    assert!(
        main.is_home_thread(),
        "GraphLock::{what} called on thread `{}`, but only the main loop (the main \
         context's home thread) may take the write lock",
        std::thread::current().name().unwrap_or("<unnamed>")
    );
    assert!(
        !aioctx_aio::in_task(),
        "GraphLock::{what} called from inside a task: the writer polls the main loop and \
         would deadlock against the task's own context"
    );
}

impl GraphLock {
    /// Chooses what `rdunlock` does about a waiting writer; see [`UnlockKick`].
    pub fn set_unlock_kick(&self, policy: UnlockKick) {
        self.state.set_unlock_kick(policy);
    }

    /// The current unlock policy.
    pub fn unlock_kick(&self) -> UnlockKick {
        self.state.unlock_kick()
    }

    /// The number of read locks ([`ReadGuard`]s) held, summed over every context
    /// (QEMU: `reader_count`); a snapshot. Exactly 0 while the write lock is held. While
    /// no writer holds it, a reader counts from the moment it starts taking the lock —
    /// including one that then finds a writer between its waits and backs off, for the
    /// instant until it has backed off. [`MainLoopGuard`]s are not read locks and are
    /// not counted (see [`rdlock_main_loop`](Self::rdlock_main_loop)).
    pub fn readers(&self) -> u32 {
        self.state.readers()
    }

    /// Whether a writer holds the lock or is between its waits (zero while it polls).
    pub fn has_writer(&self) -> bool {
        self.state.has_writer()
    }

    /// Takes the read lock from a task on any context (QEMU: `bdrv_graph_co_rdlock`).
    /// Fast path: count, fence, no writer — done. Otherwise the task backs off, kicks the
    /// writer, and sleeps until `wrunlock`.
    ///
    /// # Panics
    /// When a thread's first read lock is polled on a thread that runs no context (the
    /// check runs when the thread's counter is registered, off the fast path); when
    /// polled in a thread-local destructor after the thread's counter was dropped.
    pub fn rdlock(&self) -> RdLock<'_> {
        RdLock { lock: self }
    }

    /// Drops a read lock (QEMU: `bdrv_graph_co_rdunlock`): decrement, fence, kick (per the
    /// [`UnlockKick`] policy). Normally called by dropping the [`ReadGuard`]. On a thread
    /// that runs no context (a task's future dropped after its context died), the
    /// decrement goes to the orphaned sum, so it never panics and never leaks the count.
    #[inline]
    fn rdunlock(&self) {
        let counted = with_thread_counter(runs_a_context, |c| {
            self.state.rdunlock(c, &MainLoopWait);
        });
        if counted.is_none() {
            self.state.rdunlock_orphaned(&MainLoopWait);
        }
    }

    /// Takes the write lock on the main loop (QEMU: `bdrv_graph_wrlock`): quiesces the
    /// registered sources so new requests cannot starve it, then polls the main loop
    /// until no reader is left.
    ///
    /// Callbacks run by that poll (bottom halves, tasks on the main context) may take
    /// and drop read locks, main-loop read guards, even a nested write lock — but none
    /// of them may still be alive when the wait ends.
    ///
    /// It waits for every [`ReadGuard`], wherever it is: one held by the calling thread
    /// outside a task (taken with `block_on`) is never dropped, and the call never
    /// returns.
    ///
    /// # Panics
    /// Off the main loop or inside a task; when the write lock or a [`MainLoopGuard`] is
    /// already held; when a callback run by its wait left a write guard or a main-loop
    /// read guard alive. Every panic comes before the lock is taken, so nothing read
    /// under the other guard can be changed.
    pub fn wrlock(&self) -> WriteGuard<'_> {
        assert_main_loop("wrlock");
        self.state.assert_no_main_loop_access("wrlock");
        let quiesced = self.quiescers.begin();
        self.state.wrlock(&MainLoopWait);
        drop(quiesced);
        WriteGuard {
            lock: self,
            drained: None,
            _not_send: PhantomData,
        }
    }

    /// Like [`wrlock`](Self::wrlock), but first waits until every registered source is
    /// idle, and keeps them quiesced until the guard drops
    /// (QEMU: `bdrv_graph_wrlock_drained`).
    ///
    /// # Panics
    /// As [`wrlock`](Self::wrlock).
    pub fn wrlock_drained(&self) -> WriteGuard<'_> {
        assert_main_loop("wrlock_drained");
        self.state.assert_no_main_loop_access("wrlock_drained");
        let quiesced = self.quiescers.begin();
        aioctx_wait::wait_while(None, || !quiesced.all_idle());
        let mut guard = self.wrlock();
        guard.drained = Some(quiesced);
        guard
    }

    fn wrunlock(&self) {
        for waker in self.state.wrunlock() {
            waker.wake();
        }
        // QEMU runs the main context's BHs once here, so that readers woken on the main
        // context make progress before the caller goes on.
        main_context().poll(false);
    }

    /// A read access for main-loop code outside tasks (QEMU:
    /// `bdrv_graph_rdlock_main_loop`): no lock, since the writer runs on the same thread;
    /// it is counted so that [`wrlock`](Self::wrlock) refuses to run while one is alive.
    ///
    /// ```should_panic
    /// use aioctx_graph::{Graph, graph_lock};
    /// aioctx_aio::main_context().make_current();
    /// let graph = Graph::new();
    /// let a = graph.add_node(&mut graph_lock().wrlock(), String::from("a"));
    /// let r = graph_lock().rdlock_main_loop();
    /// let s = graph.get(&r, a).unwrap();
    /// let mut w = graph_lock().wrlock(); // panics: `s` would dangle after the removal
    /// drop(graph.remove_node(&mut w, a));
    /// println!("{s}");
    /// ```
    ///
    /// # Panics
    /// Off the main loop, inside a task, or while the write lock is held (use the
    /// [`WriteGuard`], which also grants reading).
    pub fn rdlock_main_loop(&self) -> MainLoopGuard<'_> {
        assert_main_loop("rdlock_main_loop");
        self.state.rdlock_main_loop();
        MainLoopGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Asserts the graph may be read here: on the main loop, or with a read lock held on
    /// this context (QEMU: `assert_bdrv_graph_readable`).
    ///
    /// # Panics
    /// When neither holds.
    pub fn assert_readable(&self) {
        if main_context().is_home_thread() {
            return;
        }
        assert!(
            self.readers() > 0,
            "graph read without the graph lock: no reader holds it"
        );
    }

    /// Asserts the write lock is held and this is the main loop
    /// (QEMU: `assert_bdrv_graph_writable`).
    ///
    /// # Panics
    /// When not.
    pub fn assert_writable(&self) {
        assert!(
            main_context().is_home_thread() && self.state.writer_held(),
            "graph written without the write lock held on the main loop"
        );
    }

    /// Registers a source of requests that the writer quiesces (QEMU: drain). See
    /// [`Quiesce`](crate::Quiesce).
    pub fn register_quiesce(
        &'static self,
        source: Arc<dyn crate::Quiesce>,
    ) -> crate::quiesce::QuiesceRegistration {
        self.quiescers.register(source)
    }
}

/// The future of [`GraphLock::rdlock`].
#[must_use = "a future does nothing unless awaited"]
pub struct RdLock<'a> {
    lock: &'a GraphLock,
}

impl<'a> Future for RdLock<'a> {
    type Output = ReadGuard<'a>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadGuard<'a>> {
        let lock = self.lock;
        if with_counter("rdlock", |c| {
            lock.state.try_rdlock(c, &MainLoopWait, cx.waker())
        }) {
            Poll::Ready(ReadGuard { lock: self.lock })
        } else {
            Poll::Pending
        }
    }
}

/// A read lock; dropping it is `rdunlock`, counted on whatever context the dropping
/// thread runs then — or, on a thread that runs none (a task's future dropped after its
/// context died), in the orphaned sum: dropping it never panics and never leaks the
/// count.
#[must_use = "dropping the guard releases the read lock at once"]
pub struct ReadGuard<'a> {
    lock: &'a GraphLock,
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.rdunlock();
    }
}

/// The write lock; dropping it is `wrunlock`. Stays on the main loop (not `Send`).
#[must_use = "dropping the guard releases the write lock at once"]
pub struct WriteGuard<'a> {
    lock: &'a GraphLock,
    drained: Option<Quiesced>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.lock.wrunlock();
        // Ends the drained section of `wrlock_drained`, after the unlock as in QEMU.
        drop(self.drained.take());
    }
}

/// The main loop's read access (see [`GraphLock::rdlock_main_loop`]). Stays on the
/// main loop (not `Send`).
#[must_use = "dropping the guard ends the read access at once"]
pub struct MainLoopGuard<'a> {
    lock: &'a GraphLock,
    _not_send: PhantomData<*const ()>,
}

impl Drop for MainLoopGuard<'_> {
    fn drop(&mut self) {
        self.lock.state.rdunlock_main_loop();
    }
}

/// Guards that grant reading the graph.
pub trait ReadAccess: private::Sealed {}
impl ReadAccess for ReadGuard<'_> {}
impl ReadAccess for WriteGuard<'_> {}
impl ReadAccess for MainLoopGuard<'_> {}

mod private {
    pub trait Sealed {}
    impl Sealed for super::ReadGuard<'_> {}
    impl Sealed for super::WriteGuard<'_> {}
    impl Sealed for super::MainLoopGuard<'_> {}
}
