//! The handle to a spawned task's output, and the error it yields when the task was
//! cancelled (the shape is tokio's). The task side is in `task.rs`.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::sync::Arc;

/// What a [`JoinHandle`] needs from its task, without the future's type.
pub(crate) trait Join<T>: Send + Sync {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>>;
    fn is_finished(&self) -> bool;
    fn drop_handle(&self);
}

/// An owned permission to await a spawned task's output (QEMU has no equivalent: a
/// coroutine's caller waits with its own primitives; the shape is tokio's).
///
/// Awaiting it yields `Ok(output)`, or `Err(JoinError)` when the task was cancelled
/// before it finished: its context was dropped or shut down
/// ([`AioContext::shutdown_tasks`](crate::AioContext::shutdown_tasks), an
/// [`IoThread`](crate::IoThread)'s drop). If the task panicked, awaiting resumes the
/// panic. Dropping the handle — or calling [`detach`](Self::detach) — detaches the
/// task: it keeps running, and its output is dropped when it finishes (a detached
/// task's panic unwinds the loop that ran it). The handle may be awaited on any context
/// or thread, also after the task's context is gone.
///
/// ```
/// let ctx = aioctx_aio::AioContext::new()?;
/// let handle = ctx.spawn(async { 6 * 7 });
/// assert_eq!(ctx.block_on(handle).unwrap(), 42);
///
/// // A task that has not finished when its context goes is cancelled.
/// let doomed = ctx.spawn(std::future::pending::<()>());
/// drop(ctx);
/// let other = aioctx_aio::AioContext::new()?;
/// assert!(other.block_on(doomed).unwrap_err().is_cancelled());
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping a JoinHandle detaches the task; call `detach` to say so"]
pub struct JoinHandle<T> {
    task: Option<Arc<dyn Join<T>>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: Arc<dyn Join<T>>) -> Self {
        Self {
            task: Some(task),
            _marker: PhantomData,
        }
    }

    /// Lets the task run on without anyone awaiting it.
    pub fn detach(self) {}

    /// Whether the task has finished (completed, panicked or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        let task = self
            .task
            .as_ref()
            .expect("JoinHandle polled after it returned the task's output");
        let out = task.poll_join(cx);
        if out.is_ready()
            && let Some(task) = self.task.take()
        {
            task.drop_handle();
        }
        out
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.drop_handle();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Why a [`JoinHandle`] yields no output: the task was cancelled, because its
/// context was dropped or shut down before the task finished (tokio: `JoinError`).
/// A panic is not a `JoinError`: it resumes in whoever awaits the handle.
///
/// Converts into an [`io::Error`] (kind `Other`), so `?` works in functions that
/// return `io::Result`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinError(pub(crate) ());

impl JoinError {
    /// Whether the task was cancelled (always, today: the only way a task ends without
    /// an output other than a panic).
    pub fn is_cancelled(&self) -> bool {
        true
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task was cancelled because its AioContext was dropped or shut down")
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinError::Cancelled")
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for io::Error {
    fn from(e: JoinError) -> Self {
        io::Error::other(e)
    }
}

static_assertions::assert_impl_all!(JoinHandle<u32>: Send, Sync, Unpin);
static_assertions::assert_impl_all!(JoinError: Send, Sync, Unpin);
