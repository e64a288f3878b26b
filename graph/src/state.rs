//! The graph-lock protocol (QEMU: block/graph-lock.c), in a plain struct so each loom
//! iteration builds a fresh one; production reaches one instance through
//! [`GraphLock`](crate::GraphLock).
//!
//! State:
//! - `has_writer`: set while a writer holds the lock, and also between the writer's
//!   waits — but **zeroed while the writer polls**, so callbacks its own poll runs can
//!   take the read fast path.
//! - one [`ReaderCounter`] per context, written only by that context's home thread,
//!   cache-padded so two contexts never share a line; the registry of counters with
//!   `orphaned`, the sum of the counters of dead contexts (a task may lock on A and
//!   unlock on B, so single counters wrap; only the sum means anything).
//! - the reader queue, under the registry mutex.
//!
//! Rules:
//! 1. A reader increments its counter, fences ([R1]), and reads `has_writer`; the writer
//!    sets `has_writer`, fences ([W1]), and sums the counters. By the Dekker pair
//!    [R1]/[W1], either the reader sees the writer and backs off, or the writer sees the
//!    reader and waits.
//! 2. A reader that backs off does so under the registry mutex: it re-checks
//!    `has_writer`, decrements, kicks, and queues itself — and `wrunlock` clears
//!    `has_writer` and takes the queue under the same mutex, so no reader is left queued.
//! 3. `rdunlock` decrements and **always** kicks; the kick's leading fence is [U1]. The
//!    kick's skip test reads only `num_waiters`, the waiter-registration count, never
//!    `has_writer`.
//!
//! Rule 3 is the e3082ab3b3 fix. The pre-fix code kicked only when it saw `has_writer`
//! set, and lost this wake-up:
//!
//! ```text
//!   main thread (wrlock)                   iothread task (holds the read lock)
//!   --------------------                   -----------------------------------
//!   has_writer = 0
//!   wait_while(readers() > 0):
//!     num_waiters += 1; fence
//!     readers() == 1 -> poll, sleeps       counter -= 1  -> readers() == 0
//!                                          fence                           [U1]
//!                                          has_writer == 0 -> skip kick   (pre-fix)
//!   ... asleep forever: nothing will ever schedule a BH on the main context
//! ```
//!
//! With rule 3 the reader's kick reads `num_waiters == 1` (the waiter's fence and [U1]
//! pair up) and schedules the BH that wakes the writer, which re-checks `readers()`.

use std::mem;
use std::task::Waker;

use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering, fence};
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

/// One context's reader count (rule 1), alone on its cache lines.
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

    /// Adds `delta` (wrapping). Only the owning context's thread writes, so a load and a
    /// store suffice; `order` orders the store.
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
    registry: Mutex<Registry>,
    unlock_kick: AtomicU8,
}

impl LockState {
    #[cfg(not(all(loom, test)))]
    pub(crate) const fn new() -> Self {
        Self {
            has_writer: AtomicBool::new(false),
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

    pub(crate) fn unlock_kick(&self) -> UnlockKick {
        match self.unlock_kick.load(Ordering::Relaxed) {
            0 => UnlockKick::Always,
            _ => UnlockKick::WhenWriterSeen,
        }
    }

    pub(crate) fn has_writer(&self) -> bool {
        self.has_writer.load(Ordering::Relaxed)
    }

    /// Adds a context's counter to the registry.
    pub(crate) fn register(&self, counter: Arc<ReaderCounter>) {
        lock(&self.registry).counters.push(counter);
    }

    /// Removes a dying context's counter, keeping its count in `orphaned`.
    pub(crate) fn unregister(&self, counter: &Arc<ReaderCounter>) {
        let mut reg = lock(&self.registry);
        reg.orphaned = reg.orphaned.wrapping_add(counter.get());
        reg.counters.retain(|c| !Arc::ptr_eq(c, counter));
    }

    /// The number of readers: every counter plus `orphaned` (QEMU: `reader_count`).
    pub(crate) fn readers(&self) -> u32 {
        let reg = lock(&self.registry);
        reg.counters
            .iter()
            .fold(reg.orphaned, |sum, c| sum.wrapping_add(c.get()))
    }

    /// One attempt to take the read lock on `counter`'s context. On `false`, `waker` is
    /// queued and will be woken by `wrunlock`; try again then.
    pub(crate) fn try_rdlock(
        &self,
        counter: &ReaderCounter,
        waiter: &impl AioWaiter,
        waker: &Waker,
    ) -> bool {
        counter.add(1, Ordering::Relaxed);
        // [R1] pairs with [W1] in `wrlock` (rule 1).
        fence(Ordering::SeqCst);
        // Acquire: pairs with the Release clear in `wrunlock`: the writer's changes are
        // visible to the reader.
        if !self.has_writer.load(Ordering::Acquire) {
            return true;
        }
        let mut reg = lock(&self.registry);
        if !self.has_writer.load(Ordering::Acquire) {
            return true;
        }
        // Release: pairs with `ReaderCounter::get` in the writer's `readers()`.
        counter.add(1u32.wrapping_neg(), Ordering::Release);
        waiter.kick();
        reg.queue.push(waker.clone());
        false
    }

    /// Drops a read lock taken on any context, decrementing `counter` (rule 3).
    pub(crate) fn rdunlock(&self, counter: &ReaderCounter, waiter: &impl AioWaiter) {
        // Release: pairs with `ReaderCounter::get` in the writer's `readers()`.
        counter.add(1u32.wrapping_neg(), Ordering::Release);
        match self.unlock_kick() {
            // [U1] is the kick's own leading fence ([K1] in aioctx_wait): it orders the
            // decrement before the `num_waiters` load and pairs with the fence after
            // `num_waiters += 1` in `wait_while`. QEMU issues a second smp_mb before it;
            // one full fence between the store and the load is all the pair needs.
            UnlockKick::Always => waiter.kick(),
            UnlockKick::WhenWriterSeen => {
                // [U1] pairs with [W1]: the decrement is ordered before the
                // `has_writer` load (the pre-fix code's only fence).
                fence(Ordering::SeqCst);
                if self.has_writer.load(Ordering::Relaxed) {
                    waiter.kick();
                }
            }
        }
    }

    /// Takes the write lock: waits until no reader holds it (QEMU: `bdrv_graph_wrlock`).
    /// The caller checked it runs the main loop, outside a task.
    pub(crate) fn wrlock(&self, waiter: &impl AioWaiter) {
        let held = self.has_writer.load(Ordering::Relaxed);
        assert!(!held, "GraphLock::wrlock: the write lock is already held");
        loop {
            // Zero while polling, so callbacks run by our own poll take the fast path.
            self.has_writer.store(false, Ordering::Relaxed);
            waiter.wait_while(&mut || self.readers() > 0);
            self.has_writer.store(true, Ordering::Relaxed);
            // [W1] pairs with [R1] in `try_rdlock` (rule 1).
            fence(Ordering::SeqCst);
            if self.readers() == 0 {
                return;
            }
        }
    }

    /// Drops the write lock and returns the queued readers' wakers (rule 2); the caller
    /// wakes them.
    pub(crate) fn wrunlock(&self) -> Vec<Waker> {
        let mut reg = lock(&self.registry);
        let held = self.has_writer.load(Ordering::Relaxed);
        assert!(held, "GraphLock::wrunlock: the write lock is not held");
        // Release: pairs with the Acquire loads of `has_writer` in `try_rdlock`.
        self.has_writer.store(false, Ordering::Release);
        mem::take(&mut reg.queue)
    }
}
