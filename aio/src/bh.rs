//! Bottom halves: callbacks scheduled from any thread, run by the home thread's `poll`.
//!
//! QEMU: `QEMUBH`, `aio_bh_new`, `qemu_bh_schedule`, `aio_bh_poll` (util/async.c).
//!
//! Each BH has a flag word (the bits below) and sits on the context's pending list at
//! most once: the `PENDING` bit says it is there. The rules:
//!
//! [BH1] `schedule` sets `PENDING | SCHEDULED` with one `fetch_or`; only the caller that
//!    turned `PENDING` on pushes the BH (so it is on the list at most once), then every
//!    caller notifies the context.
//! [BH2] The list is a lock-free stack; `poll` takes the whole stack at once, reverses it
//!    (FIFO by the moment each BH became pending) and appends it to the home thread's
//!    queue: that is the poll's *slice*. A `poll` takes the list only at its start and
//!    runs the queue from its front until it is empty: a BH scheduled while a slice
//!    runs — also by itself — lands on the list and waits for the next `poll`.
//! [BH3] Running a BH clears `PENDING | SCHEDULED | IDLE` with one `fetch_and` and calls the
//!    callback only if `SCHEDULED` was set and `DELETED` was not.
//! [BH4] `cancel` clears only `SCHEDULED`: the BH stays where it is, and scheduling it again
//!    before the next `poll` keeps its old place, as in QEMU.
//! [BH5] A nested `poll` (from inside a BH) runs the slices of its parents too, oldest
//!    first — they are ahead of its own in the one queue — so a BH that waits for
//!    another BH of the same slice cannot deadlock.
//! [BH6] Dropping the handle (`delete`) kills the callback: it never runs again, also when
//!    the drop happens inside the callback itself (see `callback.rs`).
//! [BH7] A callback never runs re-entrantly. A BH that is scheduled again while its callback
//!    runs, and that a nested `poll` inside that callback reaches, is marked `DEFERRED`
//!    (remembering whether it was idle) instead of run; when the callback returns, the
//!    outer run puts it back on the list, so it runs at the first `poll` after its
//!    callback returned and no schedule is lost. While deferred it is on no list, so
//!    nested blocking polls inside the callback still sleep rather than spin on it.
//! [BH9] A callback that panics finishes its run all the same while the panic unwinds: a
//!    schedule deferred by [BH7] goes back on the list, a oneshot is freed, and the BHs
//!    behind it in the slice stay there for the next `poll`. No schedule is lost to a
//!    panic.
//! [BH8] The context's drop closes the list (its head becomes a sentinel): a push that
//!    lost the race is refused, so a BH is either on the list the drop drains, or its
//!    schedule reports `ContextGone`. Closing also kills the callback of every live
//!    `Bh` of the context, pending or not (the list keeps a set of them: `Bh::new`
//!    adds one, its drop removes it), and a refused schedule kills the callback too:
//!    none can ever run again, and a callback that owns its own `Bh` (a cycle) is freed.
//! [BH10] A oneshot BH that ran on the home thread is spent: its callback was freed by
//!    its run ([BH6]) and the home thread's queue held its last reference. The home
//!    thread keeps a few spent oneshots (`BhQueue::spare`), and a oneshot scheduled on
//!    the home thread refills one (flags, link and a fresh callback cell) instead of
//!    allocating a new one: one allocation per oneshot (its closure's box) instead of
//!    two. The refill goes through `Arc::get_mut`, which proves that no other reference
//!    to the spent BH exists (a oneshot has no handle, strong or weak), so nobody can
//!    observe the reuse; one that fails that check is simply not reused.
//! [BH11] Only the home thread writes a oneshot's flags after its creation: it has no
//!    handle, so nobody can schedule, cancel or delete it, and its push published the
//!    flags and the closure ([BH2]: the push's Release CAS, `take_all`'s Acquire swap).
//!    Its run therefore clears `PENDING | SCHEDULED` with a plain load and store instead
//!    of [BH3]'s `fetch_and`, and runs the callback once ([CC5] (`callback.rs`): the run
//!    frees it with one RMW instead of [BH6]'s kill and the cell's put-back).

mod bh_ref;
mod queue;

pub use bh_ref::BhRef;
pub(crate) use queue::BhQueue;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ptr;

use crate::callback::CallbackCell;
use crate::context::Remote;
use crate::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// On the pending list.
pub(crate) const PENDING: u32 = 1 << 0;
/// Should run on the next pass.
pub(crate) const SCHEDULED: u32 = 1 << 1;
/// Freed after it runs once.
pub(crate) const ONESHOT: u32 = 1 << 2;
/// Deleted: never runs again.
pub(crate) const DELETED: u32 = 1 << 3;
/// Idle: runs within 10 ms and does not count as progress.
pub(crate) const IDLE: u32 = 1 << 4;
/// Reached by a nested poll while its callback ran further up the stack ([BH7]).
const DEFERRED: u32 = 1 << 5;
/// The deferred schedule was an idle one.
const DEFERRED_IDLE: u32 = 1 << 6;

type Callback = dyn FnMut() + Send;

/// The shared part of a bottom half.
pub(crate) struct BhInner {
    flags: AtomicU32,
    next: AtomicPtr<BhInner>,
    cb: CallbackCell<Callback>,
}

/// What [`BhInner::run`] did with a BH taken off the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BhRun {
    /// Not run: not scheduled, deleted ([BH3]), or deferred because its callback is
    /// running further up the stack ([BH7]).
    Skipped,
    /// Ran, scheduled as idle (`schedule_idle`): not progress for `poll`.
    RanIdle,
    /// Ran: progress for `poll`.
    Ran,
}

impl BhRun {
    /// Whether the callback ran.
    pub(crate) fn ran(self) -> bool {
        self != Self::Skipped
    }

    /// Whether the run counts as progress of the `poll` (QEMU: an idle BH does not).
    pub(crate) fn progress(self) -> bool {
        self == Self::Ran
    }
}

impl BhInner {
    pub(crate) fn new(cb: Box<Callback>, flags: u32) -> Arc<Self> {
        Arc::new(Self {
            flags: AtomicU32::new(flags),
            next: AtomicPtr::new(ptr::null_mut()),
            cb: CallbackCell::new(cb),
        })
    }

    /// Whether the BH would run (scheduled and not deleted), and whether that run counts
    /// as idle. Used to compute the poll timeout.
    pub(crate) fn wants_run(&self) -> Option<bool> {
        let flags = self.flags.load(Ordering::Relaxed);
        (flags & (SCHEDULED | DELETED) == SCHEDULED).then_some(flags & IDLE != 0)
    }

    /// Runs the BH if [BH3] allows, and says whether it ran and whether that counts as
    /// progress. A BH whose callback is running already ([BH7]) goes back on `list`.
    pub(crate) fn run(self: &Arc<Self>, list: &BhList) -> BhRun {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & ONESHOT != 0 {
            return self.run_oneshot(flags);
        }
        // Acquire: pairs with the Release `fetch_or` in `Remote::enqueue`, so what the
        // scheduler wrote before scheduling is visible to the callback.
        let flags = self
            .flags
            .fetch_and(!(PENDING | SCHEDULED | IDLE), Ordering::Acquire);
        if flags & (SCHEDULED | DELETED) != SCHEDULED {
            return BhRun::Skipped;
        }
        /// Finishes a run on return and on unwind alike ([BH7] and [BH9]; a oneshot is
        /// freed by `run_once` instead, [BH11]).
        struct AfterRun<'a> {
            bh: &'a Arc<BhInner>,
            list: &'a BhList,
        }
        impl Drop for AfterRun<'_> {
            fn drop(&mut self) {
                // [BH7]: a nested poll inside the callback deferred a schedule of this BH.
                // Only this (home) thread raises `DEFERRED`, so its own plain load is
                // exact when it finds it down, and the common run pays no RMW here.
                let deferred = if self.bh.flags.load(Ordering::Relaxed) & DEFERRED != 0 {
                    self.bh
                        .flags
                        .fetch_and(!(DEFERRED | DEFERRED_IDLE), Ordering::Relaxed)
                } else {
                    0
                };
                if deferred & DEFERRED != 0 {
                    let idle = if deferred & DEFERRED_IDLE != 0 {
                        IDLE
                    } else {
                        0
                    };
                    enqueue(self.list, self.bh, SCHEDULED | idle);
                }
            }
        }
        let ran = self.cb.run(|f| {
            let _after = AfterRun { bh: self, list };
            f();
        });
        if !ran && !self.cb.is_dead() {
            // [BH7]: the callback is running further up this thread's stack.
            let idle = if flags & IDLE != 0 { DEFERRED_IDLE } else { 0 };
            self.flags.fetch_or(DEFERRED | idle, Ordering::Relaxed);
        }
        match (ran, flags & IDLE != 0) {
            (false, _) => BhRun::Skipped,
            (true, true) => BhRun::RanIdle,
            (true, false) => BhRun::Ran,
        }
    }

    /// [BH10]: refills the spent oneshot `this` as a new BH for `cb` with `flags`; gives
    /// `cb` back when another reference to `this` exists.
    fn refill(
        mut this: Arc<Self>,
        cb: Box<Callback>,
        flags: u32,
    ) -> Result<Arc<Self>, Box<Callback>> {
        match Arc::get_mut(&mut this) {
            Some(inner) => {
                *inner = Self {
                    flags: AtomicU32::new(flags),
                    next: AtomicPtr::new(ptr::null_mut()),
                    cb: CallbackCell::new(cb),
                };
                Ok(this)
            }
            None => Err(cb),
        }
    }

    /// Whether this is a oneshot BH (the bit is set at creation and never changes).
    pub(crate) fn is_oneshot(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & ONESHOT != 0
    }

    /// [`run`](Self::run) for a oneshot ([BH11]); `flags` are its flags, read by the
    /// home thread, their only writer.
    fn run_oneshot(&self, flags: u32) -> BhRun {
        // Relaxed: [BH11] — no other writer; the closure was published by the list.
        self.flags
            .store(flags & !(PENDING | SCHEDULED | IDLE), Ordering::Relaxed);
        if flags & SCHEDULED != 0 && self.cb.run_once(|f| f()) {
            BhRun::Ran
        } else {
            BhRun::Skipped
        }
    }

    /// Frees the callback: the BH's context is gone, it can never run ([BH8]).
    pub(crate) fn kill(&self) {
        self.cb.kill();
    }

    /// Sets `bits`, returning the old flags.
    pub(crate) fn set_flags(&self, bits: u32) -> u32 {
        // Release: publishes what the scheduler wrote before scheduling to `run`'s
        // Acquire `fetch_and`.
        self.flags.fetch_or(bits, Ordering::Release)
    }
}

/// The lock-free pending list ([BH2]). Holds one `Arc` per pushed BH.
pub(crate) struct BhList {
    head: AtomicPtr<BhInner>,
    /// Every live `Bh` handle's BH, by address, and whether the list is closed ([BH8]).
    handles: Mutex<Handles>,
}

/// See [`BhList::register`].
struct Handles {
    closed: bool,
    all: HashMap<usize, Arc<BhInner>>,
}

impl BhList {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            handles: Mutex::new(Handles {
                closed: false,
                all: HashMap::new(),
            }),
        }
    }

    /// Records the BH of a new `Bh` handle, so that closing the list frees its callback
    /// ([BH8]); on a closed list the callback is killed at once instead.
    pub(crate) fn register(&self, bh: &Arc<BhInner>) {
        let mut handles = lock(&self.handles);
        if handles.closed {
            drop(handles);
            bh.kill();
        } else {
            handles.all.insert(Arc::as_ptr(bh) as usize, Arc::clone(bh));
        }
    }

    /// Forgets the BH of a `Bh` handle being dropped.
    fn unregister(&self, bh: &Arc<BhInner>) -> Option<Arc<BhInner>> {
        lock(&self.handles).all.remove(&(Arc::as_ptr(bh) as usize))
    }

    /// Pushes `bh`; the caller must own its `PENDING` bit ([BH1]). Returns `false`,
    /// dropping `bh`, when the list was closed ([BH8]).
    pub(crate) fn push(&self, bh: Arc<BhInner>) -> bool {
        let node = Arc::into_raw(bh).cast_mut();
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            if head == closed() {
                // SAFETY: `node` came from `Arc::into_raw` above and was never published.
                drop(unsafe { Arc::from_raw(node) });
                return false;
            }
            // SAFETY: `node` came from `Arc::into_raw` above and the list owns that
            // reference; only the pusher that owns the `PENDING` bit touches `next`
            // before the node is published by the CAS below.
            unsafe { (*node).next.store(head, Ordering::Relaxed) };
            // Release: publishes `next` and the BH's flags to `take_all`'s Acquire swap.
            match self
                .head
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => head = actual,
            }
        }
    }

    /// Whether the list looks non-empty (a hint for busy polling).
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        head.is_null() || head == closed()
    }

    /// Takes every pushed BH, appending them to `out` oldest first.
    #[inline]
    pub(crate) fn take_all(&self, out: &mut VecDeque<Arc<BhInner>>) {
        // No RMW on an empty list: a push this load misses was published after the
        // last `accept`, whose notify keeps the loop from sleeping ([N3]-[N5] (`notify.rs`)).
        let head = self.head.load(Ordering::Relaxed);
        if head.is_null() || head == closed() {
            return;
        }
        self.take_pushed(out);
    }

    /// The non-empty part of [`take_all`](Self::take_all).
    #[inline(never)]
    fn take_pushed(&self, out: &mut VecDeque<Arc<BhInner>>) {
        // Acquire: pairs with the Release CAS in `push`.
        let node = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        Self::take_chain(node, out);
    }

    /// Closes the list for good and takes what it held ([BH8]); kills the callback of
    /// every live `Bh` handle (the caller kills what it took). Idempotent.
    pub(crate) fn close(&self, out: &mut VecDeque<Arc<BhInner>>) {
        // Acquire: pairs with the Release CAS in `push`.
        let node = self.head.swap(closed(), Ordering::Acquire);
        if node != closed() {
            Self::take_chain(node, out);
        }
        let all = {
            let mut handles = lock(&self.handles);
            handles.closed = true;
            std::mem::take(&mut handles.all)
        };
        // Outside the lock: a callback's drop may drop a `Bh`, which unregisters.
        for bh in all.values() {
            bh.kill();
        }
    }

    fn take_chain(mut node: *mut BhInner, out: &mut VecDeque<Arc<BhInner>>) {
        let (mut first, mut last) = (out.len(), out.len());
        while !node.is_null() {
            // SAFETY: every node on the list came from `Arc::into_raw` in `push`, and
            // the swap above made this thread the only owner of the whole chain.
            let bh = unsafe { Arc::from_raw(node) };
            node = bh.next.load(Ordering::Relaxed);
            out.push_back(bh);
            last += 1;
        }
        // Oldest first: reverse what was appended, in place (no `make_contiguous`, which
        // moves the whole queue; nothing at all for the common chain of one).
        while first + 1 < last {
            last -= 1;
            out.swap(first, last);
            first += 1;
        }
    }
}

impl Drop for BhList {
    fn drop(&mut self) {
        let mut rest = VecDeque::new();
        self.take_all(&mut rest);
    }
}

/// Sets `PENDING | flags` on `bh` and pushes it if this call turned `PENDING` on ([BH1]).
/// The caller notifies the context afterwards. Returns `false` when the list is closed
/// ([BH8]): then `bh` stays `PENDING` and is never pushed again.
pub(crate) fn enqueue(list: &BhList, bh: &Arc<BhInner>, flags: u32) -> bool {
    if bh.set_flags(PENDING | flags) & PENDING == 0 {
        list.push(Arc::clone(bh))
    } else {
        // On a list (or taken by the home thread): the drop drains both, unless the
        // list is closed already.
        list.head.load(Ordering::Relaxed) != closed()
    }
}

/// A new oneshot BH for `cb`, scheduled: two allocations (the `Arc` and the closure's
/// box; `cb` is stored in the box, not boxed again), or one when `spare` is a spent
/// oneshot to refill ([BH10]). Nobody else can see the BH yet, so it is created
/// `PENDING | SCHEDULED` — this call owns the `PENDING` bit ([BH1]) without an RMW —
/// and the list takes the creator's reference instead of a clone. Returns `false` when
/// the list is closed ([BH8]): the BH and its callback are freed unrun at once. The
/// caller notifies the context afterwards.
pub(crate) fn push_oneshot(
    list: &BhList,
    spare: Option<Arc<BhInner>>,
    cb: impl FnOnce() + Send + 'static,
) -> bool {
    let mut cb = Some(cb);
    let cb: Box<Callback> = Box::new(move || {
        if let Some(cb) = cb.take() {
            cb();
        }
    });
    let flags = ONESHOT | PENDING | SCHEDULED;
    let bh = match spare {
        Some(spare) => {
            BhInner::refill(spare, cb, flags).unwrap_or_else(|cb| BhInner::new(cb, flags))
        }
        None => BhInner::new(cb, flags),
    };
    // The push's Release CAS publishes the flags and the closure to `take_all`.
    list.push(bh)
}

impl Remote {
    /// [`schedule_oneshot`](Remote::schedule_oneshot), refilling `spare` (a spent
    /// oneshot of the home thread, [BH10]) when given one.
    pub(crate) fn schedule_oneshot_in(
        &self,
        spare: Option<Arc<BhInner>>,
        cb: impl FnOnce() + Send + 'static,
    ) {
        if push_oneshot(&self.bhs, spare, cb) {
            self.notify();
        }
    }
}

/// The head of a closed list ([BH8]): an address no allocation has.
fn closed() -> *mut BhInner {
    ptr::NonNull::<BhInner>::dangling().as_ptr()
}

/// A bottom half: a callback that runs once on the context's home thread each time it
/// is scheduled. Dropping it deletes it (QEMU: `qemu_bh_delete`).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// let ctx = aioctx_aio::AioContext::new()?;
/// let runs = Arc::new(AtomicUsize::new(0));
/// let r = runs.clone();
/// let bh = ctx.bh_new(move || { r.fetch_add(1, Ordering::Relaxed); });
/// bh.schedule();
/// bh.schedule(); // idempotent while pending
/// assert!(ctx.poll(false));
/// assert_eq!(runs.load(Ordering::Relaxed), 1);
/// assert!(!ctx.poll(false));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Bh {
    inner: Arc<BhInner>,
    remote: Arc<Remote>,
}

/// The context a BH or timer belongs to was shut down — dropped (or its drop has
/// begun), or its [`IoThread`](crate::IoThread) stopped: nothing will ever poll it, and
/// the callback will never run (it was freed then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextGone;

impl fmt::Display for ContextGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the AioContext was shut down (dropped, or its IoThread stopped); the callback \
             will never run",
        )
    }
}

impl std::error::Error for ContextGone {}

impl Bh {
    pub(crate) fn new(remote: Arc<Remote>, cb: Box<Callback>) -> Self {
        let inner = BhInner::new(cb, 0);
        remote.bhs.register(&inner);
        Self { inner, remote }
    }

    /// Schedules the BH to run on the next `poll` of its context. Wait-free from any
    /// thread, idempotent while pending, notifies the context (QEMU: `qemu_bh_schedule`).
    /// Scheduling onto a dropped context does nothing; see [`try_schedule`](Self::try_schedule).
    pub fn schedule(&self) {
        let _ = self.try_schedule();
    }

    /// Like [`schedule`](Self::schedule), but says when the context is gone.
    ///
    /// # Errors
    /// [`ContextGone`] when the context was dropped (or its drop has begun), or its
    /// [`IoThread`](crate::IoThread) stopped: the BH never runs, and its callback was
    /// freed then.
    pub fn try_schedule(&self) -> Result<(), ContextGone> {
        self.remote.enqueue(&self.inner, SCHEDULED)
    }

    /// Schedules the BH as idle: it runs within 10 ms and does not count as progress
    /// (QEMU: `qemu_bh_schedule_idle`).
    pub fn schedule_idle(&self) {
        let _ = self.remote.enqueue(&self.inner, SCHEDULED | IDLE);
    }

    /// Unschedules the BH without notifying. It keeps its place on the pending list, so
    /// scheduling it again before the next `poll` keeps its old position in the FIFO
    /// order (QEMU: `qemu_bh_cancel`).
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether the BH is scheduled and has not run yet.
    pub fn is_scheduled(&self) -> bool {
        let deferred = self.inner.flags.load(Ordering::Relaxed) & (DEFERRED | DELETED) == DEFERRED;
        self.inner.wants_run().is_some() || deferred
    }
}

impl BhInner {
    /// [BH4] (also drops a schedule deferred by [BH7]).
    fn cancel(&self) {
        self.flags
            .fetch_and(!(SCHEDULED | DEFERRED | DEFERRED_IDLE), Ordering::Relaxed);
    }
}

impl Drop for Bh {
    fn drop(&mut self) {
        self.inner.set_flags(DELETED);
        let registered = self.remote.bhs.unregister(&self.inner);
        self.inner.cb.kill();
        drop(registered);
    }
}

impl fmt::Debug for Bh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bh")
            .field("flags", &self.inner.flags.load(Ordering::Relaxed))
            .finish()
    }
}

static_assertions::assert_impl_all!(Bh: Send, Sync);
#[cfg(not(all(loom, test)))]
static_assertions::const_assert!(std::mem::size_of::<BhInner>() <= 64);
