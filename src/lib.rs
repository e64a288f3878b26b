//! aioctx: QEMU's `AioContext`, `aio_wait` and block-graph lock, in Rust, on io_uring.
//!
//! This facade re-exports the three layers: [`aio`] (the event loop), [`wait`]
//! (`aio_wait`: kick and wait-while) and [`graph`] (the graph reader/writer lock).
#![deny(missing_docs)]

pub use aioctx_aio as aio;
pub use aioctx_graph as graph;
pub use aioctx_wait as wait;
