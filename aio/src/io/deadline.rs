//! Per-operation deadlines ([`RingOp::with_deadline`]): an operation not complete
//! within its duration is cancelled, and its future resolves to `TimedOut`.
//!
//! Rules:
//! [DL1] io_uring: the operation is linked to an `IORING_OP_LINK_TIMEOUT` (pushed back to
//!    back, [LK1] (`io/link.rs`)) and the kernel cancels it when the time runs out.
//!    The timeout's timespec is owned by its own step until its own final CQE.
//! [DL2] Where the link cannot be made (a ring smaller than two entries), and on epoll, a
//!    timer of the context armed at submission asks for the cancel: the operation is
//!    marked (`cancel_requested`: not started, not resubmitted, like a dropped
//!    future's), and the back end's cancel is issued by its name ([IO6] (`io.rs`)) — an
//!    `ASYNC_CANCEL` on io_uring; on epoll a stream operation is taken out of the
//!    stream table unrun, and a worker-pool job not yet started is not run.
//! [DL3] What cannot be interrupted: a syscall a pool worker is running (epoll: a read of
//!    a regular file or block device, an `fsync`) runs to its end, and an operation the
//!    kernel already runs on an io-wq worker may complete anyway. Either way the
//!    future gets the real result, not `TimedOut`: only an operation that completes
//!    with `ECANCELED` after its deadline passed reports `TimedOut`.
//! [DL4] The future keeps the timer; dropping the future ([IO6]'s cancel, `io.rs`) drops it.
//!
//! [`RingOp::with_deadline`]: super::RingOp::with_deadline

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::cancel::{Shared, Slot, cancel};
use crate::context::AioContext;
use crate::sync::{Arc, Mutex, lock};
use crate::timer::{ClockType, Timer};

/// A future's deadline: its duration, and once submitted, its start and timer.
pub(super) struct Deadline {
    pub(super) after: Duration,
    pub(super) start: Option<Instant>,
    pub(super) _timer: Option<Timer>,
}

impl Deadline {
    /// Arms the timer of [DL2] at submission.
    pub(super) fn arm<T: Send + 'static>(
        &mut self,
        ctx: &AioContext,
        shared: &Arc<Mutex<Shared<T>>>,
    ) {
        self.start = Some(Instant::now());
        let shared = Arc::clone(shared);
        let weak: Weak<AioContext> = ctx.weak();
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            let id = {
                let mut s = lock(&shared);
                if !matches!(s.slot, Slot::Waiting(_)) || s.kernel_deadline {
                    return; // done, dropped, or the kernel's ([DL1])
                }
                s.cancel_requested = true;
                s.id
            };
            if let Some(id) = id {
                cancel(&weak, id);
            }
        });
        let ns = i64::try_from(self.after.as_nanos()).unwrap_or(i64::MAX);
        timer.modify(ClockType::Realtime.now_ns().saturating_add(ns));
        self._timer = Some(timer);
    }

    /// Whether the deadline passed ([DL3]).
    pub(super) fn passed(&self) -> bool {
        self.start.is_some_and(|s| s.elapsed() >= self.after)
    }
}
