//! The wait/kick protocol: a waiter is never left asleep after the condition it polls
//! has changed, and a kick with nobody waiting costs a fence and a load.
//!
//! QEMU: `AioWait`, `global_aio_wait`, the counting in `AIO_WAIT_WHILE_INTERNAL`, and
//! `aio_wait_kick` (util/aio-wait.c, include/block/aio-wait.h).
//!
//! State: `num_waiters`, the number of `wait_while` calls in progress. Waiters change it
//! with atomic RMWs; kickers only read it (and clear its `MUST_FENCE` bit once, which is
//! the fence mode's, not a count).
//!
//! Rules:
//! [AW1] A waiter raises `num_waiters` and fences ([W1]) *before* it first evaluates its
//!    condition, and lowers it only after its last evaluation.
//! [AW2] Whoever changes a condition a waiter may be polling changes it first, then kicks:
//!    fence ([K1]), read `num_waiters`, and wake the main loop only if it is non-zero.
//! [AW3] The kicker's skip test reads only `num_waiters` — the registration counter — never
//!    anything the waiter changes while it sleeps (STYLE; the e3082ab3b3 lesson).
//! [AW4] The wake-up is a bottom half scheduled on the main context; the loop's own notify
//!    protocol (aio `notify.rs`) guarantees that a BH scheduled while the loop goes to
//!    sleep is not left unrun, so the loop returns from `poll` and re-checks.
//! [AW5] A waiter that polls a loop other than the main one (an iothread waiting on its own
//!    context) also puts a handle of its loop in `others`, under its mutex, before it
//!    raises `num_waiters`; a kick that must wake anyone also wakes every loop in
//!    `others`. The kicker takes the mutex after [K1]: if its load saw the waiter's
//!    count, the mutex hands it the entry pushed before that count (and if it missed the
//!    count, the waiter's condition load after [W1] sees the change, [AW2]).
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
//! The pair is asymmetric: `[K1]` runs on every kick, `[W1]` once per `wait_while`. So
//! `[K1]` is a [`light_fence`] and `[W1]` a [`heavy_fence`]: in the process's
//! [`FenceMode::Asymmetric`](crate::FenceMode) the kick issues only a compiler fence and
//! the waiter's registration calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which
//! acts as a full fence on every running thread — every kicker — at a point between the
//! increment and the condition load; `fence.rs` proves that the argument above holds
//! with that barrier in place of `[K1]`. In symmetric mode both are SeqCst fences. The
//! loom models run both as SeqCst fences (loom cannot model `membarrier`).
//!
//! Two weaker versions lose the wake-up, and the loom model keeps both as mutations that
//! it must find deadlocking (`loom_tests.rs`): a kick without `[K1]` (QEMU before commit
//! 7455ff1a "aio_wait_kick: add missing memory barrier"), and a waiter that relies on its
//! SeqCst increment instead of a fence after it (QEMU before `smp_mb__after_rmw()` was
//! added after the `qatomic_inc`): an RMW orders its own access, not the later relaxed
//! load of the condition. A third breaks [AW5]: a kick that wakes only the main loop
//! (QEMU's `aio_wait_kick`) leaves an iothread waiting on its own context asleep.

use crate::fence::{compiler_fence, heavy_fence, light_fence_is_asymmetric};
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::sync::{Mutex, lock};

/// The event loop a waiter sleeps in, as the protocol sees it: the kernel sleep behind a
/// small trait. Production: an `AioContext` (a blocking `poll`; `notify`); loom models: a
/// `loom::sync::Notify`.
pub trait EventLoop: Clone {
    /// Sleeps until an event arrives or [`wake`](Self::wake) is called; a wake that
    /// comes before the sleep is kept. May return early.
    fn sleep(&self);
    /// Makes the sleep in progress, or the next one, return.
    fn wake(&self);
}

/// The loops other than the main one that waiters poll, each with its registration id.
struct Others<L> {
    next_id: u64,
    list: Vec<(u64, L)>,
}

/// The top bit of `num_waiters`'s word: set while a kick must issue a full fence before
/// its real load of the count — until a kick notices that the process runs asymmetric
/// fences and clears it for good. So the asymmetric kick reads one word, and the
/// symmetric one reads it, fences, and reads the count again. Registrations' RMWs leave
/// the bit alone.
const MUST_FENCE: u32 = 1 << 31;

/// The waiter count of the wait/kick protocol. See the module docs.
pub struct AioWait<L> {
    num_waiters: AtomicU32,
    others: Mutex<Others<L>>,
}

/// A raised `num_waiters`; dropping it lowers the count again (also when the waiter's
/// condition panics), and removes the waiter's loop from `others`.
#[must_use = "the waiter is registered only while the registration lives"]
pub struct Registration<'a, L> {
    wait: &'a AioWait<L>,
    other: Option<u64>,
}

impl<L: EventLoop> AioWait<L> {
    /// A count with no waiter.
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    pub const fn new() -> Self {
        Self {
            num_waiters: AtomicU32::new(MUST_FENCE),
            others: Mutex::new(Others {
                next_id: 0,
                list: Vec::new(),
            }),
        }
    }

    /// A count with no waiter (loom's atomics are not `const`).
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    pub fn new() -> Self {
        Self {
            num_waiters: AtomicU32::new(MUST_FENCE),
            others: Mutex::new(Others {
                next_id: 0,
                list: Vec::new(),
            }),
        }
    }

    /// Waits while `cond()` is true, sleeping in `lp` between evaluations; returns
    /// whether it slept. `is_main_loop` says whether `lp` is the main loop, which every
    /// kick wakes; any other loop is registered in `others` for the kicks to wake
    /// ([AW5]). QEMU: `AIO_WAIT_WHILE_INTERNAL`.
    pub fn wait_while(&self, lp: &L, is_main_loop: bool, mut cond: impl FnMut() -> bool) -> bool {
        let _registered = if is_main_loop {
            self.register()
        } else {
            self.register_other(lp.clone())
        };
        let mut waited = false;
        while cond() {
            lp.sleep();
            waited = true;
        }
        waited
    }

    /// Kicker side, after changing the condition ([AW2]): if a waiter may be polling,
    /// calls `wake_main` and wakes every other loop a waiter polls (QEMU:
    /// `aio_wait_kick`).
    #[inline]
    pub fn kick(&self, wake_main: impl FnOnce()) {
        if self.must_kick() {
            self.wake_all(wake_main);
        }
    }

    /// The slow path of `kick`: there is a waiter.
    #[cold]
    pub fn wake_all(&self, wake_main: impl FnOnce()) {
        wake_main();
        // [AW5]: after [K1] (in `must_kick`), so it sees every loop registered before
        // a count that the kick's load saw.
        for (_, lp) in &lock(&self.others).list {
            lp.wake();
        }
    }

    /// Waiter side, before the first evaluation of the condition ([AW1]).
    pub fn register(&self) -> Registration<'_, L> {
        self.raise();
        Registration {
            wait: self,
            other: None,
        }
    }

    /// Like [`register`](Self::register), for a waiter that polls `lp`, a loop other
    /// than the main one ([AW5]).
    pub fn register_other(&self, lp: L) -> Registration<'_, L> {
        let id = {
            let mut others = lock(&self.others);
            others.next_id += 1;
            let id = others.next_id;
            others.list.push((id, lp));
            id
        };
        self.raise();
        Registration {
            wait: self,
            other: Some(id),
        }
    }

    fn raise(&self) {
        // Relaxed: the ordering against the condition load is [W1]'s job.
        self.num_waiters.fetch_add(1, Ordering::Relaxed);
        // [W1] pairs with [K1] in `must_kick`: the rare side (a membarrier in
        // asymmetric mode, `fence.rs`).
        heavy_fence();
    }

    /// Kicker side, after changing the condition ([AW2]): whether a waiter may be
    /// polling, so the main loop must be woken.
    ///
    /// The word read first also says whether a full fence is needed ([`MUST_FENCE`]):
    /// with asymmetric fences, a kick with no waiter is a compiler fence and this one
    /// load.
    #[inline]
    pub fn must_kick(&self) -> bool {
        // [K1] pairs with [W1] in `raise`, when MUST_FENCE is clear: the asymmetric
        // mode's hot side (`fence.rs`).
        compiler_fence();
        let word = self.num_waiters.load(Ordering::Relaxed);
        if word & MUST_FENCE == 0 {
            return word != 0;
        }
        self.must_kick_fenced()
    }

    /// `must_kick` while [`MUST_FENCE`] is set: the mode is not chosen yet, or symmetric,
    /// or asymmetric and not noticed yet here.
    #[inline]
    fn must_kick_fenced(&self) -> bool {
        // [K1] pairs with [W1] in `raise`: a SeqCst fence in symmetric mode.
        if light_fence_is_asymmetric() {
            // For good: the mode never changes once chosen.
            self.num_waiters.fetch_and(!MUST_FENCE, Ordering::Relaxed);
        }
        self.num_waiters.load(Ordering::Relaxed) & !MUST_FENCE != 0
    }

    /// How many waiters are registered now (a snapshot).
    pub fn num_waiters(&self) -> u32 {
        self.num_waiters.load(Ordering::Relaxed) & !MUST_FENCE
    }

    /// Mutation kept for the loom models: the kick of QEMU before commit 7455ff1a, which
    /// read the count with no barrier of its own. Must be found losing a wake-up.
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    pub fn must_kick_without_fence(&self) -> bool {
        self.num_waiters.load(Ordering::Relaxed) & !MUST_FENCE != 0
    }

    /// Mutation kept for the loom model: a waiter that raises the count with a SeqCst
    /// RMW and no fence after it (QEMU before `smp_mb__after_rmw`). Must be found losing
    /// a wake-up.
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    pub fn register_rmw_only(&self) -> Registration<'_, L> {
        self.num_waiters.fetch_add(1, Ordering::SeqCst);
        Registration {
            wait: self,
            other: None,
        }
    }
}

impl<L: EventLoop> Default for AioWait<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L> Drop for Registration<'_, L> {
    fn drop(&mut self) {
        if let Some(id) = self.other {
            lock(&self.wait.others).list.retain(|(i, _)| *i != id);
        }
        // Relaxed: a kicker that still sees the old count only schedules one harmless
        // dummy BH; nothing is published through the decrement.
        let old = self.wait.num_waiters.fetch_sub(1, Ordering::Relaxed) & !MUST_FENCE;
        assert!(old != 0, "aio_wait: num_waiters underflow (was {old})");
    }
}
