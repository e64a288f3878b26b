//! `timeout`: a deadline for any future, on the current context's timers.
//!
//! Rules:
//! - [D1] The inner future is polled before the deadline is checked: a future that is
//!   ready when its deadline passes still gives its output.
//! - [D2] On expiry the inner future is dropped at once, inside the poll that reports
//!   [`Elapsed`], not when the `Timeout` goes away: an I/O future cancels its operation
//!   then (its buffer is freed at the operation's final completion, as for any dropped
//!   I/O future), and nothing the inner future holds outlives the deadline.
//! - [D3] The deadline is a [`Sleep`] (a context timer), fixed at the first poll; it
//!   follows `Sleep`'s rules when the context shuts down under it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::timer::{Sleep, sleep};

/// Runs `future` with a deadline of `duration` from its first poll: its output, or
/// [`Elapsed`] if the deadline passed first, in which case `future` is dropped at once
/// (an I/O future cancels its operation). Like [`sleep`], it is polled on a context
/// (in a task, or [`block_on`](crate::AioContext::block_on)).
///
/// ```
/// use std::time::Duration;
/// use aioctx_aio::{AioContext, timeout};
/// let ctx = AioContext::new()?;
/// let never = std::future::pending::<()>();
/// assert!(ctx.block_on(timeout(Duration::from_millis(1), never)).is_err());
/// assert_eq!(ctx.block_on(timeout(Duration::from_secs(5), async { 7 })), Ok(7));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
/// When polled on a thread without a current context (see [`sleep`]), or polled again
/// after it returned its result.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future: Some(future),
        sleep: sleep(duration),
        duration,
    }
}

/// The future of [`timeout`].
#[must_use = "a future does nothing unless awaited"]
pub struct Timeout<F> {
    /// `None` once the result was given ([D2]).
    future: Option<F>,
    sleep: Sleep,
    duration: Duration,
}

/// The deadline of a [`timeout`] passed before its future was ready. Converts into an
/// `io::Error` of kind `TimedOut`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    duration: Duration,
}

impl Elapsed {
    /// The timeout that passed.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline of {:?} elapsed", self.duration)
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for io::Error {
    fn from(e: Elapsed) -> Self {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

impl<F> Timeout<F> {
    /// The inner future (`None` once done), pinned, and the sleep.
    fn project(self: Pin<&mut Self>) -> (Pin<&mut Option<F>>, &mut Sleep, Duration) {
        // `future` is never moved out of `self` (only dropped in place through
        // `Pin::set`); `Timeout` has no `Drop` impl and is `Unpin` only if `F` is.
        // SAFETY: `future` is structurally pinned (above); `sleep`, `duration` are not.
        unsafe {
            let this = self.get_unchecked_mut();
            (
                Pin::new_unchecked(&mut this.future),
                &mut this.sleep,
                this.duration,
            )
        }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut future, sleep, duration) = self.project();
        let inner = future
            .as_mut()
            .as_pin_mut()
            .expect("Timeout polled after it returned its result");
        // [D1]
        if let Poll::Ready(out) = inner.poll(cx) {
            future.set(None);
            return Poll::Ready(Ok(out));
        }
        if Pin::new(sleep).poll(cx).is_ready() {
            future.set(None); // [D2]
            return Poll::Ready(Err(Elapsed { duration }));
        }
        Poll::Pending
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("duration", &self.duration)
            .field("done", &self.future.is_none())
            .finish_non_exhaustive()
    }
}
