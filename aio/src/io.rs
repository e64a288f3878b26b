//! Safe file I/O on owned buffers: on the context's ring (QEMU: `luring_co_submit` in
//! block/io_uring.c, on top of `aio_add_sqe`), or, on the epoll back end, on the worker
//! pool (QEMU: `thread_pool_submit_co` in util/thread-pool.c).
//!
//! Each operation is a future that owns its buffer and gives it back with the result:
//! `(io::Result<usize>, buf)`. The rules that make this safe:
//!
//! [IO1] Each operation is a type of the op layer (`op/`), which owns every byte its entry
//!    or syscall names. The future creates its in-flight state (`InFlight`: the op,
//!    boxed once, with its result slot) when it is built; at the first poll that box
//!    goes to the back end — on io_uring the driver's table slot keeps it, and drops
//!    it only after the operation's final CQE was reaped, as for
//!    [`AioContext::submit_raw`]'s callbacks. So the kernel never writes into freed
//!    memory, whatever happens to the future.
//! [IO2] The completion hands the buffer back through a small shared slot (`io/cancel.rs`).
//!    A future dropped before completion marks the slot abandoned; the completion then
//!    frees the buffer when the final CQE arrives.
//! [IO3] An operation reports its real result whatever happens to its context: a context
//!    dropped with operations in flight cancels them and reaps every CQE before it
//!    frees anything, then runs each callback with its CQE — the real result if the
//!    operation completed, `ECANCELED` if the cancel won (see `submit_raw`). A callback
//!    dropped unrun means the operation never reached the kernel: `ECANCELED`, and
//!    nothing happened. On epoll, a syscall that ran hands its result over even if the
//!    bottom half that carries it home is dropped unrun ([IO5]).
//! [IO4] A CQE with `EINTR` or `EAGAIN` resubmits the same entry (the buffer is still
//!    owned), up to [`MAX_RETRIES`] times — except a `close` (it must not run twice)
//!    and a step of a linked chain (the kernel cancelled the steps after it).
//!    `ECANCELED` is not retried: it is also what a raw `ASYNC_CANCEL` by descriptor
//!    gives, and the kernel reports it for io-wq work it found no worker thread for (a
//!    worker's creation refused after a few tries while signals keep interrupting the
//!    submitting thread): the operation did not run, and the caller may submit it
//!    again.
//! [IO5] On epoll the same `InFlight` goes to `io/stream.rs` instead of the ring:
//!    regular files and block devices run on the worker pool, streams (pipes, sockets,
//!    ttys) by readiness on the loop; either way the buffers stay owned until the
//!    syscall returned or was never started, and a finished syscall reports its real
//!    result even if the context drops first. On streams the offset is ignored, as
//!    io_uring does.
//! [IO6] Dropping a future before it resolved cancels its operation; the buffer is still
//!    freed only at the operation's final completion ([IO2]). io_uring: the home
//!    thread names the operation by its generation-tagged `user_data` when it pushes it
//!    (a future first polled on another thread hands the push to the loop); a drop on
//!    the home thread pushes an `ASYNC_CANCEL` aimed at exactly that `user_data` and
//!    submits it before it returns — the kernel takes a poll-armed read or write (a
//!    pipe or socket with no data or room) off inline during that submit, so data
//!    written after the drop returns reaches the next reader. A drop on another thread
//!    (or while the home state is borrowed) hands the cancel to the loop and notifies
//!    it: until the loop's next poll submits the cancel, the operation may still
//!    complete, and consume data written in that window. On a ring with `SQPOLL` the
//!    kernel's thread takes the cancel when it gets to it, so that window exists for
//!    every drop. An operation the kernel runs
//!    on a worker thread (a blocking file read) may complete anyway. epoll: a stream
//!    operation is taken out of the stream table, unrun, and the table closes its
//!    duplicate of the descriptor once nothing waits on it ([ST4] (`io/stream.rs`)); a
//!    worker-pool job not started yet is not run. A cancelled operation whose future
//!    is gone never resubmits on `EINTR`/`EAGAIN` ([IO4]). The loop's own operations
//!    are out of reach: the cancel names a live user operation or nothing.
//! [IO7] An operation may have a deadline ([`RingOp::with_deadline`]): past it, the
//!    operation is cancelled as in [IO6] (io_uring: by a linked `LINK_TIMEOUT`) and
//!    the future resolves to `TimedOut`; see `io/deadline.rs` for what cannot be
//!    interrupted. Linked chains: `io/link.rs`.
//! [IO8] An operation may be cancelled while its future stays alive, from any thread, by a
//!    [`CancelHandle`] ([`RingOp::cancel_handle`]): marked as in [IO7]'s timer path
//!    and cancelled by its name as in [IO6]; the future resolves with `ECANCELED` or
//!    the real result (`io/cancel_handle.rs`).
//!
//! **Dropping a read that already completed loses its data**: a `select!` (or a
//! timeout) that drops a read future whose operation completed — its result already in,
//! or the cancel lost the race — discards the bytes it read, which the descriptor will
//! not return again. Where that matters, keep the future and poll it again instead of
//! dropping it. The same holds for a write: dropped, it may have written or not.
//!
//! Descriptors of the raw-fd methods here are plain [`RawFd`]s: keep the fd open until
//! the operation completes, or the kernel may apply it to whatever file next gets that
//! number (a logic error, not a memory-safety one). A closed fd completes with `EBADF`.
//! A [`File`](crate::File)'s operations instead hold a share of its descriptor until
//! their final completion, so it cannot be closed under them ([FL2] (`fs/file.rs`)).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use crate::backend::streams::StreamIo;
use crate::completion::{Callback, Complete};
use crate::context::AioContext;
use crate::op::OpCode;
use crate::pool;
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Mutex, lock};

mod cancel;
mod cancel_handle;
mod deadline;
mod fixed;
mod link;
mod link_buf;
mod raw_fd;
pub(crate) mod stream;

use self::cancel::{Dropped, Shared, Slot, abandon, cancel, record_id};
pub use self::cancel_handle::CancelHandle;
pub use self::fixed::{FixedBuf, FixedBufPool, MAX_FIXED_BUF_SIZE, MAX_FIXED_BUFS};

/// How many times an operation completing with `EINTR`/`EAGAIN` is resubmitted.
pub const MAX_RETRIES: u32 = 16;

/// What the back end owns until the operation is done ([IO1]): the op (which owns
/// the buffers) and the slot its result goes to. Always boxed, and never moved out of
/// its box before the final completion, so the op stays pinned.
struct InFlight<O: OpCode + Unpin> {
    op: Option<O>,
    slot: Arc<Mutex<Shared<O::Output>>>,
    ctx: Weak<AioContext>,
    retries: u32,
    /// The rest of a linked chain (`io/link.rs`), while it is not yet on its way:
    /// pushed with this one on io_uring, or submitted when this one succeeds where the
    /// chain is run one step at a time; dropped (`ECANCELED`) when it fails.
    next: Option<Box<dyn Submit>>,
    /// A step of a chain: never resubmitted on `EINTR`/`EAGAIN` (the kernel cancelled
    /// the steps after it already).
    linked: bool,
}

/// An `InFlight` whose op type is erased, for the future that has not submitted it.
trait Submit: Send {
    fn submit(self: Box<Self>, ctx: &AioContext);
    /// How many steps the chain from here has, and whether the ring runs all of them.
    fn chain(&self, driver: &mut crate::backend::Driver) -> (usize, bool);
    /// Pushes this step, and with `whole` the rest of its chain back to back, each
    /// linked to the next; without, the rest stays with this step (pushed at its
    /// completion). Ids whose futures were dropped meanwhile go to `cancels`.
    fn push_chain(self: Box<Self>, ctx: &AioContext, cancels: &mut Vec<u64>, whole: bool);
    /// Links `next` behind this step (`io/link.rs`, `io/deadline.rs`); the step then
    /// never retries.
    fn set_next(&mut self, next: Box<dyn Submit>);
    /// Whether this is a `LINK_TIMEOUT` (never pushed or run on its own).
    fn is_link_timeout(&self) -> bool;
}

impl<O: OpCode + Unpin> Submit for InFlight<O> {
    fn set_next(&mut self, next: Box<dyn Submit>) {
        self.next = Some(next);
        self.linked = true;
    }

    fn is_link_timeout(&self) -> bool {
        O::LINK_TIMEOUT
    }

    fn chain(&self, driver: &mut crate::backend::Driver) -> (usize, bool) {
        let (n, ok) = match &self.next {
            Some(next) => next.chain(driver),
            None => (0, true),
        };
        (n + 1, ok && driver.supports(O::OPCODE))
    }

    fn push_chain(mut self: Box<Self>, ctx: &AioContext, cancels: &mut Vec<u64>, whole: bool) {
        let next = if whole { self.next.take() } else { None };
        let slot = Arc::clone(&self.slot);
        // SAFETY: `OpCode::sqe`'s contract: the op stays in this box, which moves into
        // the driver's table slot below and is dropped (or taken apart) only after the
        // entry's final CQE was reaped; nothing else touches it meanwhile.
        let sqe = unsafe { self.op().sqe() };
        let sqe = match &next {
            Some(next) => {
                if next.is_link_timeout() {
                    // The kernel enforces the deadline now (`io/deadline.rs`).
                    lock(&slot).kernel_deadline = true;
                }
                sqe.linked()
            }
            None => sqe,
        };
        let user_data = ctx.home().driver.push_raw(sqe, Callback::Op(self));
        if record_id(&slot, user_data) {
            cancels.push(user_data);
        }
        if let Some(next) = next {
            next.push_chain(ctx, cancels, true);
        }
    }

    fn submit(self: Box<Self>, ctx: &AioContext) {
        let Some(owner) = ctx.remote.pool.clone() else {
            if ctx.is_home_thread() {
                self.push_ring(ctx);
            } else {
                // Pushed by the home thread, which names the operation ([IO6]), and
                // submitted at once: the BH runs after the poll's own submit, and the
                // operation must reach the kernel (which resolves its descriptor) within
                // the poll that took it. If the context shuts down first, the BH is
                // dropped unrun and the operation with it: it never ran, so it completes
                // with ECANCELED.
                let weak = ctx.weak();
                ctx.remote.schedule_oneshot(Box::new(move || {
                    if let Some(ctx) = weak.upgrade() {
                        self.push_ring(&ctx);
                        ctx.home().driver.poll_nowait();
                    }
                }));
            }
            return;
        };
        stream::submit(self, ctx, &owner);
    }
}

impl<O: OpCode + Unpin> InFlight<O> {
    /// Whether the future was dropped ([IO6]), or the operation's deadline passed
    /// (`io/deadline.rs`): either way it is not started or resubmitted.
    fn abandoned(&self) -> bool {
        let shared = lock(&self.slot);
        matches!(shared.slot, Slot::Abandoned) || shared.cancel_requested
    }

    fn op(&mut self) -> Pin<&mut O> {
        Pin::new(self.op.as_mut().expect("an operation in flight has its op"))
    }

    /// Queues the operation on the ring (home thread only).
    fn push_ring(self: Box<Self>, ctx: &AioContext) {
        // Relaxed: set on this (the home) thread by the shutdown (`shutdown.rs`).
        if self.abandoned() || ctx.remote.closed.load(Ordering::Relaxed) {
            // [IO6]: the future is gone and nothing ran; or the context was shut
            // down (a completion run by the shutdown submitted this, or a retry):
            // nobody will reap a CQE, so it never runs. Dropping completes it with
            // ECANCELED.
            return;
        }
        let whole = {
            let driver = &mut ctx.home().driver;
            let (steps, supported) = self.chain(driver);
            // A chain's entries go back to back: room for all of them first, so that no
            // submit in between cuts the chain (and no cancel lands inside it).
            steps > 1 && supported && driver.reserve(steps)
        };
        if !whole && !ctx.home().driver.supports(O::OPCODE) {
            // This kernel's ring lacks the opcode (its probe says so): the blocking
            // lowering on the worker pool, with an owner of its own (a ring context has
            // no pool share; the job owns everything its syscall touches, [PL1] (`pool.rs`)).
            // The rest of a chain follows at its completion ([LK3] (`io/link.rs`)).
            stream::to_pool(self, ctx, &pool::Owner::fresh());
            return;
        }
        let mut cancels = Vec::new();
        self.push_chain(ctx, &mut cancels, whole);
        ctx.publish_counters();
        for user_data in cancels {
            ctx.home().driver.cancel(user_data);
        }
    }

    fn complete_boxed(mut self: Box<Self>, res: i32) {
        if O::RETRY
            && !self.linked
            && (res == -libc::EINTR || res == -libc::EAGAIN)
            && self.retries < MAX_RETRIES
            && !self.abandoned()
            && let Some(ctx) = self.ctx.upgrade()
        {
            self.retries += 1;
            self.submit(&ctx);
            return;
        }
        // A chain run one step at a time (epoll, or a ring that lacks an opcode):
        // the next step goes when this one succeeded in full, as the kernel's link
        // rule says; otherwise it is dropped unrun (`ECANCELED`).
        let go_on = self.op.as_ref().is_some_and(|op| op.link_ok(res));
        let next = self.next.take();
        let ctx = self.ctx.upgrade();
        self.deliver(res);
        drop(self);
        // A `LINK_TIMEOUT` never runs on its own: dropped with its operation done.
        if let Some(next) = next
            && go_on
            && !next.is_link_timeout()
            && let Some(ctx) = ctx
        {
            next.submit(&ctx);
        }
    }

    fn deliver(&mut self, res: i32) {
        let Some(op) = self.op.take() else {
            return;
        };
        let out = op.into_output(res);
        let waker = {
            let mut shared = lock(&self.slot);
            let slot = &mut shared.slot;
            match std::mem::replace(slot, Slot::Taken) {
                Slot::Waiting(waker) => {
                    *slot = Slot::Done(res, out);
                    waker
                }
                Slot::Abandoned => {
                    drop(shared);
                    drop(out);
                    None
                }
                Slot::Done(..) | Slot::Taken => unreachable!("an operation completed twice"),
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<O: OpCode + Unpin> Complete for InFlight<O> {
    fn complete(self: Box<Self>, res: i32, _flags: u32) {
        self.complete_boxed(res);
    }
}

impl<O: OpCode + Unpin> StreamIo for InFlight<O> {
    fn target(&self) -> Option<(RawFd, bool)> {
        self.op.as_ref().and_then(OpCode::stream)
    }

    fn run_blocking(&mut self) -> i32 {
        self.op().run_blocking()
    }

    fn run_stream(&mut self, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        self.op().run_stream(file, flags)
    }

    fn abandoned(&self) -> bool {
        InFlight::abandoned(self)
    }

    fn set_entry(&self, key: u64) -> bool {
        record_id(&self.slot, key)
    }

    fn finish(self: Box<Self>, res: i32) {
        self.complete_boxed(res);
    }
}

impl<O: OpCode + Unpin> Drop for InFlight<O> {
    /// Dropped without a result: the operation never ran (refused, or handed over to
    /// a context that was dropped before submitting it), or a worker-pool job was
    /// cancelled unstarted ([IO3]).
    fn drop(&mut self) {
        self.deliver(-libc::ECANCELED);
    }
}

enum OpState {
    Unsubmitted(Arc<AioContext>, Box<dyn Submit>),
    Submitted(Weak<AioContext>),
    Finished,
}

/// A ring operation that owns its buffer; resolves to `(io::Result<usize>, buf)`.
/// Submitted at its first poll, on the context that created it. Dropping it before it
/// resolved cancels the operation (module docs, \[IO6\]); a result that was already in
/// when it was dropped is lost with it.
#[must_use = "futures do nothing unless awaited"]
pub struct RingOp<T: Send + 'static> {
    shared: Arc<Mutex<Shared<T>>>,
    state: OpState,
    deadline: Option<deadline::Deadline>,
}

// The buffer is never pinned: it is only moved around by value.
impl<T: Send + 'static> Unpin for RingOp<T> {}

impl<T: Send + 'static> RingOp<T> {
    /// A future for `op` on `ctx` (the op layer's entry point, `op/mod.rs`).
    pub(crate) fn new<O: OpCode<Output = T> + Unpin>(ctx: &AioContext, op: O) -> Self {
        let shared = Arc::new(Mutex::new(Shared::waiting()));
        let inflight = Box::new(InFlight {
            op: Some(op),
            slot: Arc::clone(&shared),
            ctx: ctx.weak(),
            retries: 0,
            next: None,
            linked: false,
        });
        Self {
            shared,
            state: OpState::Unsubmitted(ctx.arc(), inflight),
            deadline: None,
        }
    }

    /// Gives the operation a deadline `after` its submission (its first poll): if it
    /// has not completed by then it is cancelled and the future resolves to a
    /// `TimedOut` error (with the buffer). io_uring: a linked `IORING_OP_LINK_TIMEOUT`;
    /// epoll: a timer and the cancel of \[IO6\] — a worker-pool syscall already running
    /// (a regular file's read, an `fsync`) cannot be interrupted and reports its real
    /// result (`io/deadline.rs`).
    ///
    /// ```
    /// use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// use std::time::Duration;
    /// let mut fds = [0; 2];
    /// // SAFETY: `fds` has room for the two descriptors.
    /// assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    /// // SAFETY: pipe just returned them.
    /// let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// // Nobody writes: the read times out.
    /// let read = ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0).with_deadline(Duration::from_millis(10));
    /// let (res, _buf) = ctx.block_on(read);
    /// assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// When the future was polled already (the deadline must be set before the
    /// operation is submitted).
    pub fn with_deadline(mut self, after: std::time::Duration) -> Self {
        let OpState::Unsubmitted(ctx, inflight) = &mut self.state else {
            panic!("RingOp::with_deadline on an operation that was submitted already");
        };
        if ctx.backend() == crate::Backend::IoUring {
            // [DL1] (`io/deadline.rs`): the kernel's own timeout, linked behind.
            let shared = Arc::new(Mutex::new(Shared::waiting()));
            inflight.set_next(Box::new(InFlight {
                op: Some(crate::op::LinkTimeout::new(after)),
                slot: shared,
                ctx: ctx.weak(),
                retries: 0,
                next: None,
                linked: true,
            }));
        }
        self.deadline = Some(deadline::Deadline {
            after,
            start: None,
            _timer: None,
        });
        self
    }
}

impl<T: Send + 'static> RingOp<T> {
    /// A handle that cancels this operation from any thread while the future stays
    /// alive (`io/cancel_handle.rs`): the future then resolves with `ECANCELED`, or with
    /// the real result if the operation completed first. A cancel before the first poll
    /// means the operation is never started.
    pub fn cancel_handle(&self) -> CancelHandle {
        let ctx = match &self.state {
            OpState::Unsubmitted(ctx, _) => ctx.weak(),
            OpState::Submitted(ctx) => ctx.clone(),
            OpState::Finished => Weak::new(),
        };
        CancelHandle::new(&self.shared, ctx)
    }

    /// Submits the operation with nobody waiting for it: its result and what it hands
    /// back are dropped at its final completion (a `File` closed by its drop).
    pub(crate) fn detach(mut self) {
        if let OpState::Unsubmitted(ctx, inflight) =
            std::mem::replace(&mut self.state, OpState::Finished)
        {
            inflight.submit(&ctx);
        }
    }
}

/// A CQE's `res` as an `io::Result`.
pub(crate) fn to_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

impl<T: Send + 'static> Future for RingOp<T> {
    type Output = (io::Result<usize>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let OpState::Unsubmitted(..) = self.state {
            let OpState::Unsubmitted(ctx, inflight) =
                std::mem::replace(&mut self.state, OpState::Finished)
            else {
                unreachable!()
            };
            lock(&self.shared).slot = Slot::Waiting(Some(cx.waker().clone()));
            self.state = OpState::Submitted(ctx.weak());
            let shared = Arc::clone(&self.shared);
            if let Some(deadline) = &mut self.deadline {
                deadline.arm(&ctx, &shared);
            }
            inflight.submit(&ctx);
            return Poll::Pending;
        }
        let OpState::Submitted(_) = &self.state else {
            panic!("RingOp polled after completion");
        };
        let mut guard = lock(&self.shared);
        match std::mem::replace(&mut guard.slot, Slot::Taken) {
            Slot::Done(res, buf) => {
                drop(guard);
                self.state = OpState::Finished;
                let timed_out = res == -libc::ECANCELED
                    && self
                        .deadline
                        .as_ref()
                        .is_some_and(deadline::Deadline::passed);
                if timed_out {
                    let after = self.deadline.as_ref().map(|d| d.after);
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the operation did not complete within its deadline ({after:?})"),
                    );
                    return Poll::Ready((Err(e), buf));
                }
                Poll::Ready((to_result(res), buf))
            }
            Slot::Waiting(old) => {
                let waker = match old {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                guard.slot = Slot::Waiting(Some(waker));
                Poll::Pending
            }
            Slot::Abandoned | Slot::Taken => unreachable!("a live RingOp's slot was taken"),
        }
    }
}

impl<T: Send + 'static> Drop for RingOp<T> {
    fn drop(&mut self) {
        if let OpState::Submitted(ctx) = &self.state {
            match abandon(&self.shared) {
                // [IO2]: the back end frees the buffer when the CQE arrives. [IO6]:
                // cancel the operation if the back end has it already (else it sees
                // `Abandoned` when it gets it).
                Dropped::Waiting(Some(id)) => cancel(ctx, id),
                Dropped::Waiting(None) => {}
                // Completed but never polled again: the buffer is freed here, after
                // the lock is released.
                Dropped::Finished(done) => drop(done),
            }
        }
    }
}

impl<T: Send + 'static> fmt::Debug for RingOp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            OpState::Unsubmitted(..) => "unsubmitted",
            OpState::Submitted(..) => "in flight",
            OpState::Finished => "finished",
        };
        f.debug_struct("RingOp").field("state", &state).finish()
    }
}
