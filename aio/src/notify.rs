//! The notify protocol: a wake-up costs a syscall only when the loop really sleeps.
//!
//! State (QEMU: `AioContext::notify_me`, `AioContext::notified`):
//! - `notify_me`: written only by the home thread; non-zero while it is about to sleep or
//!   sleeping in the kernel.
//! - `notified`: set by producers, cleared by the home thread once per `poll`.
//!
//! Invariants:
//! 1. Work is published (BH list push, flag `fetch_or`, queue push) *before* the
//!    producer calls [`NotifyState::notify`].
//! 2. Of all producers between two clears of `notified`, exactly one — the one whose
//!    swap turned it `false → true` — goes on to the fence and the `notify_me` check, so
//!    one sleep costs at most one eventfd write however many notifies arrive.
//! 3. The home thread sleeps only after raising `notify_me`, fencing, and seeing
//!    `notified == false`.
//! 4. The home thread clears `notified` with an acquiring swap, so the producer whose
//!    flag it clears has its work visible to the bottom-half pass that follows.
//!
//! The interleaving it must survive (a producer racing with the sleeper):
//!
//! ```text
//!   home thread (poll, blocking)          producer (any thread)
//!   ----------------------------          ---------------------
//!   timeout = compute (no BH yet)
//!                                         push BH                       (rule 1)
//!                                         notified.swap(true) == false  [P1]
//!                                         fence(SeqCst)                 [P2]
//!   notify_me = 1
//!   fence(SeqCst)                 [C2]
//!   notified?  -> true: don't sleep       notify_me? -> 0: no write
//! ```
//!
//! Either `[P2]` precedes `[C2]` in the SeqCst order, and the home thread sees
//! `notified`, or `[C2]` precedes `[P2]`, and the producer sees `notify_me != 0` and
//! writes the eventfd. Both cannot miss: that is the Dekker pair `[P2]`/`[C2]`.
//! A producer whose swap found `notified` already `true` skips the fence: the producer
//! that set it is still bound by the same pair, and the home thread's clearing swap
//! (rule 4) reads from the skipping producer's swap, so it sees its work.

use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

/// The two flags of the notify protocol. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct NotifyState {
    notify_me: AtomicU32,
    notified: AtomicBool,
}

impl NotifyState {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Producer side, after publishing work: returns `true` when the caller must wake
    /// the home thread (write the eventfd).
    pub(crate) fn notify(&self) -> bool {
        // [P1] AcqRel: releases the published work to the home thread's clearing swap
        // ([C4]), and is the RMW that elects one producer per clear (rule 2).
        if self.notified.swap(true, Ordering::AcqRel) {
            return false;
        }
        // [P2] pairs with [C2] in `prepare_sleep`.
        fence(Ordering::SeqCst);
        self.notify_me.load(Ordering::Relaxed) != 0
    }

    /// Home thread, before a blocking wait: raises `notify_me` and returns `true` when it
    /// may sleep (no notify arrived since the last [`accept`](Self::accept)).
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.notify_me.store(1, Ordering::Relaxed);
        // [C2] pairs with [P2] in `notify`.
        fence(Ordering::SeqCst);
        !self.notified.load(Ordering::Relaxed)
    }

    /// Home thread, after the wait: lowers `notify_me`.
    pub(crate) fn finish_sleep(&self) {
        // Release: nothing after the wait may be reordered before the lowering is seen by
        // producers; pairs with the `notify_me` load after [P2].
        self.notify_me.store(0, Ordering::Release);
    }

    /// Home thread, once per poll before running bottom halves: clears `notified`.
    pub(crate) fn accept(&self) {
        if self.notified.load(Ordering::Relaxed) {
            // [C4] Acquire: pairs with [P1]; makes the work of every producer that saw
            // `notified` set visible to the bottom-half pass that follows (rule 4).
            self.notified.swap(false, Ordering::Acquire);
        }
    }

    /// Whether the home thread has raised `notify_me`: it sleeps or is about to (a hint
    /// for diagnostics only).
    pub(crate) fn is_sleeping(&self) -> bool {
        self.notify_me.load(Ordering::Relaxed) != 0
    }

    /// Whether a notify is pending (for busy polling; a hint only).
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Relaxed)
    }
}
