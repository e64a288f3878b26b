//! The one place this crate — and, through [`loom_sync_shim!`](crate::loom_sync_shim),
//! the wait and graph crates — takes its synchronization primitives from.
//!
//! Under `cfg(all(loom, test))` the protocol types resolve to [loom]'s model-checked
//! versions, so the crate's own unit tests can explore every interleaving of the notify
//! and bottom-half protocols. Every other build — including integration tests and
//! doctests compiled with `--cfg loom`, which link the ordinary library — gets `std`.
//! No other file imports `std::sync::atomic` directly.
//!
//! # One shim for three crates
//!
//! The shim is a macro rather than a module the other crates import, because what
//! selects loom is a `cfg` of the *using* crate: `test` is set only while that crate's
//! own unit tests are built (a dependency of them is built without it), and the wait
//! crate adds its `loom-model` feature (which the graph crate's models turn on, to run
//! the real wait/kick code on loom). A re-exported module would carry this crate's
//! answer to those `cfg`s into the others: under the wait crate's loom tests, aio is
//! built without `test` and its types would be `std`'s. The macro expands in the calling
//! crate, so its `cfg` and its `loom::` path are that crate's; each crate's `sync.rs` is
//! one line naming the condition under which it models.
//!
//! [loom]: https://docs.rs/loom

/// Expands to a crate's loom shim: `Mutex`, `MutexGuard`, `atomic` from loom when
/// `cfg(all(loom, $model))` holds in the calling crate and from `std` otherwise, a
/// poison-ignoring [`lock`], and `std`'s `Arc` (what loom checks is the protocols'
/// atomics, not the lifetime bookkeeping of `Arc`). The calling crate needs `loom` as a
/// dependency under that condition. Internal to the aioctx crates; not a public API.
///
/// ```ignore
/// // wait/src/sync.rs
/// aioctx_aio::loom_sync_shim!(any(test, feature = "loom-model"));
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! loom_sync_shim {
    ($model:meta) => {
        #[cfg(all(loom, $model))]
        #[allow(unused_imports)]
        pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

        #[cfg(not(all(loom, $model)))]
        #[allow(unused_imports)]
        pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

        /// Reference counting stays `std` even under loom: what loom checks here is the
        /// atomics of the protocols, not the lifetime bookkeeping of `Arc`.
        #[allow(unused_imports)]
        pub(crate) use std::sync::Arc;

        /// Locks `m`, ignoring poisoning: every critical section in these crates leaves
        /// its data consistent before running user code (and at every unlock), so a
        /// panic elsewhere cannot tear it.
        #[allow(dead_code)]
        pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
            #[cfg(all(loom, $model))]
            {
                m.lock().unwrap()
            }
            #[cfg(not(all(loom, $model)))]
            {
                m.lock()
                    .unwrap_or_else(::std::sync::PoisonError::into_inner)
            }
        }
    };
}

loom_sync_shim!(test);
