//! `AioContext`: one thread's event loop (QEMU: `AioContext`, util/async.c and
//! util/aio-posix.c).
//!
//! A context is shared (`Arc`, `Send + Sync`): any thread may schedule a BH on it,
//! notify it, change its fd handlers, arm its timers or queue ring operations for it.
//! Exactly one thread — its home thread, bound on the first `poll` — runs `poll` and
//! touches the ring. The state every thread may touch lives in [`Remote`]; the state
//! only the home thread touches lives in `Home`, behind a `RefCell` that is never
//! borrowed across a user callback (so callbacks may call `poll` again: nesting).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use crate::backend::uring::setup::{RingFeatures, RingSetup};
use crate::backend::{self, Backend, Driver};
use crate::bh::{Bh, BhInner, BhList, BhQueue, ContextGone};
use crate::completion::RawCallback;
use crate::fd::{FdCallback, FdNode};
use crate::notify::{Notified, NotifyState};
use crate::op::Sqe;
use crate::poll_params::PollParams;
use crate::pool;
use crate::stats::{Counters, Stats};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::sys;
use crate::timer::{ClockType, Timer, TimerList};

pub use crate::backend::uring::setup::DEFAULT_RING_ENTRIES;

/// How long dropping a context waits for cancelled operations (ring CQEs, running
/// worker-pool jobs) before leaking their buffers on purpose or moving on.
pub(crate) const DROP_REAP_LIMIT: Duration = Duration::from_secs(5);

/// The part of a context that any thread may touch.
pub(crate) struct Remote {
    pub(crate) notify: NotifyState,
    event: OwnedFd,
    pub(crate) bhs: BhList,
    pub(crate) timers: TimerList,
    pub(crate) fds: Mutex<HashMap<RawFd, Arc<FdNode>>>,
    /// Set (under the `fds` lock) once the context is shut down (see `shutdown.rs`):
    /// new fd handlers are refused, and so is ring work submitted on the home thread
    /// (a completion that the shutdown itself runs may submit more).
    pub(crate) closed: AtomicBool,
    pub(crate) fd_changes: Mutex<Vec<RawFd>>,
    /// Raw operations handed over by other threads; `None` once the context's drop
    /// has begun (later hand-overs are refused).
    pub(crate) raw_queue: Mutex<Option<Vec<(Sqe, RawCallback)>>>,
    /// `fd_changes` or `raw_queue` may be non-empty.
    pub(crate) has_requests: AtomicBool,
    pub(crate) poll_max_ns: AtomicU64,
    pub(crate) poll_grow: AtomicU64,
    pub(crate) poll_shrink: AtomicU64,
    /// This context's share of the worker pool (epoll back end only).
    pub(crate) pool: Option<Arc<pool::Owner>>,
    pub(crate) counters: Counters,
}

impl Remote {
    /// Wakes the home thread if it sleeps (QEMU: `aio_notify`). See `notify.rs` for the protocol and its proof.
    pub(crate) fn notify(&self) {
        match self.notify.notify() {
            // The home thread notified itself: no RMW at all ([N5] (`notify.rs`)).
            Notified::Home => crate::stats::bump(&self.counters.home_notifies, 1),
            Notified::Awake => {
                self.counters.notifies.fetch_add(1, Ordering::Relaxed);
            }
            Notified::Asleep => {
                self.counters.notifies.fetch_add(1, Ordering::Relaxed);
                self.counters.eventfd_writes.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = sys::eventfd_write(self.event.as_fd()) {
                    panic!("AioContext notify: eventfd write failed: {e}");
                }
            }
        }
    }

    /// Puts `bh` on the pending list with `flags` ([BH1] (`bh.rs`)) and notifies. Refused
    /// once the context's drop closed the list: a BH is either on a list that the drop
    /// drains (and frees) or refused, never left on a dead list.
    pub(crate) fn enqueue(&self, bh: &Arc<BhInner>, flags: u32) -> Result<(), ContextGone> {
        if !crate::bh::enqueue(&self.bhs, bh, flags) {
            // It can never run: free its callback now ([BH8] (`bh.rs`)).
            bh.kill();
            return Err(ContextGone);
        }
        self.notify();
        Ok(())
    }

    /// Runs `cb` once on the home thread at the next `poll`; dropped unrun when the
    /// context is gone (QEMU: `aio_bh_schedule_oneshot`).
    pub(crate) fn schedule_oneshot(&self, cb: impl FnOnce() + Send + 'static) {
        self.schedule_oneshot_in(None, cb);
    }

    pub(crate) fn timers(&self, clock: ClockType) -> &TimerList {
        match clock {
            ClockType::Realtime => &self.timers,
        }
    }

    pub(crate) fn request(&self) {
        // Release: pairs with the Acquire swap in `apply_requests`.
        self.has_requests.store(true, Ordering::Release);
        self.notify();
    }
}

/// The part of a context only the home thread touches.
pub(crate) struct Home {
    pub(crate) driver: Driver,
    pub(crate) bhs: BhQueue,
    pub(crate) poll_ns: u64,
}

/// `Home` behind a `RefCell`, shared only with the home thread.
struct HomeCell(RefCell<Home>);

// SAFETY: the cell is borrowed only after `AioContext::check_home` proved the caller is
// the one home thread, or in `Drop`, which has exclusive access. Hence no two threads
// ever touch the `RefCell` at once.
unsafe impl Sync for HomeCell {}

/// One thread's event loop. See the [crate docs](crate) for an example.
pub struct AioContext {
    pub(crate) remote: Arc<Remote>,
    home: HomeCell,
    pub(crate) backend: Backend,
    fallback: Option<String>,
    /// The ring's SQ and CQ sizes, fixed at creation (`(0, 0)` on epoll).
    entries: (u32, u32),
    /// The ring's setup flags, fixed at creation (none on epoll).
    features: RingFeatures,
    owner_label: OnceLock<String>,
    name: String,
    weak_self: Weak<AioContext>,
    locals: crate::local::Slots,
}

/// Builds an [`AioContext`] (QEMU: `aio_context_new` plus the iothread properties).
///
/// The ring's setup flags: each one the caller turns on is required (a kernel that
/// refuses the setup makes [`build`](Self::build) fail with a [`RingSetupError`] that
/// names the flags and carries the errno); those of [`RingFeatures::DEFAULT`] are on
/// unless turned off, and dropped again where the kernel refuses them.
/// [`AioContext::ring_features`] says which are on.
///
/// ```
/// use aioctx_aio::{AioContext, RingFeatures};
/// let ctx = AioContext::builder().ring_entries(64).cq_entries(256).single_issuer(true).build()?;
/// if ctx.backend() == aioctx_aio::Backend::IoUring {
///     assert!(ctx.ring_features().contains(RingFeatures::SINGLE_ISSUER));
///     assert_eq!(ctx.ring_entries(), (64, 256));
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// [`RingSetupError`]: crate::RingSetupError
#[derive(Debug, Clone)]
pub struct AioContextBuilder {
    ring: RingSetup,
    poll: PollParams,
    name: Option<String>,
    backend: Backend,
    /// The CPU an `IoThread` running this context pins its thread to.
    pub(crate) iothread_cpu: Option<usize>,
}

impl Default for AioContextBuilder {
    fn default() -> Self {
        Self {
            ring: RingSetup::default(),
            poll: PollParams::OFF,
            name: None,
            backend: Backend::Auto,
            iothread_cpu: None,
        }
    }
}

impl AioContextBuilder {
    /// Which back end to run (default [`Backend::Auto`]: io_uring, or epoll where
    /// io_uring is unavailable; the `AIOCTX_BACKEND` environment variable overrides
    /// `Auto` only).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The ring's submission queue size, 1..=32768 (default 128). Checked on every
    /// back end; epoll has no ring and ignores the value.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring.sq = entries;
        self
    }

    /// The ring's completion queue size, from the SQ size up to 65536 (default: twice
    /// the SQ size; the kernel rounds up to a power of two). Checked on every back end.
    pub fn cq_entries(mut self, entries: u32) -> Self {
        self.ring.cq = Some(entries);
        self
    }

    /// `IORING_SETUP_SQPOLL`: a kernel thread takes submissions off the ring and sleeps
    /// after `idle` without any (then the next submit wakes it with one enter). Costs
    /// a CPU while busy; `COOP_TASKRUN`, `TASKRUN_FLAG` and `DEFER_TASKRUN` do not apply.
    ///
    /// Submissions, cancels included, then reach the kernel when its thread takes them,
    /// not during the loop's own enter: the cancel of a dropped I/O future is no longer
    /// applied before the drop returns, so data written right after dropping a pending
    /// read may still be taken by that read (the I/O docs' window for a drop made off
    /// the home thread applies to every drop).
    pub fn sqpoll(mut self, idle: Duration) -> Self {
        self.ring.sqpoll_idle = Some(idle);
        self
    }

    /// Pins `SQPOLL`'s kernel thread to `cpu` (`IORING_SETUP_SQ_AFF`); needs
    /// [`sqpoll`](Self::sqpoll). The kernel checks the CPU (`EINVAL` if offline or out
    /// of the process's set).
    pub fn sqpoll_cpu(mut self, cpu: u32) -> Self {
        self.ring.sqpoll_cpu = Some(cpu);
        self
    }

    /// `IORING_SETUP_IOPOLL`: refused when asked for. A polled ring cannot complete the
    /// notify eventfd read and fd-handler polls this loop keeps on its ring, so the loop
    /// could never be woken; `build` says so (`InvalidInput`). O_DIRECT reads run on
    /// the default ring, completed by interrupt.
    pub fn iopoll(mut self, on: bool) -> Self {
        self.ring.set(RingFeatures::IOPOLL, on);
        self
    }

    /// `IORING_SETUP_SINGLE_ISSUER`: only the home thread submits (it does anyway).
    /// The ring is bound to the first thread that enters it — the home thread, or the
    /// one that drops a never-polled context — and a context dropped on another thread
    /// than that one leaks what it still has in flight instead of reaping it.
    pub fn single_issuer(mut self, on: bool) -> Self {
        self.ring.set(RingFeatures::SINGLE_ISSUER, on);
        self
    }

    /// `IORING_SETUP_DEFER_TASKRUN`: completions are posted only when the home thread
    /// enters the kernel to wait or look; implies `SINGLE_ISSUER` and `TASKRUN_FLAG`
    /// unless they are turned off (without `TASKRUN_FLAG` every non-blocking poll costs
    /// an `io_uring_enter`).
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.ring.set(RingFeatures::DEFER_TASKRUN, on);
        self
    }

    /// `IORING_SETUP_COOP_TASKRUN`: the kernel does not interrupt the home thread to post
    /// a completion; implies `TASKRUN_FLAG` unless it is turned off.
    pub fn coop_taskrun(mut self, on: bool) -> Self {
        self.ring.set(RingFeatures::COOP_TASKRUN, on);
        self
    }

    /// `IORING_SETUP_TASKRUN_FLAG`: the kernel flags completion work it holds, so that a
    /// non-blocking poll enters the kernel only then. Needs `COOP_TASKRUN` or
    /// `DEFER_TASKRUN` (the kernel refuses it alone).
    pub fn taskrun_flag(mut self, on: bool) -> Self {
        self.ring.set(RingFeatures::TASKRUN_FLAG, on);
        self
    }

    /// Pins the thread of an [`IoThread`](crate::IoThread) started with this builder to
    /// `cpu` (`sched_setaffinity`); contexts polled by the caller's own threads ignore it.
    pub fn iothread_cpu(mut self, cpu: usize) -> Self {
        self.iothread_cpu = Some(cpu);
        self
    }

    /// Adaptive busy polling, as [`AioContext::set_poll_params`] (default: off).
    pub fn poll_params(mut self, params: PollParams) -> Self {
        self.poll = params;
        self
    }

    /// A name for messages (default: `aio-context`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Creates the context.
    ///
    /// # Errors
    /// An out-of-range ring or CQ size, `IOPOLL`, or an SQ thread CPU without `SQPOLL`
    /// (`InvalidInput`, on every back end); setup flags asked for that the kernel
    /// refuses (a [`RingSetupError`](crate::RingSetupError) inside the error, with the
    /// errno's kind; `Auto` does not fall back to epoll for it); an invalid `AIOCTX_BACKEND`
    /// (`InvalidInput`, naming the value and the valid ones) or `AIOCTX_RING_SETUP`
    /// ([`RING_SETUP_ENV`](crate::RING_SETUP_ENV)); io_uring unavailable while
    /// forced by [`Backend::IoUring`] or `AIOCTX_BACKEND=io_uring` (the
    /// `io_uring_setup` error, its likely cause and how to use epoll instead); any
    /// other `io_uring_setup` error (e.g. `ENOMEM` under a small `RLIMIT_MEMLOCK`, with
    /// a hint); the `eventfd` / `epoll_create1` error.
    pub fn build(self) -> io::Result<Arc<AioContext>> {
        let ring = self.ring.with_env()?;
        let event = sys::eventfd()?;
        let (driver, fallback) = backend::open(self.backend, &ring, event.as_raw_fd())?;
        let pool = match driver {
            Driver::Epoll(_) => Some(pool::Owner::new()?),
            Driver::Uring(_) => None,
        };
        let backend = driver.backend();
        let entries = driver.ring_entries();
        let features = match &driver {
            Driver::Uring(d) => d.ring().features(),
            Driver::Epoll(_) => RingFeatures::NONE,
        };
        let remote = Arc::new(Remote {
            notify: NotifyState::new(),
            event,
            bhs: BhList::new(),
            timers: TimerList::new(ClockType::Realtime),
            fds: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            fd_changes: Mutex::new(Vec::new()),
            raw_queue: Mutex::new(Some(Vec::new())),
            has_requests: AtomicBool::new(false),
            poll_max_ns: AtomicU64::new(self.poll.to_qemu().0),
            poll_grow: AtomicU64::new(self.poll.to_qemu().1),
            poll_shrink: AtomicU64::new(self.poll.to_qemu().2),
            pool,
            counters: Counters::default(),
        });
        let home = Home {
            driver,
            bhs: BhQueue::default(),
            poll_ns: 0,
        };
        let name = self.name.unwrap_or_else(|| "aio-context".to_owned());
        Ok(Arc::new_cyclic(|weak_self| AioContext {
            remote,
            home: HomeCell(RefCell::new(home)),
            backend,
            fallback,
            entries,
            features,
            owner_label: OnceLock::new(),
            name,
            weak_self: weak_self.clone(),
            locals: crate::local::new_slots(),
        }))
    }
}

pub(crate) use crate::notify::thread_id;

pub(crate) fn thread_label() -> String {
    let t = std::thread::current();
    format!("`{}`", t.name().unwrap_or("<unnamed>"))
}

impl AioContext {
    /// A context with default settings.
    ///
    /// # Errors
    /// See [`AioContextBuilder::build`].
    pub fn new() -> io::Result<Arc<Self>> {
        Self::builder().build()
    }

    /// A builder for ring size, polling and name.
    pub fn builder() -> AioContextBuilder {
        AioContextBuilder::default()
    }

    /// The context's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An owning handle to this context.
    pub fn arc(&self) -> Arc<Self> {
        self.weak_self
            .upgrade()
            .expect("an AioContext is always owned by an Arc while borrowed")
    }

    /// Binds the calling thread as home (if unbound) and makes this context the thread's
    /// [`current`](crate::current) one. Returns the context that was current before.
    ///
    /// # Panics
    /// When another thread is already this context's home, inside a
    /// [`with_current`](crate::with_current) closure (which borrows the context this
    /// would replace), or inside a spawned task ([`in_task`](crate::in_task): a task
    /// runs with its own context current, and so do the tasks polled after it).
    pub fn make_current(&self) -> Option<Arc<AioContext>> {
        self.check_home("make_current");
        crate::current::replace_current(self.arc())
    }

    /// This context's value for `key`, created by `init` on first access from any
    /// thread (a thread that asks while another creates it waits for that value).
    /// Dropped with the context (a "context destroyed" hook for upper layers), and only
    /// then: a value that owns an `Arc` of this context (directly, or through a callback
    /// or task it holds) is a cycle that keeps both alive for good — hold a `Weak`
    /// instead, as the task run queue does.
    ///
    /// # Panics
    /// When `init` asks for the same `key` of this context (re-entrant creation), and
    /// when `init` panics (the slot stays empty; a later call creates it again).
    pub fn local<T: Send + Sync + 'static>(
        &self,
        key: &crate::ContextLocal<T>,
        init: impl FnOnce() -> T,
    ) -> &T {
        self.locals[key.index()]
            .get_or_init(|| Box::new(init()))
            .downcast_ref::<T>()
            .expect("a ContextLocal slot holds the type of its key")
    }

    /// This context's value for `key` if it was created (never creates it).
    pub(crate) fn local_if_set<T: Send + Sync + 'static>(
        &self,
        key: &crate::ContextLocal<T>,
    ) -> Option<&T> {
        self.locals[key.index()].get()?.downcast_ref::<T>()
    }

    /// A weak reference to this context (tasks and their wakers hold these, so that a
    /// parked task never keeps its context alive).
    pub(crate) fn weak(&self) -> Weak<AioContext> {
        self.weak_self.clone()
    }

    /// Whether the calling thread is this context's home thread.
    pub fn is_home_thread(&self) -> bool {
        self.remote.notify.is_home()
    }

    /// Binds the calling thread as home if no thread is, else panics unless it is the
    /// home thread. Only for what must run on the home thread (`poll`, `block_on`,
    /// `make_current`): a getter never binds.
    #[inline]
    pub(crate) fn check_home(&self, what: &str) {
        if self.remote.notify.is_home() {
            return;
        }
        self.bind_or_panic(what);
    }

    /// The cold part of [`check_home`](Self::check_home).
    #[cold]
    #[inline(never)]
    fn bind_or_panic(&self, what: &str) {
        // The home id lives in the notify state, which decides the home-thread fast
        // path from it ([N6] (`notify.rs`)).
        if self.remote.notify.bind_home() == thread_id() {
            let _ = self.owner_label.set(thread_label());
            return;
        }
        let home = self
            .owner_label
            .get()
            .cloned()
            .unwrap_or_else(|| "another thread".to_owned());
        panic!(
            "AioContext::{what} called from thread {}, but this context (`{}`) belongs to {home}",
            thread_label(),
            self.name
        );
    }

    pub(crate) fn home(&self) -> std::cell::RefMut<'_, Home> {
        self.home.0.borrow_mut()
    }

    /// The home state if it is not borrowed (home thread only, like `home`: the caller
    /// checked `check_home` or `notify.is_home()`).
    pub(crate) fn try_home(&self) -> Option<std::cell::RefMut<'_, Home>> {
        self.home.0.try_borrow_mut().ok()
    }

    /// Wakes the home thread if it sleeps (QEMU: `aio_notify`). Costs no syscall when
    /// the loop is awake, and one eventfd write per sleep however many notifies arrive.
    /// A notify alone is not progress for [`poll`](Self::poll).
    pub fn notify(&self) {
        self.remote.notify();
    }

    /// A new bottom half (QEMU: `aio_bh_new`). See [`Bh`].
    pub fn bh_new(&self, cb: impl FnMut() + Send + 'static) -> Bh {
        Bh::new(Arc::clone(&self.remote), Box::new(cb))
    }

    /// Runs `cb` once on the home thread, at the next `poll`
    /// (QEMU: `aio_bh_schedule_oneshot`).
    pub fn schedule_oneshot(&self, cb: impl FnOnce() + Send + 'static) {
        // [BH10] (`bh.rs`): on the home thread, outside a borrow of its state, refill a
        // spent oneshot instead of allocating one.
        let spare = if self.remote.notify.is_home() {
            self.try_home().and_then(|mut home| home.bhs.spare.pop())
        } else {
            None
        };
        self.remote.schedule_oneshot_in(spare, cb);
    }

    /// A new, disarmed timer on `clock` (QEMU: `aio_timer_new`). See [`Timer`].
    pub fn timer_new(&self, clock: ClockType, cb: impl FnMut() + Send + 'static) -> Timer {
        Timer::new(Arc::clone(&self.remote), clock, Box::new(cb))
    }

    /// Sets, replaces or (with both callbacks `None`) removes the handler of `fd`
    /// (QEMU: `aio_set_fd_handler`). Callable from any thread; the home thread applies
    /// the change at its next `poll`, but a removed or replaced handler's callbacks never
    /// run again once this returns. `io_read` runs while `fd` is readable (or hung up),
    /// `io_write` while it is writable: level-triggered.
    ///
    /// A callback may own an `Arc` of this context (or anything that does): that cycle
    /// lasts until the handler is removed, or the context's [`IoThread`] stops, which
    /// frees every callback of the context. On a context without an `IoThread`, remove
    /// the handler or have the callback hold a `Weak`. The same holds for BHs and timers.
    ///
    /// # Errors
    /// `fd` is not an open descriptor (the message names it). `BrokenPipe` when adding a
    /// handler to a context whose `IoThread` stopped (nothing will poll it again); the
    /// callbacks are dropped. Removing an fd that has no handler is not an error.
    ///
    /// [`IoThread`]: crate::IoThread
    pub fn set_fd_handler(
        &self,
        fd: RawFd,
        io_read: Option<FdCallback>,
        io_write: Option<FdCallback>,
    ) -> io::Result<()> {
        let node = if io_read.is_some() || io_write.is_some() {
            sys::check_fd(fd).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("set_fd_handler: fd {fd} is not an open file descriptor: {e}"),
                )
            })?;
            Some(Arc::new(FdNode::new(fd, io_read, io_write)))
        } else {
            None
        };
        let (old, refused) = {
            let mut fds = lock(&self.remote.fds);
            // Relaxed: written under this lock.
            if self.remote.closed.load(Ordering::Relaxed) {
                (None, node)
            } else {
                let old = match node {
                    Some(node) => fds.insert(fd, node),
                    None => fds.remove(&fd),
                };
                (old, None)
            }
        };
        if let Some(old) = old {
            old.kill();
        }
        if let Some(refused) = refused {
            refused.kill();
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "set_fd_handler: fd {fd}: context `{}` is closed (dropped, or its                      IoThread stopped); nothing will ever poll it",
                    self.name
                ),
            ));
        }
        lock(&self.remote.fd_changes).push(fd);
        self.remote.request();
        Ok(())
    }

    /// Whether `fd` has a handler on this context.
    pub fn has_fd_handler(&self, fd: RawFd) -> bool {
        lock(&self.remote.fds).contains_key(&fd)
    }

    /// Which back end runs this context: [`Backend::IoUring`] or [`Backend::Epoll`]
    /// (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why [`Backend::Auto`] fell back to epoll (the io_uring setup error), or `None`
    /// when it did not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Sets adaptive busy polling (QEMU: `aio_context_set_poll_params`); see
    /// [`PollParams`]. Callable from any thread; the loop uses them from its next poll.
    pub fn set_poll_params(&self, params: PollParams) {
        let (max_ns, grow, shrink) = params.to_qemu();
        self.remote.poll_max_ns.store(max_ns, Ordering::Relaxed);
        self.remote.poll_grow.store(grow, Ordering::Relaxed);
        self.remote.poll_shrink.store(shrink, Ordering::Relaxed);
        self.notify();
    }

    /// The busy-polling parameters in force.
    pub fn poll_params(&self) -> PollParams {
        PollParams::from_qemu(
            self.remote.poll_max_ns.load(Ordering::Relaxed),
            self.remote.poll_grow.load(Ordering::Relaxed),
            self.remote.poll_shrink.load(Ordering::Relaxed),
        )
    }

    /// The current busy-polling time in nanoseconds (home thread only; 0 elsewhere).
    pub fn poll_ns(&self) -> u64 {
        if self.is_home_thread() {
            self.home().poll_ns
        } else {
            0
        }
    }

    /// Whether the home thread sleeps in a blocking wait, or is about to: a snapshot for
    /// diagnostics (a watchdog's report), never for synchronization.
    pub fn is_sleeping(&self) -> bool {
        self.remote.notify.is_sleeping()
    }

    /// What the loop has counted so far.
    pub fn stats(&self) -> Stats {
        self.remote.counters.snapshot()
    }

    /// The ring's submission and completion queue sizes; `(0, 0)` on the epoll back
    /// end, which has no ring. Fixed at creation: callable from any thread, and, like
    /// every getter, it never binds the calling thread as home (only [`poll`](Self::poll)
    /// and what must run on the home thread do).
    pub fn ring_entries(&self) -> (u32, u32) {
        self.entries
    }

    /// The setup flags the ring runs with (see [`AioContextBuilder`]): those asked for,
    /// and the defaults the kernel accepted; none on the epoll back end. Fixed at
    /// creation; callable from any thread.
    pub fn ring_features(&self) -> RingFeatures {
        self.features
    }
}

impl Drop for AioContext {
    /// Cancels every operation in flight and waits for it before the buffers go away:
    /// ring operations are cancelled and their CQEs reaped, then their callbacks run
    /// with those CQEs, on this thread — the real result where the operation completed
    /// (if the kernel does not answer within 5 s, their buffers are leaked on purpose
    /// rather than freed under it); on epoll, worker-pool jobs are taken off the queue
    /// and running ones waited for (they own their buffers, so nothing is freed under a
    /// worker), and a syscall that ran reports its real result. Unfinished tasks are
    /// cancelled first (their futures dropped on this thread). The callbacks of every
    /// bottom half and timer of the context (pending, armed or not) and of every fd
    /// handler are freed unrun here, also those that own their own handle; from the
    /// moment the drop begins `Bh::try_schedule` and `Timer::try_modify` report
    /// [`ContextGone`], and the handles stay usable but inert. An [`IoThread`] does all
    /// of this on its own thread when it stops (see `shutdown.rs`); the drop then finds
    /// little left to do.
    ///
    /// [`IoThread`]: crate::IoThread
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl fmt::Debug for AioContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AioContext")
            .field("name", &self.name)
            .field("home", &self.owner_label.get())
            .finish_non_exhaustive()
    }
}

static_assertions::assert_impl_all!(AioContext: Send, Sync);
