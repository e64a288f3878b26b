//! Futures the task tests build on.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// Parks once: pending on its first poll, with its waker published to `slot` (QEMU's
/// `qemu_coroutine_yield` after storing `self` where a waker finds it); ready on every
/// later poll. `S` is whatever points at the slot: `Arc<Mutex<..>>` for a `'static`
/// task, `&Mutex<..>` for a borrowed one.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use aioctx_testkit::{ParkOnce, poll_once};
/// let slot = Arc::new(Mutex::new(None));
/// let mut park = ParkOnce::new(Arc::clone(&slot));
/// assert!(poll_once(&mut park).is_pending());
/// assert!(slot.lock().unwrap().is_some());
/// assert!(poll_once(&mut park).is_ready());
/// ```
#[derive(Debug)]
pub struct ParkOnce<S> {
    /// Where the waker goes on the first poll.
    pub slot: S,
    /// Whether the first poll happened.
    pub parked: bool,
}

impl<S> ParkOnce<S> {
    /// A future that has not parked yet.
    pub fn new(slot: S) -> Self {
        Self {
            slot,
            parked: false,
        }
    }
}

impl<S: Deref<Target = Mutex<Option<Waker>>> + Unpin> Future for ParkOnce<S> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.parked {
            return Poll::Ready(());
        }
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        self.parked = true;
        Poll::Pending
    }
}

/// Polls `fut` once with a no-op waker.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(fut).poll(&mut cx)
}
