//! An explicit cancel for one operation ([`CancelHandle`]), from any thread, while its
//! future stays alive.
//!
//! Rules:
//! [CH1] `cancel` marks the operation `cancel_requested` under its shared lock — so it is
//!    not started or resubmitted, as a dropped future's or a passed deadline's
//!    ([DL2] (`io/deadline.rs`)) — and, if the back end named it already, issues the
//!    back end's cancel by that name ([IO6] (`io.rs`): `ASYNC_CANCEL` of its
//!    generation-tagged `user_data` on io_uring, the stream table entry on epoll). The
//!    `record_id` handshake (`io/cancel.rs`) sees `cancel_requested` too, so a cancel
//!    racing the push is issued by exactly one side.
//! [CH2] The future is untouched: it resolves when the operation's final completion
//!    arrives, with `ECANCELED` if the cancel won, or with the real result if the
//!    operation completed first (or could not be interrupted: a syscall a pool worker
//!    runs, an io-wq worker's operation). The buffer comes back either way.
//! [CH3] A cancel after the result is in, after the future was dropped, or with the
//!    context gone does nothing (the context's drop cancelled what was in flight).

use std::fmt;
use std::sync::Weak;

use super::cancel::{Shared, Slot, cancel};
use crate::context::AioContext;
use crate::sync::{Arc, Mutex, lock};

/// The part of an operation's shared state a cancel needs, with its buffer type erased.
trait Cancellable: Send + Sync {
    /// Marks the operation `cancel_requested` if it still waits; its back-end name if
    /// it has one ([CH1]).
    fn request(&self) -> Option<u64>;
}

impl<T: Send> Cancellable for Mutex<Shared<T>> {
    fn request(&self) -> Option<u64> {
        let mut shared = lock(self);
        if !matches!(shared.slot, Slot::Waiting(_)) {
            return None; // done, taken, or dropped ([CH3])
        }
        shared.cancel_requested = true;
        shared.id
    }
}

/// Cancels one operation of a [`RingOp`](super::RingOp) while its future stays alive,
/// from any thread (QEMU: `bdrv_aio_cancel_async`); made by
/// [`RingOp::cancel_handle`](super::RingOp::cancel_handle). Cloneable; cancelling twice,
/// or after completion, does nothing.
///
/// ```
/// use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
/// let mut fds = [0; 2];
/// // SAFETY: `fds` has room for the two descriptors.
/// assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
/// // SAFETY: pipe just returned them.
/// let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
/// let ctx = aioctx_aio::AioContext::new()?;
/// let read = ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0);
/// read.cancel_handle().cancel(); // nobody writes: cancel it
/// let (res, _buf) = ctx.block_on(read);
/// assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct CancelHandle {
    op: Arc<dyn Cancellable>,
    ctx: Weak<AioContext>,
}

impl CancelHandle {
    pub(super) fn new<T: Send + 'static>(
        shared: &Arc<Mutex<Shared<T>>>,
        ctx: Weak<AioContext>,
    ) -> Self {
        let op: Arc<dyn Cancellable> = Arc::clone(shared) as Arc<dyn Cancellable>;
        Self { op, ctx }
    }

    /// A handle of an operation that never reaches a back end (refused before it was
    /// submitted): its cancel does nothing ([CH3]).
    pub(crate) fn inert() -> Self {
        let shared = Arc::new(Mutex::new(Shared::<()>::waiting()));
        lock(&shared).slot = Slot::Taken;
        Self::new(&shared, Weak::new())
    }

    /// Asks for the operation to be cancelled (\[CH1\]); its future then resolves with
    /// `ECANCELED`, or with the operation's real result if it completed first or could
    /// not be interrupted (a syscall already running on the epoll back end's worker
    /// pool). On the home thread with the loop idle, an io_uring cancel is submitted
    /// before this returns; elsewhere it is handed to the loop, which is notified.
    pub fn cancel(&self) {
        if let Some(id) = self.op.request() {
            cancel(&self.ctx, id);
        }
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

/// loom model of the handshake between the home thread naming an operation
/// (`record_id`) and a cancel handle on another thread (`request`): exactly one of them
/// issues the back end's cancel, never neither (a lost cancel) and never both.
#[cfg(all(loom, test))]
mod loom_cancel_handle {
    use super::super::cancel::{Shared, record_id};
    use super::Cancellable;
    use crate::sync::{Arc, Mutex};

    #[test]
    fn exactly_one_side_cancels_a_requested_operation() {
        loom::model(|| {
            let shared = Arc::new(Mutex::new(Shared::<Vec<u8>>::waiting()));
            let s = Arc::clone(&shared);
            let home = loom::thread::spawn(move || record_id(&s, 7));
            let handle = shared.request() == Some(7);
            let pusher = home.join().unwrap();
            assert!(
                handle ^ pusher,
                "handle cancels: {handle}, home thread cancels: {pusher}"
            );
        });
    }
}
