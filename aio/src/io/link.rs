//! Linked operations (QEMU has none; io_uring's `IOSQE_IO_LINK`): a chain of steps
//! the kernel runs in order, each starting only once the one before completed in full.
//!
//! Rules:
//! [LK1] The loop links entries itself, users cannot ([RW2] (`backend/raw.rs`) stays): on
//!    io_uring a chain's entries are pushed back to back after making room for all of
//!    them (`Ring::reserve`), so no submit cuts a chain and none of the loop's own
//!    entries (cancels, polls, the eventfd read) lands inside one.
//! [LK2] Each step keeps its own result: a step that fails — or, for a read or write,
//!    moves fewer bytes than asked — breaks the chain, and every step after it
//!    completes with `ECANCELED`, unrun. Steps are never resubmitted on
//!    `EINTR`/`EAGAIN` (the kernel cancelled the rest already).
//! [LK3] Where the ring lacks one of the chain's opcodes or is smaller than the chain, and
//!    on epoll, the chain runs one step at a time with the same rule: the next step is
//!    submitted when the one before succeeded in full, else dropped unrun
//!    (`ECANCELED`).
//! [LK4] Each step owns what its entry names until its own final completion ([IO1]
//!    (`io.rs`)), and each has its own table slot; dropping the chain's future cancels every
//!    step the back end has ([IO6] (`io.rs`)) — a step not yet submitted never runs.
//! [LK5] A read → write chain shares one buffer (`LinkBuf`): each step holds a share
//!    until its own final completion, so the buffer is freed only after both; the
//!    write sends the whole buffer, which only a full read (the chain's rule) filled.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use super::cancel::{Dropped, Shared, Slot, abandon, cancel};
use super::link_buf::LinkBuf;
use super::{InFlight, Submit, to_result};
use crate::context::AioContext;
use crate::io_buf::IoBuf;
use crate::io_buf::IoBufMut;
use crate::op::{Fsync, OpCode, ReadAt, Target, WriteAt};
use crate::sync::{Arc, Mutex, lock};

/// A step's result slot, shared by the chain's future and the step.
type StepSlot<T> = Arc<Mutex<Shared<T>>>;

fn step<O: OpCode + Unpin>(
    ctx: &AioContext,
    op: O,
    next: Option<Box<dyn Submit>>,
) -> (StepSlot<O::Output>, Box<InFlight<O>>) {
    let shared = Arc::new(Mutex::new(Shared::waiting()));
    let inflight = Box::new(InFlight {
        op: Some(op),
        slot: Arc::clone(&shared),
        ctx: ctx.weak(),
        retries: 0,
        next,
        linked: true,
    });
    (shared, inflight)
}

enum State {
    Unsubmitted(Arc<AioContext>, Box<dyn Submit>),
    Submitted(Weak<AioContext>),
    Finished,
}

/// Two linked operations; resolves to each one's result and output ([LK2]).
struct Chain2<A: Send + 'static, B: Send + 'static> {
    a: StepSlot<A>,
    b: StepSlot<B>,
    state: State,
}

impl<A: Send + 'static, B: Send + 'static> Unpin for Chain2<A, B> {}

impl<A: Send + 'static, B: Send + 'static> Chain2<A, B> {
    fn new<OA, OB>(ctx: &AioContext, first: OA, second: OB) -> Self
    where
        OA: OpCode<Output = A> + Unpin,
        OB: OpCode<Output = B> + Unpin,
    {
        let (b, tail) = step(ctx, second, None);
        let (a, head) = step(ctx, first, Some(tail));
        Self {
            a,
            b,
            state: State::Unsubmitted(ctx.arc(), head),
        }
    }
}

/// Takes a finished step's result, or stores the waker.
fn take<T>(shared: &Mutex<Shared<T>>, cx: &Context<'_>) -> Option<(i32, T)> {
    let mut guard = lock(shared);
    match std::mem::replace(&mut guard.slot, Slot::Taken) {
        Slot::Done(res, out) => Some((res, out)),
        Slot::Waiting(old) => {
            let waker = match old {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            guard.slot = Slot::Waiting(Some(waker));
            None
        }
        Slot::Abandoned | Slot::Taken => unreachable!("a live chain's slot was taken"),
    }
}

/// Puts a step's taken result back until the other step is done too.
fn put_back<T>(shared: &Mutex<Shared<T>>, done: (i32, T)) {
    lock(shared).slot = Slot::Done(done.0, done.1);
}

type StepResult<T> = (io::Result<usize>, T);

impl<A: Send + 'static, B: Send + 'static> Future for Chain2<A, B> {
    type Output = (StepResult<A>, StepResult<B>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let State::Unsubmitted(..) = self.state {
            let State::Unsubmitted(ctx, head) = std::mem::replace(&mut self.state, State::Finished)
            else {
                unreachable!()
            };
            lock(&self.a).slot = Slot::Waiting(Some(cx.waker().clone()));
            lock(&self.b).slot = Slot::Waiting(Some(cx.waker().clone()));
            self.state = State::Submitted(ctx.weak());
            head.submit(&ctx);
            return Poll::Pending;
        }
        let State::Submitted(_) = &self.state else {
            panic!("a linked chain polled after completion");
        };
        let Some(a) = take(&self.a, cx) else {
            return Poll::Pending;
        };
        let Some(b) = take(&self.b, cx) else {
            put_back(&self.a, a);
            return Poll::Pending;
        };
        self.state = State::Finished;
        Poll::Ready(((to_result(a.0), a.1), (to_result(b.0), b.1)))
    }
}

impl<A: Send + 'static, B: Send + 'static> Drop for Chain2<A, B> {
    /// [LK4].
    fn drop(&mut self) {
        if let State::Submitted(ctx) = &self.state {
            for id in [drop_step(&self.a), drop_step(&self.b)]
                .into_iter()
                .flatten()
            {
                cancel(ctx, id);
            }
        }
    }
}

/// Abandons one step; its id when the back end has it in flight.
fn drop_step<T>(shared: &Mutex<Shared<T>>) -> Option<u64> {
    match abandon(shared) {
        Dropped::Waiting(id) => id,
        Dropped::Finished(done) => {
            drop(done);
            None
        }
    }
}

impl AioContext {
    /// Writes `buf` to `fd` at `offset`, then — linked, only if the whole buffer was
    /// written — flushes `fd` (`fdatasync` when `data_only`, else `fsync`): one
    /// submission, the kernel's ordering (io_uring `IOSQE_IO_LINK`; epoll and rings
    /// without an opcode run the steps in turn with the same rule). Resolves to the
    /// write's result, the flush's result and the buffer. A failed or short write
    /// leaves the flush unrun: `ECANCELED`. Dropping the future cancels both steps.
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-link-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let (wrote, synced, _buf) =
    ///     ctx.block_on(ctx.write_at_then_fsync(file.as_raw_fd(), b"log".to_vec(), 0, true));
    /// assert_eq!(wrote?, 3);
    /// synced?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// Each step's own: the kernel's error for the write (the flush then `ECANCELED`),
    /// `ECANCELED` for a flush after a short write, the kernel's error for the flush.
    pub fn write_at_then_fsync<B: IoBuf>(
        &self,
        fd: RawFd,
        buf: B,
        offset: u64,
        data_only: bool,
    ) -> impl Future<Output = (io::Result<usize>, io::Result<()>, B)> + Send + 'static {
        self.write_then_fsync_on(Target::Raw(fd), Target::Raw(fd), buf, offset, data_only)
    }

    /// Reads `src` at `src_offset` into `buf`, then — linked, only if the read filled
    /// the whole buffer (`bytes_total()`: a `Vec`'s capacity) — writes that buffer to
    /// `dst` at `dst_offset`: a copy step with the kernel's ordering and no trip
    /// through the loop in between. Resolves to the read's result, the write's result
    /// and the buffer (its length set by the read, as for [`read_at`](Self::read_at)).
    /// A failed or short read (end of file) leaves the write unrun: `ECANCELED`; the
    /// bytes read are in the buffer. Dropping the future cancels both steps; the
    /// buffer is freed after both completed (\[LK5\]).
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let dir = std::env::temp_dir();
    /// let (a, b) = (dir.join(format!("aioctx-doc-rw-a-{}", std::process::id())),
    ///               dir.join(format!("aioctx-doc-rw-b-{}", std::process::id())));
    /// std::fs::write(&a, b"copy me")?;
    /// let (src, dst) = (std::fs::File::open(&a)?, std::fs::File::create(&b)?);
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let (read, wrote, buf) = ctx.block_on(ctx.read_at_then_write_at(
    ///     src.as_raw_fd(), 0, dst.as_raw_fd(), 0, Vec::with_capacity(7)));
    /// assert_eq!((read?, wrote?), (7, 7));
    /// assert_eq!(buf, b"copy me");
    /// assert_eq!(std::fs::read(&b)?, b"copy me");
    /// # std::fs::remove_file(&a)?; std::fs::remove_file(&b)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// Each step's own, as for `write_at_then_fsync`.
    pub fn read_at_then_write_at<B: IoBufMut>(
        &self,
        src: RawFd,
        src_offset: u64,
        dst: RawFd,
        dst_offset: u64,
        buf: B,
    ) -> impl Future<Output = (io::Result<usize>, io::Result<usize>, B)> + Send + 'static {
        let (for_read, for_write) = LinkBuf::pair(buf);
        let read = ReadAt::new(Target::Raw(src), for_read, src_offset);
        let write = WriteAt {
            fd: Target::Raw(dst),
            buf: for_write,
            off: dst_offset,
        };
        let chain = Chain2::new(self, read, write);
        async move {
            let ((read, a), (wrote, b)) = chain.await;
            (read, wrote, a.into_inner(b))
        }
    }

    /// `write_at_then_fsync` on descriptors named as the op layer names them (each
    /// step holds its own share of a `File`'s descriptor).
    pub(crate) fn write_then_fsync_on<B: IoBuf>(
        &self,
        fd: Target,
        share: Target,
        buf: B,
        offset: u64,
        data_only: bool,
    ) -> impl Future<Output = (io::Result<usize>, io::Result<()>, B)> + Send + 'static {
        let write = WriteAt {
            fd,
            buf,
            off: offset,
        };
        let sync = Fsync {
            fd: share,
            data_only,
        };
        let chain = Chain2::new(self, write, sync);
        async move {
            let ((wrote, buf), (synced, ())) = chain.await;
            (wrote, synced.map(drop), buf)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use crate::backend::{Backend, Driver};
    use crate::context::AioContext;

    fn full_pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        assert_eq!(
            // SAFETY: `fds` has room for the two descriptors pipe2 returns.
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        // SAFETY: pipe2 just returned these; nobody else owns them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let chunk = [0u8; 4096];
        // SAFETY: `chunk` is valid for reads of its length.
        while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
        (r, w)
    }

    fn user_ops(ctx: &AioContext) -> usize {
        match &ctx.home().driver {
            Driver::Uring(d) => d.user_ops(),
            Driver::Epoll(_) => unreachable!(),
        }
    }

    /// On a ring with room, both steps are in the kernel at once (linked: the fsync
    /// waits for the write there); on a one-entry ring only the write is, and the
    /// fsync is never pushed once the write is cancelled ([LK3]).
    #[test]
    fn a_chain_is_linked_in_the_kernel_or_run_step_by_step() {
        for (entries, in_kernel) in [(8, 2), (1, 1)] {
            let ctx = match AioContext::builder()
                .backend(Backend::IoUring)
                .ring_entries(entries)
                .build()
            {
                Ok(ctx) => ctx,
                Err(e) => {
                    eprintln!("skipped a_chain_is_linked_in_the_kernel: no io_uring: {e}");
                    return;
                }
            };
            ctx.block_on(async {});
            let (_r, w) = full_pipe();
            let mut chain =
                Box::pin(ctx.write_at_then_fsync(w.as_raw_fd(), vec![1u8; 64], 0, false));
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(chain.as_mut().poll(&mut cx).is_pending());
            ctx.poll(false);
            assert_eq!(user_ops(&ctx), in_kernel, "ring of {entries}");
            drop(chain);
            while user_ops(&ctx) > 0 {
                ctx.poll(false);
            }
        }
    }
}
