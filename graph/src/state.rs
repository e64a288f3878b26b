//! The graph-lock protocol (QEMU: block/graph-lock.c), in a plain struct so each loom
//! iteration builds a fresh one; production reaches one instance through
//! [`GraphLock`](crate::GraphLock).
//!
//! State:
//! - `has_writer`: set while a writer holds the lock, and also between the writer's
//!   waits — but **zeroed while the writer polls**, so callbacks its own poll runs can
//!   take the read fast path.
//! - one [`ReaderCounter`] per thread that takes read locks (a context's home thread),
//!   written only by that thread, cache-padded so two threads (two contexts) never share
//!   a line; the registry of counters with `orphaned`, the sum of the counters of exited
//!   threads (a task may lock on A and unlock on B, so single counters wrap; only the
//!   sum means anything).
//! - the reader queue, under the registry mutex.
//!
//! Rules:
//! [GL1] A reader increments its counter, fences ([R1]), and reads `has_writer`; the writer
//!    sets `has_writer`, fences ([W1]), and sums the counters. By the Dekker pair
//!    [R1]/[W1], either the reader sees the writer and backs off, or the writer sees the
//!    reader and waits.
//! [GL2] A reader that backs off does so under the registry mutex: it re-checks
//!    `has_writer`, decrements, kicks, and queues itself — and `wrunlock` clears
//!    `has_writer` and takes the queue under the same mutex, so no reader is left queued.
//! [GL3] `rdunlock` decrements and **always** kicks; the kick's leading fence is [U1]. The
//!    kick's skip test reads only `num_waiters`, the waiter-registration count, never
//!    `has_writer`.
//! [GL4] The main loop's own accesses are tracked too: `writer_held` (a `WriteGuard`
//!    exists) and `main_loop_readers` (main-loop read guards), both written only by the
//!    main loop. `wrlock` panics if either is set when it starts, and again after each
//!    of its waits: callbacks run by the writer's own poll see `has_writer == 0` and may
//!    take either access, but may not keep it past the wait, or two guards would alias
//!    the graph. `rdlock_main_loop` panics while `writer_held`.
//! [GL5] `readers()` is the number of read locks held: 0 while `writer_held` ([GL1]–[GL2] let
//!    no read lock exist then; what the counters show are readers backing off), else the
//!    sum, which counts a reader from its increment on — also one that is about to back
//!    off because a writer between its waits set `has_writer`.
//! [GL6] The fences are asymmetric (aioctx-wait's `FenceMode`): [R1] and [U1] run on every
//!    read lock and are `light_fence`s; their partners — the writer's [W1] and the
//!    fence after `num_waiters += 1` in the writer's `wait_while` — run once per wait
//!    and are `heavy_fence`s. In asymmetric mode the hot sides are compiler fences and
//!    each rare side calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes
//!    every running thread of the process — every reader between its store and its
//!    load — execute a full barrier before the writer's load (the kernel's
//!    membarrier(2) guarantee; a thread not running is past a full barrier of the
//!    scheduler already). The proof of [GL1] then goes through with that barrier in
//!    place of [R1] (aioctx-wait's `fence.rs` states it once for every pair); in
//!    symmetric mode all four are SeqCst fences. The loom models run them as SeqCst
//!    fences: loom cannot model `membarrier`.
//!
//! [GL3] is the e3082ab3b3 fix. The pre-fix code kicked only when it saw `has_writer`
//! set, and lost this wake-up:
//!
//! ```text
//!   main thread (wrlock)                   iothread task (holds the read lock)
//!   --------------------                   -----------------------------------
//!   has_writer = 0
//!   wait_while(sum() > 0):
//!     num_waiters += 1; fence
//!     sum() == 1 -> poll, sleeps           counter -= 1  -> sum() == 0
//!                                          fence                           [U1]
//!                                          has_writer == 0 -> skip kick   (pre-fix)
//!   ... asleep forever: nothing will ever schedule a BH on the main context
//! ```
//!
//! With [GL3] the reader's kick reads `num_waiters == 1` (the waiter's fence and [U1]
//! pair up) and schedules the BH that wakes the writer, which re-checks `sum()`.

use std::mem;
use std::task::Waker;

use aioctx_wait::{heavy_fence, light_fence};

use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// What `rdunlock` does about a waiting writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnlockKick {
    /// Always `kick()` (free when nobody waits). The e3082ab3b3 fix; the default.
    #[default]
    Always,
    /// **Pre-fix reproduction aid, never for real use: loses wake-ups and hangs the
    /// writer.** Kicks only when `has_writer` is seen set — QEMU before e3082ab3b3. Kept
    /// so tests and `aioctx stress` can show the hang and its absence side by side.
    WhenWriterSeen,
}

/// The waiting half of `aio_wait`, as the lock needs it. Production: `aioctx_wait`;
/// loom models: a model of it.
pub(crate) trait AioWaiter {
    /// `aio_wait_kick`.
    fn kick(&self);
    /// `AIO_WAIT_WHILE(NULL, cond)` from the main loop.
    fn wait_while(&self, cond: &mut dyn FnMut() -> bool);
}

/// One thread's reader count (\[GL1\]), alone on its cache lines: 128-byte aligned and
/// sized, so neither another counter nor the `Arc`'s reference counts (in the line
/// before it) share its line, also where the CPU fetches lines in pairs.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct ReaderCounter {
    count: AtomicU32,
}

impl ReaderCounter {
    /// A zero counter.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `delta` (wrapping). Only the owning thread writes, so a load and a store
    /// suffice; `order` orders the store.
    #[inline]
    fn add(&self, delta: u32, order: Ordering) {
        let c = self.count.load(Ordering::Relaxed);
        self.count.store(c.wrapping_add(delta), order);
    }

    fn get(&self) -> u32 {
        // Acquire: pairs with the Release decrement in `rdunlock` / the slow path of
        // `try_rdlock`, so a writer that sees a reader gone sees its critical section.
        self.count.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Registry {
    counters: Vec<Arc<ReaderCounter>>,
    orphaned: u32,
    queue: Vec<Waker>,
}

/// The protocol state. See the module docs.
pub(crate) struct LockState {
    has_writer: AtomicBool,
    /// Whether a `WriteGuard` exists ([GL4]). Written only by the main loop.
    writer_held: AtomicBool,
    /// How many main-loop read guards exist ([GL4]). Written only by the main loop.
    main_loop_readers: AtomicU32,
    registry: Mutex<Registry>,
    unlock_kick: AtomicU8,
}

impl LockState {
    #[cfg(not(all(loom, test)))]
    pub(crate) const fn new() -> Self {
        Self {
            has_writer: AtomicBool::new(false),
            writer_held: AtomicBool::new(false),
            main_loop_readers: AtomicU32::new(0),
            registry: Mutex::new(Registry {
                counters: Vec::new(),
                orphaned: 0,
                queue: Vec::new(),
            }),
            unlock_kick: AtomicU8::new(0),
        }
    }

    #[cfg(all(loom, test))]
    pub(crate) fn new() -> Self {
        Self {
            has_writer: AtomicBool::new(false),
            writer_held: AtomicBool::new(false),
            main_loop_readers: AtomicU32::new(0),
            registry: Mutex::new(Registry::default()),
            unlock_kick: AtomicU8::new(0),
        }
    }

    pub(crate) fn set_unlock_kick(&self, policy: UnlockKick) {
        let v = match policy {
            UnlockKick::Always => 0,
            UnlockKick::WhenWriterSeen => 1,
        };
        self.unlock_kick.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn unlock_kick(&self) -> UnlockKick {
        match self.unlock_kick.load(Ordering::Relaxed) {
            0 => UnlockKick::Always,
            _ => UnlockKick::WhenWriterSeen,
        }
    }

    // Main-loop wiring (lock.rs), which the loom build leaves out.
    #[cfg_attr(all(loom, test), allow(dead_code))]
    pub(crate) fn has_writer(&self) -> bool {
        self.has_writer.load(Ordering::Relaxed)
    }

    /// Adds a context's counter to the registry.
    pub(crate) fn register(&self, counter: Arc<ReaderCounter>) {
        lock(&self.registry).counters.push(counter);
    }

    /// Removes a dying context's counter, keeping its count in `orphaned`.
    // Main-loop wiring (lock.rs), which the loom build leaves out.
    #[cfg_attr(all(loom, test), allow(dead_code))]
    pub(crate) fn unregister(&self, counter: &Arc<ReaderCounter>) {
        let mut reg = lock(&self.registry);
        reg.orphaned = reg.orphaned.wrapping_add(counter.get());
        reg.counters.retain(|c| !Arc::ptr_eq(c, counter));
    }

    /// The sum of every counter plus `orphaned` (QEMU: `reader_count`): the read locks
    /// held, plus readers between their increment and their back-off ([GL1]). What the
    /// writer waits on.
    pub(crate) fn sum(&self) -> u32 {
        let reg = lock(&self.registry);
        reg.counters
            .iter()
            .fold(reg.orphaned, |sum, c| sum.wrapping_add(c.get()))
    }

    /// The number of read locks held ([GL5]): 0 while the write lock is held, else
    /// [`sum`](Self::sum).
    pub(crate) fn readers(&self) -> u32 {
        if self.writer_held.load(Ordering::Relaxed) {
            // No read lock can be held ([GL1]-[GL2]): what the counters show now are
            // readers backing off.
            return 0;
        }
        self.sum()
    }

    /// Whether a `WriteGuard` exists.
    pub(crate) fn writer_held(&self) -> bool {
        self.writer_held.load(Ordering::Relaxed)
    }

    /// How many main-loop read guards exist.
    pub(crate) fn main_loop_readers(&self) -> u32 {
        self.main_loop_readers.load(Ordering::Relaxed)
    }

    /// Panics unless the main loop holds no graph access: no write guard and no
    /// main-loop read guard ([GL4]). `what` names the caller for the message.
    pub(crate) fn assert_no_main_loop_access(&self, what: &str) {
        assert!(
            !self.writer_held(),
            "GraphLock::{what} called while the write lock is already held (a WriteGuard \
             is alive on the main loop): two write guards would be two `&mut` to the graph"
        );
        let readers = self.main_loop_readers();
        assert!(
            readers == 0,
            "GraphLock::{what} called while {readers} main-loop read guard(s) \
             (rdlock_main_loop) are alive: a reference read through one would dangle once \
             the writer changes the graph. Drop them before taking the write lock"
        );
    }

    /// Takes a main-loop read access (QEMU: `bdrv_graph_rdlock_main_loop`); the caller
    /// checked it runs the main loop, outside a task.
    // Main-loop wiring (lock.rs), which the loom build leaves out.
    #[cfg_attr(all(loom, test), allow(dead_code))]
    pub(crate) fn rdlock_main_loop(&self) {
        assert!(
            !self.writer_held(),
            "GraphLock::rdlock_main_loop called while the write lock is held: read through \
             the WriteGuard instead"
        );
        let n = self.main_loop_readers.load(Ordering::Relaxed);
        self.main_loop_readers.store(n + 1, Ordering::Relaxed);
    }

    /// Drops a main-loop read access.
    // Main-loop wiring (lock.rs), which the loom build leaves out.
    #[cfg_attr(all(loom, test), allow(dead_code))]
    pub(crate) fn rdunlock_main_loop(&self) {
        let n = self.main_loop_readers.load(Ordering::Relaxed);
        assert!(n > 0, "GraphLock: main-loop read unlock without a lock");
        self.main_loop_readers.store(n - 1, Ordering::Relaxed);
    }

    /// One attempt to take the read lock, counted on `counter` (the calling thread's).
    /// On `false`, `waker` is queued and will be woken by `wrunlock`; try again then.
    #[inline]
    pub(crate) fn try_rdlock(
        &self,
        counter: &ReaderCounter,
        waiter: &impl AioWaiter,
        waker: &Waker,
    ) -> bool {
        counter.add(1, Ordering::Relaxed);
        // [R1] pairs with [W1] in `wrlock` ([GL1]): the hot side, a compiler fence in
        // asymmetric mode ([GL6]).
        light_fence();
        // Acquire: pairs with the Release clear in `wrunlock`: the writer's changes are
        // visible to the reader.
        if !self.has_writer.load(Ordering::Acquire) {
            return true;
        }
        self.back_off(counter, waiter, waker)
    }

    /// The slow path of `try_rdlock`: a writer was seen ([GL2]).
    #[cold]
    #[inline(never)]
    fn back_off(&self, counter: &ReaderCounter, waiter: &impl AioWaiter, waker: &Waker) -> bool {
        let mut reg = lock(&self.registry);
        if !self.has_writer.load(Ordering::Acquire) {
            return true;
        }
        // Release: pairs with `ReaderCounter::get` in the writer's `sum()`.
        counter.add(1u32.wrapping_neg(), Ordering::Release);
        waiter.kick();
        reg.queue.push(waker.clone());
        false
    }

    /// Drops a read lock taken on any context, decrementing `counter` ([GL3]).
    #[inline]
    pub(crate) fn rdunlock(&self, counter: &ReaderCounter, waiter: &impl AioWaiter) {
        // Release: pairs with `ReaderCounter::get` in the writer's `sum()`.
        counter.add(1u32.wrapping_neg(), Ordering::Release);
        self.kick_after_unlock(waiter);
    }

    /// Drops a read lock on a thread that runs no context (a task's future dropped
    /// where its context is gone): the decrement goes to `orphaned`, which keeps the sum
    /// right as for a dead context's counter ([GL3] still kicks).
    pub(crate) fn rdunlock_orphaned(&self, waiter: &impl AioWaiter) {
        {
            let mut reg = lock(&self.registry);
            reg.orphaned = reg.orphaned.wrapping_sub(1);
        }
        self.kick_after_unlock(waiter);
    }

    /// The kick of [GL3], per the [`UnlockKick`] policy, after a decrement.
    #[inline]
    fn kick_after_unlock(&self, waiter: &impl AioWaiter) {
        match self.unlock_kick() {
            // [U1] is the kick's own leading fence ([K1] in aioctx_wait): it orders the
            // decrement before the `num_waiters` load and pairs with the fence after
            // `num_waiters += 1` in `wait_while`. QEMU issues a second smp_mb before it;
            // one full fence between the store and the load is all the pair needs.
            UnlockKick::Always => waiter.kick(),
            UnlockKick::WhenWriterSeen => {
                // [U1] pairs with [W1]: the decrement is ordered before the
                // `has_writer` load (the pre-fix code's only fence); hot side ([GL6]).
                light_fence();
                if self.has_writer.load(Ordering::Relaxed) {
                    waiter.kick();
                }
            }
        }
    }

    /// Takes the write lock: waits until no reader holds it (QEMU: `bdrv_graph_wrlock`).
    /// The caller checked it runs the main loop, outside a task.
    ///
    /// # Panics
    /// When the main loop holds a graph access already, or when a callback run by the
    /// wait left one alive ([GL4]) — before the lock is taken.
    pub(crate) fn wrlock(&self, waiter: &impl AioWaiter) {
        self.assert_no_main_loop_access("wrlock");
        loop {
            // Zero while polling, so callbacks run by our own poll take the fast path.
            self.has_writer.store(false, Ordering::Relaxed);
            waiter.wait_while(&mut || self.sum() > 0);
            // [GL4]: a callback of that poll may have taken the write lock or a
            // main-loop read access and kept it; neither may outlive our wait.
            self.assert_no_main_loop_access("wrlock (after a callback run by its wait)");
            self.has_writer.store(true, Ordering::Relaxed);
            // [W1] pairs with [R1] in `try_rdlock` ([GL1]): the rare side, a
            // membarrier in asymmetric mode ([GL6]).
            heavy_fence();
            if self.sum() == 0 {
                self.writer_held.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Drops the write lock and returns the queued readers' wakers ([GL2]); the caller
    /// wakes them.
    pub(crate) fn wrunlock(&self) -> Vec<Waker> {
        let mut reg = lock(&self.registry);
        assert!(
            self.writer_held(),
            "GraphLock::wrunlock: the write lock is not held"
        );
        self.writer_held.store(false, Ordering::Relaxed);
        // Release: pairs with the Acquire loads of `has_writer` in `try_rdlock`.
        self.has_writer.store(false, Ordering::Release);
        mem::take(&mut reg.queue)
    }
}
