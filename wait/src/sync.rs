//! The one place this crate takes its atomics from.
//!
//! Under `cfg(all(loom, test))` they resolve to [loom]'s model-checked versions, so the
//! crate's unit tests explore every interleaving of the wait/kick protocol. Every other
//! build — integration tests and doctests compiled with `--cfg loom` included, which
//! link the ordinary library — gets `std`. No other file imports `std::sync::atomic`.
//!
//! [loom]: https://docs.rs/loom

#[cfg(all(loom, test))]
pub(crate) use loom::sync::atomic;

#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::atomic;
