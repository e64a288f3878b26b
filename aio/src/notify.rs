//! The notify protocol: a wake-up costs a syscall only when the loop really sleeps.
//!
//! State (QEMU: `AioContext::notify_me`, `AioContext::notified`):
//! - `notify_me`: written only by the home thread; non-zero while it is about to sleep or
//!   sleeping in the kernel.
//! - `notified`: set by producers, cleared by the home thread once per `poll`.
//!
//! Invariants:
//! [N1] Work is published (BH list push, flag `fetch_or`, queue push) *before* the
//!    producer calls [`NotifyState::notify`].
//! [N2] Of all producers between two clears of `notified`, exactly one — the one whose
//!    swap turned it `false → true` — goes on to the fence and the `notify_me` check, so
//!    one sleep costs at most one eventfd write however many notifies arrive.
//! [N3] The home thread sleeps only after raising `notify_me`, fencing, and seeing
//!    `notified == false`.
//! [N4] The home thread clears `notified` with an acquiring swap, so the producer whose
//!    flag it clears has its work visible to the bottom-half pass that follows.
//!
//! The interleaving it must survive (a producer racing with the sleeper):
//!
//! ```text
//!   home thread (poll, blocking)          producer (any thread)
//!   ----------------------------          ---------------------
//!   timeout = compute (no BH yet)
//!                                         push BH                       ([N1])
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
//! ([N4]) reads from the skipping producer's swap, so it sees its work.
//!
//! # Home-thread fast path
//!
//! [N5] A notify made on the home thread while its `notify_me` is zero raises only
//!    `home_notified`, a flag no other thread touches (plain Relaxed load and store):
//!    no swap, no fence, no eventfd write. `prepare_sleep` refuses to sleep while it is
//!    set, and `accept` lowers it, exactly as for `notified`.
//! [N6] Whether the caller is the home thread is decided by comparing its thread id with
//!    `home`, written once (the home thread binds itself, [`NotifyState::bind_home`])
//!    and never changed: a thread reading its own id there is the home thread, since
//!    only the binder wrote it; any other thread reads `0` or another id and takes the
//!    cross-thread path of [N1]-[N4], unchanged.
//!
//! Proof that [N5] loses no wake-up. The only thread that can sleep on this state is
//! the home thread, and it is the notifier: it cannot be asleep while it notifies. What
//! must hold is that its *next* sleep does not happen while the notified work waits.
//! `notify_me` has one writer, the home thread, so its own Relaxed read is exact: zero
//! means it is outside `prepare_sleep` .. `finish_sleep`, i.e. it has not yet made the
//! sleep decision of its next wait. That decision (`prepare_sleep`) comes later in the
//! same thread's program order and reads `home_notified` — its own store — so it sees
//! `true` and does not sleep; the flag stays up until `accept`, which comes after that
//! decision. The work itself was published by the same thread, so program order makes
//! it visible to the bottom-half pass, with no release/acquire pair needed. A home-thread
//! notify made *inside* that window (`notify_me != 0`: possible only from code the
//! wait itself runs, such as a destructor) takes the cross-thread path, which sees
//! `notify_me != 0` after its fence and writes the eventfd, so the wait returns.
//! The fast path never touches `notified`, so the Dekker pair of the cross-thread path
//! and [N2]'s election are exactly as before; both paths can run at once (the loom
//! models in `loom_tests.rs` run a home-thread and a cross-thread producer together).

use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

/// The flags of the notify protocol and the home thread's id. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct NotifyState {
    notify_me: AtomicU32,
    notified: AtomicBool,
    /// [N5]: written and read by the home thread only.
    home_notified: AtomicBool,
    /// [N6]: the home thread's [`thread_id`], `0` until one binds itself.
    home: AtomicU64,
}

/// What [`NotifyState::notify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notified {
    /// The home thread notified itself ([N5]): nothing shared was touched.
    Home,
    /// Another thread notified an awake loop, or found the notify already pending.
    Awake,
    /// The loop sleeps or is about to: the caller must write the eventfd.
    Asleep,
}

impl NotifyState {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Binds the calling thread as home if none is ([N6]). Returns the home thread's
    /// id: the caller's own when it is (or just became) home.
    pub(crate) fn bind_home(&self) -> u64 {
        let me = thread_id();
        // Relaxed: the id is only ever compared with the reader's own id ([N6]); the
        // state's construction was ordered before this call by handing over the `Arc`.
        match self
            .home
            .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => me,
            Err(owner) => owner,
        }
    }

    /// Whether the calling thread is the home thread ([N6]).
    #[inline]
    pub(crate) fn is_home(&self) -> bool {
        // Relaxed: see `bind_home`.
        self.home.load(Ordering::Relaxed) == thread_id()
    }

    /// Producer side, after publishing work: says whether the caller must wake the home
    /// thread (write the eventfd) — [`Notified::Asleep`].
    pub(crate) fn notify(&self) -> Notified {
        // [N5]; `notify_me` is exact for its only writer, the home thread.
        if self.notify_me.load(Ordering::Relaxed) == 0 && self.is_home() {
            self.home_notified.store(true, Ordering::Relaxed);
            return Notified::Home;
        }
        if self.notify_cross() {
            Notified::Asleep
        } else {
            Notified::Awake
        }
    }

    /// The cross-thread path of [`notify`](Self::notify) ([N1]-[N4]): returns `true`
    /// when the caller must write the eventfd.
    fn notify_cross(&self) -> bool {
        // [P1] AcqRel: releases the published work to the home thread's clearing swap
        // ([C4]), and is the RMW that elects one producer per clear ([N2]).
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
        // [N5]: the home thread's own notify since the last `accept`.
        if self.home_notified.load(Ordering::Relaxed) {
            return false;
        }
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
        // [N5]: home thread only; a plain store.
        if self.home_notified.load(Ordering::Relaxed) {
            self.home_notified.store(false, Ordering::Relaxed);
        }
        if self.notified.load(Ordering::Relaxed) {
            // [C4] Acquire: pairs with [P1]; makes the work of every producer that saw
            // `notified` set visible to the bottom-half pass that follows ([N4]).
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
        self.notified.load(Ordering::Relaxed) || self.home_notified.load(Ordering::Relaxed)
    }
}

#[cfg(not(all(loom, test)))]
static NEXT_THREAD_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[cfg(not(all(loom, test)))]
thread_local! {
    static THREAD_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A process-unique, non-zero id of the calling thread (ids are never reused).
#[cfg(not(all(loom, test)))]
#[inline]
pub(crate) fn thread_id() -> u64 {
    THREAD_ID.with(|id| match id.get() {
        0 => {
            // Relaxed: only uniqueness matters, which the RMW gives.
            let new = NEXT_THREAD_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            id.set(new);
            new
        }
        known => known,
    })
}

// Under loom, model threads share one OS thread: the id is a loom thread-local.
#[cfg(all(loom, test))]
static NEXT_THREAD_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[cfg(all(loom, test))]
loom::thread_local! {
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A process-unique, non-zero id of the calling (loom) thread.
#[cfg(all(loom, test))]
pub(crate) fn thread_id() -> u64 {
    THREAD_ID.with(|id| *id)
}
