//! The one place this crate takes its atomics from.
//!
//! Under `cfg(loom)` with `test` (the crate's own unit tests) or the `loom-model`
//! feature (which the graph crate's loom models turn on, to run the real protocol) they
//! resolve to [loom]'s model-checked versions. Every other build — integration tests and
//! doctests compiled with `--cfg loom` included, which link the ordinary library — gets
//! `std`. No other file imports `std::sync::atomic`.
//!
//! [loom]: https://docs.rs/loom

#[cfg(all(loom, any(test, feature = "loom-model")))]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

#[cfg(not(all(loom, any(test, feature = "loom-model"))))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

/// Locks `m`, ignoring poisoning: the protocol's lists are consistent at every unlock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    {
        m.lock().unwrap()
    }
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
