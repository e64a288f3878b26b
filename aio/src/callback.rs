//! A user callback that one thread runs while any thread may delete it.
//!
//! Bottom halves, timers and fd handlers all store a boxed closure that the home thread
//! runs and that a handle on any thread may delete — also from inside the callback
//! itself. The cell is one state word (`RUNNING`, `DEAD`) beside the closure; no lock.
//! The rules:
//!
//! [CC1] The closure is only ever called by the thread that [`take`](CallbackCell::take)s
//!    it out: the `fetch_or` that raised `RUNNING` on a live cell. While it is out,
//!    `RUNNING` stays up, so nobody else can take it (a nested run finds `RUNNING` and
//!    does nothing).
//! [CC2] [`kill`](CallbackCell::kill) raises `DEAD` with one `fetch_or`: a later `take`
//!    returns `None`, and the closure is dropped either by the killer (when its RMW found
//!    `RUNNING` down: the closure is in the cell and nobody else may touch it) or by
//!    [`put_back`](CallbackCell::put_back) (when its RMW, lowering `RUNNING`, finds
//!    `DEAD` up). The two RMWs are on one word, so exactly one of them sees the other:
//!    the closure is dropped exactly once, never while it runs.
//! [CC3] Who may touch the closure slot: the thread whose RMW raised `RUNNING` on a live
//!    cell, until its RMW lowers it; or the killer whose RMW found neither bit. Those
//!    ownerships never overlap ([CC2]), which is what makes the `UnsafeCell` sound.
//! [CC4] A closure that panics is put back all the same (during unwinding), so a panicking
//!    bottom half, handler or timer stays usable: the panic propagates, the callback
//!    does not vanish.
//! [CC5] A closure that runs only once (a oneshot bottom half) is retired by its runner
//!    instead of put back: [`run_once`](CallbackCell::run_once) raises `DEAD` with one
//!    RMW after the call (on return or unwind), leaving `RUNNING` up so that nobody can
//!    take it again, then drops the closure it holds. A killer meanwhile found `RUNNING`
//!    up and left the closure alone ([CC2]); a later killer finds `DEAD` and does
//!    nothing. The closure is dropped exactly once, by the runner, never while it runs:
//!    one RMW where `put_back` and `kill` took two.
//!
//! A run costs two uncontended RMWs and no lock (it used to take a mutex twice). The
//! closure's drop never runs under any lock, so a closure whose drop deletes other
//! callbacks cannot deadlock.

use std::cell::UnsafeCell;

use crate::sync::atomic::{AtomicU8, Ordering};

/// Taken out by a runner ([CC1]).
const RUNNING: u8 = 1 << 0;
/// Killed ([CC2]).
const DEAD: u8 = 1 << 1;

/// See the module docs.
pub(crate) struct CallbackCell<F: ?Sized> {
    state: AtomicU8,
    f: UnsafeCell<Option<Box<F>>>,
}

// SAFETY: the closure slot is touched by one thread at a time ([CC3]), and the closure
// moves between threads only through it, so `F: Send` suffices for both.
unsafe impl<F: ?Sized + Send> Sync for CallbackCell<F> {}
// SAFETY: as above; the cell owns a `Box<F>` with `F: Send`.
unsafe impl<F: ?Sized + Send> Send for CallbackCell<F> {}

impl<F: ?Sized> CallbackCell<F> {
    pub(crate) fn new(f: Box<F>) -> Self {
        Self {
            state: AtomicU8::new(0),
            f: UnsafeCell::new(Some(f)),
        }
    }

    /// Takes the closure out to run it ([CC1]); `None` when dead or already running.
    pub(crate) fn take(&self) -> Option<Box<F>> {
        // [CB1] AcqRel: Acquire pairs with [CB2] in `put_back` (what the last run did to
        // the closure is visible to this one); Release is for `kill`'s Acquire ([CB3]).
        let old = self.state.fetch_or(RUNNING, Ordering::AcqRel);
        if old != 0 {
            // Dead (the killer owns or dropped the closure), or running further up a
            // stack (its runner owns it).
            return None;
        }
        // SAFETY: this thread's RMW raised `RUNNING` on a live cell: it alone may touch
        // the slot until `put_back` lowers it ([CC3]).
        unsafe { (*self.f.get()).take() }
    }

    /// Returns a closure after running it; drops it instead when killed meanwhile ([CC2]).
    pub(crate) fn put_back(&self, f: Box<F>) {
        // SAFETY: `RUNNING` is still up from this run's `take` ([CC3]).
        unsafe { *self.f.get() = Some(f) };
        // [CB2] AcqRel: Release publishes the closure (and what it did) to the next
        // `take` ([CB1]) or to a later killer ([CB3]); Acquire pairs with [CB3] when a
        // kill came meanwhile.
        let old = self.state.fetch_and(!RUNNING, Ordering::AcqRel);
        if old & DEAD != 0 {
            // Killed during the run: the killer left the drop to us ([CC2]).
            // SAFETY: the killer's RMW found `RUNNING` up and so never touches the slot;
            // no later `take` can succeed on a dead cell.
            drop(unsafe { (*self.f.get()).take() });
        }
    }

    /// Marks the cell dead and drops the closure if it is not running ([CC2]).
    pub(crate) fn kill(&self) {
        // [CB3] AcqRel: Acquire pairs with [CB2] (the last run's writes to the closure
        // happen before its drop here); Release pairs with [CB2]'s Acquire.
        let old = self.state.fetch_or(DEAD, Ordering::AcqRel);
        if old & (RUNNING | DEAD) == 0 {
            // SAFETY: this RMW found neither bit: no runner holds the slot and none can
            // take it any more; earlier killers found `DEAD` down only before this RMW,
            // so this is the one killer that owns the slot ([CC3]).
            drop(unsafe { (*self.f.get()).take() });
        }
    }

    /// Whether the closure is out of its cell, running, and not killed.
    #[cfg(all(loom, test))]
    pub(crate) fn is_running(&self) -> bool {
        // Acquire: pairs with [CB2], so a run seen finished is seen with its effects.
        self.state.load(Ordering::Acquire) == RUNNING
    }

    /// Whether [`kill`](Self::kill) was called (a snapshot: `DEAD` is never lowered).
    pub(crate) fn is_dead(&self) -> bool {
        // Acquire: pairs with [CB3], as the lock that guarded the flag used to; what the
        // killer did before killing is visible to a caller that sees it dead.
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    /// Runs the closure with `call` if it is alive and not already running; returns
    /// whether it ran.
    pub(crate) fn run(&self, call: impl FnOnce(&mut F)) -> bool {
        match self.take() {
            Some(f) => {
                self.run_taken(f, call);
                true
            }
            None => false,
        }
    }

    /// Runs the closure with `call` if it is alive and not already running, then frees
    /// it and leaves the cell dead, on return or unwind ([CC5]); returns whether it ran.
    pub(crate) fn run_once(&self, call: impl FnOnce(&mut F)) -> bool {
        /// Retires the closure when dropped, on return or unwind ([CC5]).
        struct Retire<'a, F: ?Sized> {
            cell: &'a CallbackCell<F>,
            f: Option<Box<F>>,
        }
        impl<F: ?Sized> Drop for Retire<'_, F> {
            fn drop(&mut self) {
                // [CB4] Release: pairs with the Acquire of `is_dead` and of a later
                // `kill` ([CB3]): a thread that sees the cell dead sees the run done.
                self.cell.state.fetch_or(DEAD, Ordering::Release);
                drop(self.f.take());
            }
        }
        let Some(f) = self.take() else {
            return false;
        };
        let mut retire = Retire {
            cell: self,
            f: Some(f),
        };
        call(retire.f.as_mut().expect("set above"));
        true
    }

    /// Runs `f`, which [`take`](Self::take) returned for this cell, with `call`, and
    /// puts it back on return or unwind ([CC2] and [CC4]).
    pub(crate) fn run_taken(&self, f: Box<F>, call: impl FnOnce(&mut F)) {
        /// Puts the closure back when dropped, on return or unwind ([CC4]).
        struct Running<'a, F: ?Sized> {
            cell: &'a CallbackCell<F>,
            f: Option<Box<F>>,
        }
        impl<F: ?Sized> Drop for Running<'_, F> {
            fn drop(&mut self) {
                if let Some(f) = self.f.take() {
                    self.cell.put_back(f);
                }
            }
        }
        let mut running = Running {
            cell: self,
            f: Some(f),
        };
        call(running.f.as_mut().expect("set above"));
    }
}
