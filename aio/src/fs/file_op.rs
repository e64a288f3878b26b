//! [`FileOp`] and [`FileUnitOp`]: the futures of a [`File`](super::File)'s single
//! operations (`read_at`, `write_at`, their vectored and registered-buffer forms,
//! `fsync`, …). They take a per-operation deadline and hand out a cancel handle, as a
//! [`RingOp`] does.
//!
//! Rules:
//! [FO1] An operation refused before it reaches the back end (a misaligned O_DIRECT
//!    transfer, [FL4] (`fs/file.rs`); its context gone, [FL1]) is a future that
//!    resolves at its first poll with that error and the buffer; a deadline or a cancel
//!    on it does nothing, and nothing reaches the kernel.
//! [FO2] Otherwise the future *is* the operation's [`RingOp`]: its deadline, drop and
//!    cancel rules are the ring's ([IO6], [IO7], [IO8] (`io.rs`), [DL1]..[DL4]
//!    (`io/deadline.rs`)): io_uring links an `IORING_OP_LINK_TIMEOUT`; epoll arms a
//!    timer that dequeues a queued pool job, and a syscall a pool worker already runs
//!    (a regular file's read or write, an `fsync`) completes with its real result.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::io::{CancelHandle, RingOp};

enum Inner<T: Send + 'static> {
    Op(RingOp<T>),
    /// [FO1]: the error and the buffer, until the first poll takes them.
    Refused(Option<(io::Error, T)>),
}

/// The future of one operation of a [`File`](super::File) on an owned buffer; resolves to
/// `(io::Result<usize>, buf)` like [`RingOp`], whose deadline
/// ([`with_deadline`](Self::with_deadline)) and cancel handle it has too (\[FO2\] in
/// `fs/file_op.rs`). Dropping it before it resolved cancels the operation; the buffer is
/// freed only at the operation's final completion.
///
/// ```
/// use std::time::Duration;
/// use aioctx_aio::{AioContext, OpenOptions};
/// let path = std::env::temp_dir().join(format!("aioctx-doc-fileop-{}", std::process::id()));
/// let ctx = AioContext::new()?;
/// let c = ctx.clone();
/// let p = path.clone();
/// ctx.block_on(async move {
///     let file = OpenOptions::new().read(true).write(true).create(true).open(&c, &p).await?;
///     let (res, _) = file.write_at(b"in time".to_vec(), 0).with_deadline(Duration::from_secs(5)).await;
///     assert_eq!(res?, 7);
///     file.fsync().with_deadline(Duration::from_secs(5)).await
/// })?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct FileOp<T: Send + 'static>(Inner<T>);

impl<T: Send + 'static> FileOp<T> {
    /// The operation `op` ([FO2]).
    pub(super) fn op(op: RingOp<T>) -> Self {
        Self(Inner::Op(op))
    }

    /// An operation refused before it reached the back end ([FO1]).
    pub(super) fn refused(e: io::Error, buf: T) -> Self {
        Self(Inner::Refused(Some((e, buf))))
    }

    /// Gives the operation a deadline `after` its submission (its first poll), as
    /// [`RingOp::with_deadline`]: past it, the operation is cancelled and the future
    /// resolves to `TimedOut` with the buffer. io_uring: a linked
    /// `IORING_OP_LINK_TIMEOUT`; epoll: a timer and a cancel — a queued worker-pool job
    /// is not run, a running syscall (a regular file's read or write, an `fsync`)
    /// cannot be interrupted and reports its real result.
    ///
    /// # Panics
    /// When the future was polled already.
    pub fn with_deadline(self, after: Duration) -> Self {
        match self.0 {
            Inner::Op(op) => Self(Inner::Op(op.with_deadline(after))),
            Inner::Refused(r) => {
                assert!(
                    r.is_some(),
                    "FileOp::with_deadline on an operation that was polled already"
                );
                Self(Inner::Refused(r))
            }
        }
    }

    /// A handle that cancels the operation from any thread while the future stays
    /// alive, as [`RingOp::cancel_handle`]; it does nothing for an operation refused
    /// before it reached the back end.
    pub fn cancel_handle(&self) -> CancelHandle {
        match &self.0 {
            Inner::Op(op) => op.cancel_handle(),
            Inner::Refused(_) => CancelHandle::inert(),
        }
    }
}

// The buffer is never pinned: it is only moved around by value (as in `RingOp`).
impl<T: Send + 'static> Unpin for FileOp<T> {}

impl<T: Send + 'static> Future for FileOp<T> {
    type Output = (io::Result<usize>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Op(op) => Pin::new(op).poll(cx),
            Inner::Refused(r) => {
                let (e, buf) = r.take().expect("FileOp polled after completion");
                Poll::Ready((Err(e), buf))
            }
        }
    }
}

impl<T: Send + 'static> fmt::Debug for FileOp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Op(op) => f.debug_tuple("FileOp").field(op).finish(),
            Inner::Refused(r) => f
                .debug_struct("FileOp")
                .field("refused", &r.as_ref().map(|(e, _)| e))
                .finish(),
        }
    }
}

/// The future of a [`File`](super::File) operation that hands back no buffer (`fsync`,
/// `fdatasync`, `sync_file_range`, `fallocate`, `set_len`); resolves to `io::Result<()>`,
/// with the same deadline and cancel handle as [`FileOp`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct FileUnitOp(FileOp<()>);

impl FileUnitOp {
    pub(super) fn new(op: FileOp<()>) -> Self {
        Self(op)
    }

    /// As [`FileOp::with_deadline`].
    ///
    /// # Panics
    /// When the future was polled already.
    pub fn with_deadline(self, after: Duration) -> Self {
        Self(self.0.with_deadline(after))
    }

    /// As [`FileOp::cancel_handle`].
    pub fn cancel_handle(&self) -> CancelHandle {
        self.0.cancel_handle()
    }
}

impl Future for FileUnitOp {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|(res, ())| res.map(drop))
    }
}

static_assertions::assert_impl_all!(FileOp<Vec<u8>>: Send, Unpin);
static_assertions::assert_impl_all!(FileUnitOp: Send, Unpin);
