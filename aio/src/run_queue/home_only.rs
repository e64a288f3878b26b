//! A cell that only a run queue's home thread touches (\[RQ6\] in `run_queue.rs`).
//!
//! Under the loom models it is loom's `UnsafeCell`, so a model in which another thread
//! reached the home queue would fail on the unsynchronised access.

#[cfg(not(all(loom, test)))]
type Raw<T> = std::cell::UnsafeCell<T>;
#[cfg(all(loom, test))]
type Raw<T> = loom::cell::UnsafeCell<T>;

/// A value only the home thread reads or writes ([RQ6]).
pub(super) struct HomeOnly<T>(Raw<T>);

// SAFETY: [RQ6]: one thread (the queue's home) touches the value, through `with`,
// whose caller promises it; the value reaches another thread only when the owner is
// dropped (exclusively, through `Arc`'s own synchronisation), so `T: Send` suffices.
unsafe impl<T: Send> Sync for HomeOnly<T> {}

impl<T> HomeOnly<T> {
    pub(super) fn new(value: T) -> Self {
        Self(Raw::new(value))
    }

    /// Runs `f` on the value.
    ///
    /// # Safety
    /// The caller is the queue's home thread ([RQ6]), and `f` runs no code that could
    /// reach this cell again (no user code: no task is run or dropped inside it).
    pub(super) unsafe fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(all(loom, test)))]
        {
            // SAFETY: exclusive per the caller's contract (one thread, no re-entry).
            f(unsafe { &mut *self.0.get() })
        }
        #[cfg(all(loom, test))]
        {
            // SAFETY: as above; loom checks the "one thread" part.
            self.0.with_mut(|p| f(unsafe { &mut *p }))
        }
    }
}
