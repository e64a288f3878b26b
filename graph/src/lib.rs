//! QEMU's block-graph reader/writer lock on aioctx (QEMU: block/graph-lock.c), with the
//! e3082ab3b3 fix, and a graph container whose lock rules are compile errors.
//!
//! Readers are tasks on any [`AioContext`](aioctx_aio::AioContext): each thread that
//! runs contexts counts its own readers, found through a thread-local pointer, so two
//! contexts reading at once never share a cache line. The read side's fence is a
//! compiler fence where the kernel grants `membarrier` (the writer pays with one
//! `membarrier` per wait; see [`FenceMode`](aioctx_wait::FenceMode)). The
//! writer runs on the main loop and waits with `aio_wait` until the sum is zero.
//! `rdunlock` always kicks the writer — free when nobody waits — because the writer
//! zeroes `has_writer` while it polls: see `state.rs` for the protocol and the
//! interleaving of the seed commit, and [`UnlockKick`] for the pre-fix policy kept to
//! reproduce the hang.
//!
//! ```
//! use aioctx_graph::graph_lock;
//! aioctx_aio::main_context().make_current();
//! let iothread = aioctx_aio::IoThread::new("io0")?;
//! // A reader on the iothread...
//! let reader = iothread.ctx().spawn(async {
//!     let _guard = graph_lock().rdlock().await;
//! });
//! aioctx_aio::main_context().block_on(reader).unwrap();
//! // ...and the writer on the main loop.
//! let w = graph_lock().wrlock();
//! assert_eq!(graph_lock().readers(), 0);
//! drop(w);
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]

mod state;
mod sync;

#[cfg(not(all(loom, test)))]
mod container;
#[cfg(not(all(loom, test)))]
mod lock;
#[cfg(not(all(loom, test)))]
mod quiesce;

#[cfg(all(loom, test))]
mod loom_tests;

#[cfg(not(all(loom, test)))]
pub use container::{Graph, GraphError, NodeId};
#[cfg(not(all(loom, test)))]
pub use lock::{GraphLock, MainLoopGuard, RdLock, ReadAccess, ReadGuard, WriteGuard, graph_lock};
#[cfg(not(all(loom, test)))]
pub use quiesce::{Quiesce, QuiesceRegistration};
pub use state::{ReaderCounter, UnlockKick};
