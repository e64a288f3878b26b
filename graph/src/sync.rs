//! The one place this crate takes its atomics and locks from: loom's under
//! `cfg(all(loom, test))` (the crate's own model tests), `std` otherwise — the aioctx
//! crates' one loom shim (`aioctx_aio`'s `sync.rs` says why it is a macro and why the
//! cfg includes `test`).

aioctx_aio::loom_sync_shim!(test);
