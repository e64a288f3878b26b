//! Kernel back ends. Today one: io_uring (`uring.rs`).

pub(crate) mod uring;
