//! The one test kit of the aioctx workspace: what the integration tests of every crate,
//! the fuzz checks (`aioctx-fuzzcheck`) and the benches share, so that no helper exists
//! twice. Not published; a dev-dependency only (the fuzz checks excepted).
//!
//! - Hangs become failures with a diagnosis: [`Watchdog`] (labelled with the running
//!   test's name, which libtest gives the test's thread), [`wait_until`],
//!   [`wait_asleep`], [`Rescue`]; [`HANG_LIMIT`] is the one limit they share.
//! - The main context: [`on_main`] runs a test body on the process's one main-loop
//!   thread (the main context's home), one body at a time — the pattern every test of
//!   `wait_while(None)`, `bh_oneshot` or the graph writer needs (see the aio crate's
//!   `testing` guide).
//! - Futures: [`ParkOnce`] (pending once, its waker published to a slot) and
//!   [`poll_once`].
//! - Contexts and descriptors: [`new_ctx`], [`uring_ctx`] (skips with a printed line
//!   where io_uring is unavailable or not selected), [`say_skipped`], [`pipe`],
//!   [`write_fd`], [`tempfile`].
//! - [`Rng`]: a seeded, deterministic generator.
//! - [`CountingAlloc`]: a per-thread counting global allocator, for the "allocates
//!   nothing" claims.
#![deny(missing_docs)]

mod alloc;
mod ctx;
mod fd;
mod fences;
mod future;
mod main_loop;
mod rescue;
mod rng;
mod watchdog;

pub use alloc::{CountingAlloc, allocs, count_allocs, counting_alloc_installed};
pub use ctx::{new_ctx, say_skipped, try_uring_ctx, uring_ctx, wait_asleep, wait_until};
pub use fd::{TempFile, pipe, tempfile, write_fd};
pub use fences::{FENCE_MODES, rerun_in_each_fence_mode};
pub use future::{ParkOnce, poll_once};
pub use main_loop::{on_main, on_main_with, panic_message};
pub use rescue::Rescue;
pub use rng::Rng;
pub use watchdog::{HANG_LIMIT, Watchdog, test_name, watchdog};
