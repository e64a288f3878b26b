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
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use slab::Slab;

use crate::backend::uring::{Completion, Ring};
use crate::bh::{Bh, BhInner, BhList, BhQueue, ContextGone, ONESHOT, SCHEDULED};
use crate::fd::{FdCallback, FdNode};
use crate::notify::NotifyState;
use crate::stats::{Counters, Stats, bump};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::sys;
use crate::timer::{ClockType, Timer, TimerList};

/// A completion callback for a raw ring operation: `(cqe.res, cqe.flags)`.
pub type RawCallback = Box<dyn FnOnce(i32, u32) + Send>;

/// The default ring size.
pub const DEFAULT_RING_ENTRIES: u32 = 128;

/// How long dropping a context waits for cancelled operations before leaking their
/// buffers on purpose.
const DROP_REAP_LIMIT: Duration = Duration::from_secs(5);

/// The part of a context that any thread may touch.
pub(crate) struct Remote {
    notify: NotifyState,
    event: OwnedFd,
    bhs: BhList,
    timers: TimerList,
    fds: Mutex<HashMap<RawFd, Arc<FdNode>>>,
    fd_changes: Mutex<Vec<RawFd>>,
    raw_queue: Mutex<Vec<(squeue::Entry, RawCallback)>>,
    /// `fd_changes` or `raw_queue` may be non-empty.
    has_requests: AtomicBool,
    alive: AtomicBool,
    poll_max_ns: AtomicU64,
    poll_grow: AtomicU64,
    poll_shrink: AtomicU64,
    pub(crate) counters: Counters,
}

impl Remote {
    /// Wakes the home thread if it sleeps (QEMU: `aio_notify`). DESIGN §3.
    pub(crate) fn notify(&self) {
        self.counters.notifies.fetch_add(1, Ordering::Relaxed);
        if self.notify.notify() {
            self.counters.eventfd_writes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = sys::eventfd_write(self.event.as_fd()) {
                panic!("AioContext notify: eventfd write failed: {e}");
            }
        }
    }

    /// Puts `bh` on the pending list with `flags` (BH rule 1) and notifies.
    pub(crate) fn enqueue(&self, bh: &Arc<BhInner>, flags: u32) -> Result<(), ContextGone> {
        if !self.alive.load(Ordering::Relaxed) {
            return Err(ContextGone);
        }
        crate::bh::enqueue(&self.bhs, bh, flags);
        self.notify();
        Ok(())
    }

    pub(crate) fn timers(&self, clock: ClockType) -> &TimerList {
        match clock {
            ClockType::Realtime => &self.timers,
        }
    }

    fn request(&self) {
        // Release: pairs with the Acquire swap in `apply_requests`.
        self.has_requests.store(true, Ordering::Release);
        self.notify();
    }
}

/// What an in-flight ring operation is, keyed by its `user_data`.
enum Op {
    /// The loop's own read of its notify eventfd (DESIGN §3).
    NotifyRead,
    /// A one-shot `POLL_ADD` for an fd handler; holds the handler alive (fd rule 4).
    Poll(Arc<FdNode>),
    /// A `POLL_REMOVE` or `ASYNC_CANCEL` issued by the loop.
    Control,
    /// A user operation.
    Raw(RawCallback),
}

/// The home thread's view of one registered fd.
struct FdHome {
    node: Arc<FdNode>,
    armed: Option<usize>,
}

/// The part of a context only the home thread touches.
struct Home {
    ring: Ring,
    ops: Slab<Op>,
    bhs: BhQueue,
    fds: HashMap<RawFd, FdHome>,
    /// The target of the notify eventfd read; its address is given to the kernel.
    notify_buf: Box<u64>,
    completions: Vec<Completion>,
    poll_ns: u64,
}

impl Home {
    /// Queues `entry` as `op`.
    ///
    /// # Safety
    /// Every buffer and descriptor `entry` names must stay valid until its CQE is reaped;
    /// keeping them inside `op` satisfies this, because `op` is dropped only after its CQE.
    unsafe fn push(&mut self, entry: squeue::Entry, op: Op) -> usize {
        let key = self.ops.insert(op);
        // SAFETY: passed on from this function's contract.
        unsafe { self.ring.push(&entry.user_data(key as u64)) };
        key
    }

    fn arm_notify_read(&mut self, event: RawFd) {
        let entry =
            opcode::Read::new(types::Fd(event), (&raw mut *self.notify_buf).cast(), 8).build();
        // SAFETY: `notify_buf` is a heap box owned by `Home` that is only freed after the
        // read's CQE was reaped (see `AioContext::drop`), and the eventfd lives in
        // `Remote`, which outlives `Home`.
        unsafe { self.push(entry, Op::NotifyRead) };
    }

    fn arm_poll(&mut self, fd: RawFd) {
        let Some(h) = self.fds.get(&fd) else { return };
        if h.armed.is_some() || h.node.is_dead() {
            return;
        }
        let node = Arc::clone(&h.node);
        let entry = opcode::PollAdd::new(types::Fd(fd), node.events()).build();
        // SAFETY: a POLL_ADD names no memory; a descriptor closed meanwhile makes the
        // kernel answer EBADF, which fd rule 5 handles.
        let key = unsafe { self.push(entry, Op::Poll(node)) };
        if let Some(h) = self.fds.get_mut(&fd) {
            h.armed = Some(key);
        }
    }

    fn disarm_poll(&mut self, key: usize) {
        let entry = opcode::PollRemove::new(key as u64).build();
        // SAFETY: a POLL_REMOVE names no memory.
        unsafe { self.push(entry, Op::Control) };
    }
}

/// `Home` behind a `RefCell`, shared only with the home thread.
struct HomeCell(RefCell<Home>);

// SAFETY: the cell is borrowed only after `AioContext::check_home` proved the caller is
// the one home thread, or in `Drop`, which has exclusive access. Hence no two threads
// ever touch the `RefCell` at once.
unsafe impl Sync for HomeCell {}

/// One thread's event loop. See the [crate docs](crate) for an example.
pub struct AioContext {
    remote: Arc<Remote>,
    home: HomeCell,
    owner: AtomicU64,
    owner_label: OnceLock<String>,
    name: String,
    weak_self: Weak<AioContext>,
    locals: crate::local::Slots,
}

/// Builds an [`AioContext`] (QEMU: `aio_context_new` plus the iothread properties).
#[derive(Debug, Clone)]
pub struct AioContextBuilder {
    ring_entries: u32,
    poll: (u64, u64, u64),
    name: Option<String>,
}

impl Default for AioContextBuilder {
    fn default() -> Self {
        Self {
            ring_entries: DEFAULT_RING_ENTRIES,
            poll: (0, 0, 0),
            name: None,
        }
    }
}

impl AioContextBuilder {
    /// The ring's submission queue size, 1..=32768 (default 128).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }

    /// Adaptive busy polling, as [`AioContext::set_poll_params`] (default: off).
    pub fn poll_params(mut self, max_ns: u64, grow: u64, shrink: u64) -> Self {
        self.poll = (max_ns, grow, shrink);
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
    /// An out-of-range ring size (`InvalidInput`), or the `io_uring_setup` / `eventfd`
    /// error with a hint at its cause.
    pub fn build(self) -> io::Result<Arc<AioContext>> {
        let ring = Ring::new(self.ring_entries)?;
        let event = sys::eventfd()?;
        let remote = Arc::new(Remote {
            notify: NotifyState::new(),
            event,
            bhs: BhList::new(),
            timers: TimerList::new(ClockType::Realtime),
            fds: Mutex::new(HashMap::new()),
            fd_changes: Mutex::new(Vec::new()),
            raw_queue: Mutex::new(Vec::new()),
            has_requests: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            poll_max_ns: AtomicU64::new(self.poll.0),
            poll_grow: AtomicU64::new(self.poll.1),
            poll_shrink: AtomicU64::new(self.poll.2),
            counters: Counters::default(),
        });
        let mut home = Home {
            ring,
            ops: Slab::new(),
            bhs: BhQueue::default(),
            fds: HashMap::new(),
            notify_buf: Box::new(0),
            completions: Vec::new(),
            poll_ns: 0,
        };
        home.arm_notify_read(remote.event.as_raw_fd());
        let name = self.name.unwrap_or_else(|| "aio-context".to_owned());
        Ok(Arc::new_cyclic(|weak_self| AioContext {
            remote,
            home: HomeCell(RefCell::new(home)),
            owner: AtomicU64::new(0),
            owner_label: OnceLock::new(),
            name,
            weak_self: weak_self.clone(),
            locals: crate::local::new_slots(),
        }))
    }
}

static NEXT_THREAD_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    static CURRENT: RefCell<Option<Arc<AioContext>>> = const { RefCell::new(None) };
}

fn thread_id() -> u64 {
    THREAD_ID.with(|id| *id)
}

fn thread_label() -> String {
    let t = std::thread::current();
    format!("`{}`", t.name().unwrap_or("<unnamed>"))
}

/// Makes `ctx` the calling thread's current context until the guard drops; the task
/// executor uses it so that [`current`] inside a task is the task's context.
pub(crate) fn enter_current(ctx: &Arc<AioContext>) -> CurrentGuard {
    CurrentGuard(CURRENT.with(|c| c.replace(Some(Arc::clone(ctx)))))
}

/// Restores the previous current context (see [`enter_current`]).
pub(crate) struct CurrentGuard(Option<Arc<AioContext>>);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        // The replaced value is dropped after the borrow ends.
        let _old = CURRENT.with(|c| c.replace(prev));
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
    CURRENT
        .with(|c| c.borrow().clone())
        .or_else(|| MAIN.get().filter(|m| m.is_home_thread()).cloned())
}

/// Like [`try_current`], for code that must run in a context.
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
    /// [`current`] one. Returns the context that was current before.
    ///
    /// # Panics
    /// When another thread is already this context's home.
    pub fn make_current(&self) -> Option<Arc<AioContext>> {
        self.check_home("make_current");
        CURRENT.with(|c| c.replace(Some(self.arc())))
    }

    /// This context's value for `key`, created by `init` on first access from any
    /// thread. Dropped with the context (a "context destroyed" hook for upper layers).
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

    /// A weak reference to this context (tasks and their wakers hold these, so that a
    /// parked task never keeps its context alive).
    pub(crate) fn weak(&self) -> Weak<AioContext> {
        self.weak_self.clone()
    }

    /// Whether the calling thread is this context's home thread.
    pub fn is_home_thread(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == thread_id()
    }

    pub(crate) fn check_home(&self, what: &str) {
        let me = thread_id();
        // Relaxed: the owner id is only compared with the caller's own id; the context's
        // construction was ordered before this call by handing over the `Arc`.
        let owner = self.owner.load(Ordering::Relaxed);
        if owner == me {
            return;
        }
        if owner == 0
            && self
                .owner
                .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
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

    fn home(&self) -> std::cell::RefMut<'_, Home> {
        self.home.0.borrow_mut()
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
        let mut cb = Some(cb);
        let bh = BhInner::new(
            Box::new(move || {
                if let Some(cb) = cb.take() {
                    cb();
                }
            }),
            ONESHOT,
        );
        let _ = self.remote.enqueue(&bh, SCHEDULED);
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
    /// # Errors
    /// `fd` is not an open descriptor (the message names it). Removing an fd that has no
    /// handler is not an error.
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
        let old = {
            let mut fds = lock(&self.remote.fds);
            match node {
                Some(node) => fds.insert(fd, node),
                None => fds.remove(&fd),
            }
        };
        if let Some(old) = old {
            old.kill();
        }
        lock(&self.remote.fd_changes).push(fd);
        self.remote.request();
        Ok(())
    }

    /// Whether `fd` has a handler on this context.
    pub fn has_fd_handler(&self, fd: RawFd) -> bool {
        lock(&self.remote.fds).contains_key(&fd)
    }

    /// Queues a raw io_uring operation; `on_complete` runs on the home thread with the
    /// CQE's `res` and `flags` (QEMU: `aio_add_sqe`). Callable from any thread: from
    /// another thread the entry is handed over and the loop notified. The entry's
    /// `user_data` is replaced by the loop's own. A full submission queue is submitted
    /// and the push retried; completions that overflow the completion queue are kept by
    /// the kernel and flushed by the loop, so `on_complete` runs exactly once per entry.
    /// The safe typed operations ([`read_at`](Self::read_at) and friends) are built on
    /// this.
    ///
    /// If the context is dropped first, the operation is cancelled, its CQE reaped, and
    /// `on_complete` dropped without being called. If the kernel does not answer the
    /// cancellation within 5 s, `on_complete` is leaked (never dropped) rather than
    /// freed while the kernel may still use what it owns.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicI32, Ordering}};
    /// use aioctx_aio::io_uring::opcode;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let res = Arc::new(AtomicI32::new(-1));
    /// let r = Arc::clone(&res);
    /// // SAFETY: a NOP names no memory.
    /// unsafe {
    ///     ctx.submit_raw(opcode::Nop::new().build(), Box::new(move |res, _flags| {
    ///         r.store(res, Ordering::Relaxed);
    ///     }));
    /// }
    /// while res.load(Ordering::Relaxed) == -1 {
    ///     ctx.poll(true);
    /// }
    /// assert_eq!(res.load(Ordering::Relaxed), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Safety
    /// Every buffer, `iovec` array and descriptor that `entry` names must stay valid
    /// (and buffers the kernel writes must not be read or written by anyone else) until
    /// the kernel is done with it — until `on_complete` runs or is dropped, which is
    /// never before the operation's CQE was reaped. Moving the buffers into
    /// `on_complete` is the simple way to meet this. A descriptor closed early is not a
    /// memory hazard: the operation fails with `EBADF` (or acts on whatever file took
    /// the number).
    pub unsafe fn submit_raw(&self, entry: squeue::Entry, on_complete: RawCallback) {
        if self.is_home_thread() {
            // SAFETY: passed on from this function's contract.
            unsafe { self.home().push(entry, Op::Raw(on_complete)) };
        } else {
            lock(&self.remote.raw_queue).push((entry, on_complete));
            self.remote.request();
        }
    }

    /// Sets adaptive busy polling (QEMU: `aio_context_set_poll_params`): before sleeping,
    /// a blocking `poll` spins for up to the current polling time, which starts at 4 µs,
    /// is multiplied by `grow` (0 means 2) while waits stay under `max_ns`, and divided
    /// by `shrink` (0 means reset to 0) when a wait exceeds `max_ns`. `max_ns == 0`
    /// turns polling off (the default).
    pub fn set_poll_params(&self, max_ns: u64, grow: u64, shrink: u64) {
        self.remote.poll_max_ns.store(max_ns, Ordering::Relaxed);
        self.remote.poll_grow.store(grow, Ordering::Relaxed);
        self.remote.poll_shrink.store(shrink, Ordering::Relaxed);
        self.notify();
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

    /// The ring's submission and completion queue sizes (home thread only).
    ///
    /// # Panics
    /// Off the home thread.
    pub fn ring_entries(&self) -> (u32, u32) {
        self.check_home("ring_entries");
        let home = self.home();
        (home.ring.sq_entries(), home.ring.cq_entries())
    }

    /// Runs one iteration of the loop (QEMU: `aio_poll`): applies handler changes, waits
    /// (only if `blocking` and nothing is ready; the earliest timer bounds the wait),
    /// then runs scheduled bottom halves, dispatches completions and fd handlers, and
    /// runs expired timers. Returns whether progress was made: a non-idle BH, a handler,
    /// a completion callback or a timer ran. A bare [`notify`](Self::notify) is not
    /// progress. May be called from inside a callback (nested).
    ///
    /// # Panics
    /// On a thread other than the context's home thread (the first that polled it).
    pub fn poll(&self, blocking: bool) -> bool {
        self.check_home("poll");
        let remote = &*self.remote;
        bump(&remote.counters.polls, 1);
        let max_ns = remote.poll_max_ns.load(Ordering::Relaxed);
        let start = if blocking && max_ns > 0 {
            sys::monotonic_ns()
        } else {
            0
        };
        self.apply_requests();

        let mut timeout = if blocking {
            self.compute_timeout()
        } else {
            Some(Duration::ZERO)
        };
        if max_ns > 0 && timeout != Some(Duration::ZERO) && self.busy_poll(timeout) {
            timeout = Some(Duration::ZERO);
        }
        let raised = timeout != Some(Duration::ZERO);
        let sleep = raised && remote.notify.prepare_sleep();
        {
            let mut home = self.home();
            let before = home.ring.enters;
            if sleep {
                bump(&remote.counters.sleeps, 1);
                home.ring.wait(timeout);
            } else if home.ring.has_unsubmitted() {
                home.ring.submit(0);
            }
            bump(&remote.counters.enters, home.ring.enters - before);
        }
        if raised {
            remote.notify.finish_sleep();
        }
        remote.notify.accept();
        if blocking && max_ns > 0 {
            self.adjust_poll_ns(sys::monotonic_ns() - start, max_ns);
        }

        let mut progress = self.bh_poll();
        progress |= self.dispatch_completions();
        let timers = remote.timers.run_expired();
        bump(&remote.counters.timers_run, timers as u64);
        progress || timers > 0
    }

    /// Applies fd-handler changes and raw operations queued by other threads.
    fn apply_requests(&self) {
        // Acquire: pairs with the Release store in `Remote::request`.
        if !self.remote.has_requests.swap(false, Ordering::Acquire) {
            return;
        }
        let changed = mem::take(&mut *lock(&self.remote.fd_changes));
        for fd in changed {
            let want = lock(&self.remote.fds).get(&fd).cloned();
            let mut home = self.home();
            let home = &mut *home;
            let same = match (home.fds.get(&fd), &want) {
                (Some(h), Some(node)) => Arc::ptr_eq(&h.node, node),
                (None, None) => true,
                _ => false,
            };
            if !same {
                let armed = home.fds.get_mut(&fd).and_then(|h| h.armed.take());
                if let Some(key) = armed {
                    home.disarm_poll(key);
                }
                match want {
                    Some(node) => {
                        home.fds.insert(fd, FdHome { node, armed: None });
                    }
                    None => {
                        home.fds.remove(&fd);
                    }
                }
            }
            home.arm_poll(fd);
        }
        let raws = mem::take(&mut *lock(&self.remote.raw_queue));
        let mut home = self.home();
        for (entry, cb) in raws {
            // SAFETY: `submit_raw`'s caller promised the entry's memory outlives the
            // operation, which ends no earlier than the CQE that drops `cb`.
            unsafe { home.push(entry, Op::Raw(cb)) };
        }
    }

    /// The wait bound: zero when a BH must run, 10 ms for idle BHs, else the earliest
    /// timer, else no limit (QEMU: `aio_compute_timeout`).
    fn compute_timeout(&self) -> Option<Duration> {
        let bh = {
            let mut home = self.home();
            self.remote.bhs.take_all(&mut home.bhs.incoming);
            home.bhs.timeout_ns()
        };
        let timer = self.remote.timers.timeout_ns();
        let ns = match (bh, timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_nanos(ns as u64))
    }

    /// Spins for up to the current polling time, watching for work; returns whether
    /// some arrived (QEMU: `try_poll_mode`).
    fn busy_poll(&self, timeout: Option<Duration>) -> bool {
        let poll_ns = self.home().poll_ns;
        if poll_ns == 0 {
            return false;
        }
        let budget = timeout.map_or(poll_ns, |t| (t.as_nanos() as u64).min(poll_ns));
        let end = sys::monotonic_ns() + budget as i64;
        loop {
            if !self.remote.bhs.is_empty()
                || self.remote.notify.is_notified()
                || self.home().ring.has_completions()
                || self.remote.timers.has_expired()
            {
                return true;
            }
            if sys::monotonic_ns() >= end {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// QEMU's grow/shrink rule (`adjust_polling_time`).
    fn adjust_poll_ns(&self, block_ns: i64, max_ns: u64) {
        let grow = self.remote.poll_grow.load(Ordering::Relaxed);
        let shrink = self.remote.poll_shrink.load(Ordering::Relaxed);
        let mut home = self.home();
        let ns = home.poll_ns;
        let block_ns = block_ns.max(0) as u64;
        home.poll_ns = if block_ns <= ns {
            ns
        } else if block_ns > max_ns {
            ns.checked_div(shrink).unwrap_or(0)
        } else if ns < max_ns && block_ns < max_ns {
            let grown = if ns > 0 {
                ns.saturating_mul(if grow == 0 { 2 } else { grow })
            } else {
                4000
            };
            grown.min(max_ns)
        } else {
            ns
        };
    }

    /// Runs one slice of bottom halves (BH rules 2, 3, 5; QEMU: `aio_bh_poll`).
    fn bh_poll(&self) -> bool {
        {
            let mut home = self.home();
            let home = &mut *home;
            self.remote.bhs.take_all(&mut home.bhs.incoming);
            if !home.bhs.incoming.is_empty() {
                let spare = mem::take(&mut home.bhs.spare);
                let slice = mem::replace(&mut home.bhs.incoming, spare);
                home.bhs.slices.push_back(slice);
            }
        }
        let mut progress = false;
        let mut ran = 0;
        loop {
            let bh = {
                let mut home = self.home();
                loop {
                    let Some(slice) = home.bhs.slices.front_mut() else {
                        break None;
                    };
                    match slice.pop_front() {
                        Some(bh) => break Some(bh),
                        None => {
                            if let Some(empty) = home.bhs.slices.pop_front()
                                && empty.capacity() > home.bhs.spare.capacity()
                            {
                                home.bhs.spare = empty;
                            }
                        }
                    }
                }
            };
            let Some(bh) = bh else { break };
            let (did_run, counts) = bh.run();
            ran += u64::from(did_run);
            progress |= counts;
        }
        bump(&self.remote.counters.bhs_run, ran);
        progress
    }

    /// Takes every CQE and dispatches it; returns whether a callback ran.
    fn dispatch_completions(&self) -> bool {
        let mut batch = {
            let mut home = self.home();
            let mut batch = mem::take(&mut home.completions);
            home.ring.reap(&mut batch);
            batch
        };
        bump(&self.remote.counters.cqes, batch.len() as u64);
        let mut progress = false;
        for c in batch.drain(..) {
            progress |= self.complete(c);
        }
        self.home().completions = batch;
        progress
    }

    fn complete(&self, c: Completion) -> bool {
        let key = c.user_data as usize;
        let op = self.home().ops.try_remove(key);
        match op {
            Some(Op::NotifyRead) => {
                if c.result != -libc::ECANCELED {
                    if c.result < 0 {
                        log::warn!(
                            "{}: notify eventfd read failed: {}",
                            self.name,
                            io::Error::from_raw_os_error(-c.result)
                        );
                    }
                    self.home().arm_notify_read(self.remote.event.as_raw_fd());
                }
                false
            }
            Some(Op::Poll(node)) => self.poll_completed(key, &node, c.result),
            Some(Op::Control) => false,
            Some(Op::Raw(cb)) => {
                cb(c.result, c.flags);
                true
            }
            None => panic!(
                "{}: completion for unknown user_data {} (res {})",
                self.name, c.user_data, c.result
            ),
        }
    }

    /// A `POLL_ADD` completed: dispatch, then re-arm (fd rules 3 and 5).
    fn poll_completed(&self, key: usize, node: &Arc<FdNode>, result: i32) -> bool {
        let fd = node.fd;
        let current = {
            let mut home = self.home();
            match home.fds.get_mut(&fd) {
                Some(h) if h.armed == Some(key) => {
                    h.armed = None;
                    Arc::ptr_eq(&h.node, node)
                }
                _ => false,
            }
        };
        if !current || result == -libc::ECANCELED {
            return false;
        }
        if result < 0 {
            let err = io::Error::from_raw_os_error(-result);
            log::warn!(
                "{}: polling fd {fd} failed ({err}); removing its handler",
                self.name
            );
            let removed = {
                let mut fds = lock(&self.remote.fds);
                match fds.get(&fd) {
                    Some(n) if Arc::ptr_eq(n, node) => fds.remove(&fd),
                    _ => None,
                }
            };
            if removed.is_some() {
                node.kill();
                self.home().fds.remove(&fd);
            }
            return false;
        }
        let ran = node.dispatch(result as u32);
        if ran {
            bump(&self.remote.counters.fd_handlers_run, 1);
        }
        self.home().arm_poll(fd);
        ran
    }
}

impl Drop for AioContext {
    /// Cancels every operation in flight and reaps its CQE before the ring and the
    /// buffers go away; if the kernel does not answer within 5 s, the buffers are leaked
    /// on purpose rather than freed under it.
    fn drop(&mut self) {
        self.remote.alive.store(false, Ordering::Relaxed);
        for (_, node) in lock(&self.remote.fds).drain() {
            node.kill();
        }
        let mut pending = std::collections::VecDeque::new();
        self.remote.bhs.take_all(&mut pending);
        let home = self.home.0.get_mut();
        pending.extend(home.bhs.incoming.drain(..));
        pending.extend(home.bhs.slices.drain(..).flatten());
        drop(pending);

        let keys: Vec<usize> = home
            .ops
            .iter()
            .filter(|(_, op)| !matches!(op, Op::Control))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            let entry = opcode::AsyncCancel::new(key as u64).build();
            // SAFETY: an ASYNC_CANCEL names no memory.
            unsafe { home.push(entry, Op::Control) };
        }
        let deadline = sys::monotonic_ns() + DROP_REAP_LIMIT.as_nanos() as i64;
        let mut batch = Vec::new();
        while !home.ops.is_empty() && sys::monotonic_ns() < deadline {
            home.ring.wait(Some(Duration::from_millis(50)));
            home.ring.reap(&mut batch);
            for c in batch.drain(..) {
                drop(home.ops.try_remove(c.user_data as usize));
            }
        }
        if !home.ops.is_empty() {
            log::error!(
                "{}: {} ring operations did not complete within {:?} of drop; leaking their \
                 buffers instead of freeing them under the kernel",
                self.name,
                home.ops.len(),
                DROP_REAP_LIMIT
            );
            mem::forget(mem::take(&mut home.ops));
            mem::forget(mem::replace(&mut home.notify_buf, Box::new(0)));
        }
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
