//! The one place this crate takes its synchronization primitives from.
//!
//! Under `cfg(all(loom, test))` the protocol types resolve to [loom]'s model-checked
//! versions, so the crate's own unit tests can explore every interleaving of the notify
//! and bottom-half protocols. Every other build — including integration tests and
//! doctests compiled with `--cfg loom`, which link the ordinary library — gets `std`.
//! No other file imports `std::sync::atomic` directly.
//!
//! [loom]: https://docs.rs/loom

#[cfg(all(loom, test))]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

/// Locks `m`, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before running user code, so a panic elsewhere cannot tear it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(all(loom, test))]
    {
        m.lock().unwrap()
    }
    #[cfg(not(all(loom, test)))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reference counting stays `std` even under loom: what loom checks here is the
/// atomics of the protocols, not the lifetime bookkeeping of `Arc`.
pub(crate) use std::sync::Arc;
