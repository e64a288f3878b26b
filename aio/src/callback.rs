//! A user callback that one thread runs while any thread may delete it.
//!
//! Bottom halves, timers and fd handlers all store a boxed closure that the home thread
//! runs and that a handle on any thread may delete — also from inside the callback
//! itself. The rules:
//!
//! 1. The closure is only ever called by the thread that [`take`](CallbackCell::take)s
//!    it out; while it is out, the cell is empty, so nobody else can run it.
//! 2. [`kill`](CallbackCell::kill) marks the cell dead: a later `take` returns `None`,
//!    and the closure is dropped either at once (if it is in the cell) or by
//!    [`put_back`](CallbackCell::put_back) when the current run returns.
//! 3. Closures are dropped outside the lock, so a closure whose drop deletes other
//!    callbacks cannot deadlock.
//! 4. A closure that panics is put back all the same (during unwinding), so a panicking
//!    bottom half, handler or timer stays usable: the panic propagates, the callback
//!    does not vanish.

use crate::sync::{Mutex, lock};

struct Slot<F: ?Sized> {
    f: Option<Box<F>>,
    dead: bool,
}

/// See the module docs.
pub(crate) struct CallbackCell<F: ?Sized> {
    slot: Mutex<Slot<F>>,
}

impl<F: ?Sized> CallbackCell<F> {
    pub(crate) fn new(f: Box<F>) -> Self {
        Self {
            slot: Mutex::new(Slot {
                f: Some(f),
                dead: false,
            }),
        }
    }

    /// Takes the closure out to run it (rule 1); `None` when dead or already running.
    pub(crate) fn take(&self) -> Option<Box<F>> {
        let mut slot = lock(&self.slot);
        if slot.dead { None } else { slot.f.take() }
    }

    /// Returns a closure after running it; drops it instead when killed meanwhile (rule 2).
    pub(crate) fn put_back(&self, f: Box<F>) {
        let mut slot = lock(&self.slot);
        if slot.dead {
            drop(slot);
            drop(f);
        } else {
            slot.f = Some(f);
        }
    }

    /// Marks the cell dead and drops the closure if it is not running (rule 2).
    pub(crate) fn kill(&self) {
        let f = {
            let mut slot = lock(&self.slot);
            slot.dead = true;
            slot.f.take()
        };
        drop(f);
    }

    /// Whether the closure is out of its cell, running, and not killed.
    #[cfg(all(loom, test))]
    pub(crate) fn is_running(&self) -> bool {
        let slot = lock(&self.slot);
        !slot.dead && slot.f.is_none()
    }

    /// Whether [`kill`](Self::kill) was called.
    pub(crate) fn is_dead(&self) -> bool {
        lock(&self.slot).dead
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

    /// Runs `f`, which [`take`](Self::take) returned for this cell, with `call`, and
    /// puts it back on return or unwind (rules 2 and 4).
    pub(crate) fn run_taken(&self, f: Box<F>, call: impl FnOnce(&mut F)) {
        /// Puts the closure back when dropped, on return or unwind (rule 4).
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
