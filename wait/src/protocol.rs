//! The wait/kick protocol: a waiter is never left asleep after the condition it polls
//! has changed, and a kick with nobody waiting costs a fence and a load.
//!
//! QEMU: `AioWait`, `global_aio_wait`, the counting in `AIO_WAIT_WHILE_INTERNAL`, and
//! `aio_wait_kick` (util/aio-wait.c, include/block/aio-wait.h).
//!
//! State: `num_waiters`, the number of `wait_while` calls in progress. Waiters change it
//! with atomic RMWs; kickers only read it.
//!
//! Rules:
//! 1. A waiter raises `num_waiters` and fences ([W1]) *before* it first evaluates its
//!    condition, and lowers it only after its last evaluation.
//! 2. Whoever changes a condition a waiter may be polling changes it first, then kicks:
//!    fence ([K1]), read `num_waiters`, and wake the main loop only if it is non-zero.
//! 3. The kicker's skip test reads only `num_waiters` — the registration counter — never
//!    anything the waiter changes while it sleeps (STYLE; the e3082ab3b3 lesson).
//! 4. The wake-up is a bottom half scheduled on the main context; the loop's own notify
//!    protocol (aio `notify.rs`) guarantees that a BH scheduled while the loop goes to
//!    sleep is not left unrun, so the loop returns from `poll` and re-checks.
//!
//! The interleaving it must survive:
//!
//! ```text
//!   waiter (main loop, wait_while)          kicker (any thread)
//!   ------------------------------          -------------------
//!   num_waiters += 1
//!                                           cond = changed
//!   fence(SeqCst)                 [W1]
//!   cond?  -> still unchanged: sleep        fence(SeqCst)                 [K1]
//!                                           num_waiters? -> 1: schedule the BH
//! ```
//!
//! `[W1]` and `[K1]` are a Dekker pair: in the single order of SeqCst fences one comes
//! first. If `[W1]` precedes `[K1]`, the kicker's relaxed load after `[K1]` sees the
//! increment before `[W1]` and wakes the loop. If `[K1]` precedes `[W1]`, the waiter's
//! load of the condition after `[W1]` sees the kicker's store before `[K1]`, and it does
//! not sleep. Both cannot miss.
//!
//! Two weaker versions lose the wake-up, and the loom model keeps both as mutations that
//! it must find deadlocking (`loom_tests.rs`): a kick without `[K1]` (QEMU before commit
//! 7455ff1a "aio_wait_kick: add missing memory barrier"), and a waiter that relies on its
//! SeqCst increment instead of a fence after it (QEMU before `smp_mb__after_rmw()` was
//! added after the `qatomic_inc`): an RMW orders its own access, not the later relaxed
//! load of the condition.

use crate::sync::atomic::{AtomicU32, Ordering, fence};

/// The waiter count of the wait/kick protocol. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct AioWait {
    num_waiters: AtomicU32,
}

/// A raised `num_waiters`; dropping it lowers the count again (also when the waiter's
/// condition panics).
#[must_use = "the waiter is registered only while the registration lives"]
pub(crate) struct Registration<'a> {
    wait: &'a AioWait,
}

impl AioWait {
    /// A count with no waiter.
    #[cfg(not(all(loom, test)))]
    pub(crate) const fn new() -> Self {
        Self {
            num_waiters: AtomicU32::new(0),
        }
    }

    /// A count with no waiter (loom's atomics are not `const`).
    #[cfg(all(loom, test))]
    pub(crate) fn new() -> Self {
        Self {
            num_waiters: AtomicU32::new(0),
        }
    }

    /// Waiter side, before the first evaluation of the condition (rule 1).
    pub(crate) fn register(&self) -> Registration<'_> {
        // Relaxed: the ordering against the condition load is [W1]'s job.
        self.num_waiters.fetch_add(1, Ordering::Relaxed);
        // [W1] pairs with [K1] in `must_kick`.
        fence(Ordering::SeqCst);
        Registration { wait: self }
    }

    /// Kicker side, after changing the condition (rule 2): whether a waiter may be
    /// polling, so the main loop must be woken.
    #[inline]
    pub(crate) fn must_kick(&self) -> bool {
        // [K1] pairs with [W1] in `register`.
        fence(Ordering::SeqCst);
        self.num_waiters.load(Ordering::Relaxed) != 0
    }

    /// How many waiters are registered now (a snapshot).
    pub(crate) fn num_waiters(&self) -> u32 {
        self.num_waiters.load(Ordering::Relaxed)
    }

    /// Mutation kept for the loom model: the kick of QEMU before commit 7455ff1a, which
    /// read the count with no barrier of its own. Must be found losing a wake-up.
    #[cfg(all(loom, test))]
    pub(crate) fn must_kick_without_fence(&self) -> bool {
        self.num_waiters.load(Ordering::Relaxed) != 0
    }

    /// Mutation kept for the loom model: a waiter that raises the count with a SeqCst
    /// RMW and no fence after it (QEMU before `smp_mb__after_rmw`). Must be found losing
    /// a wake-up.
    #[cfg(all(loom, test))]
    pub(crate) fn register_rmw_only(&self) -> Registration<'_> {
        self.num_waiters.fetch_add(1, Ordering::SeqCst);
        Registration { wait: self }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Relaxed: a kicker that still sees the old count only schedules one harmless
        // dummy BH; nothing is published through the decrement.
        let old = self.wait.num_waiters.fetch_sub(1, Ordering::Relaxed);
        assert!(old != 0, "aio_wait: num_waiters underflow (was {old})");
    }
}
