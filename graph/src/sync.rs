//! The one place this crate takes its atomics and locks from: loom's under
//! `cfg(all(loom, test))` (the crate's own model tests), `std` otherwise — see
//! `aioctx_aio`'s `sync.rs` for why the cfg includes `test`.

#[cfg(all(loom, test))]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

/// Locks `m`, ignoring poisoning: the registry is consistent at every unlock.
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

pub(crate) use std::sync::Arc;
