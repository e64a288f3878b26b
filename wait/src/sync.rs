//! The one place this crate takes its atomics and locks from: the aioctx crates' one
//! loom shim (`aioctx_aio`'s `sync.rs` says why it is a macro).
//!
//! Under `cfg(loom)` with `test` (the crate's own unit tests) or the `loom-model`
//! feature (which the graph crate's loom models turn on, to run the real protocol) they
//! resolve to [loom]'s model-checked versions. Every other build — integration tests and
//! doctests compiled with `--cfg loom` included, which link the ordinary library — gets
//! `std`. No other file imports `std::sync::atomic`.
//!
//! [loom]: https://docs.rs/loom

aioctx_aio::loom_sync_shim!(any(test, feature = "loom-model"));
