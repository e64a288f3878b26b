//! [`BhRef`]: the handle a bottom half's callback gets to schedule (or cancel) its own
//! BH without owning it — a BH that re-schedules itself needs no
//! `Arc<Mutex<Option<Bh>>>` and no cycle.

use std::fmt;
use std::sync::Weak;

use super::{Bh, BhInner, ContextGone, DELETED, IDLE, SCHEDULED};
use crate::context::{AioContext, Remote};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// A handle to a bottom half that does not own it: what a BH's callback receives from
/// [`AioContext::bh_new_with`]. Cloneable and `Send`; once the [`Bh`] is dropped (or its
/// context shut down) scheduling through it does nothing (`try_schedule` says so), by
/// the BH rules' deletion (\[BH3\]: a deleted BH never runs).
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
/// use aioctx_aio::AioContext;
/// let ctx = AioContext::new()?;
/// let runs = Arc::new(AtomicU32::new(0));
/// let r = runs.clone();
/// // A BH that runs three times, re-scheduling itself (each run at the next poll).
/// let bh = ctx.bh_new_with(move |me| {
///     if r.fetch_add(1, Ordering::Relaxed) + 1 < 3 {
///         me.schedule();
///     }
/// });
/// bh.schedule();
/// while runs.load(Ordering::Relaxed) < 3 {
///     ctx.poll(true);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct BhRef {
    inner: Weak<BhInner>,
    remote: Weak<Remote>,
}

impl BhRef {
    fn live(&self) -> Option<(Arc<BhInner>, Arc<Remote>)> {
        let inner = self.inner.upgrade()?;
        // Relaxed: a hint only; a drop racing this schedule is covered by [BH3].
        if inner.flags.load(Ordering::Relaxed) & DELETED != 0 {
            return None;
        }
        Some((inner, self.remote.upgrade()?))
    }

    /// [`Bh::try_schedule`] through the handle.
    ///
    /// # Errors
    /// [`ContextGone`] when the context was shut down or the [`Bh`] dropped.
    pub fn try_schedule(&self) -> Result<(), ContextGone> {
        let (inner, remote) = self.live().ok_or(ContextGone)?;
        remote.enqueue(&inner, SCHEDULED)
    }

    /// [`Bh::schedule`] through the handle; nothing once the BH or its context is gone.
    pub fn schedule(&self) {
        let _ = self.try_schedule();
    }

    /// [`Bh::schedule_idle`] through the handle.
    pub fn schedule_idle(&self) {
        if let Some((inner, remote)) = self.live() {
            let _ = remote.enqueue(&inner, SCHEDULED | IDLE);
        }
    }

    /// [`Bh::cancel`] through the handle.
    pub fn cancel(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.cancel();
        }
    }
}

impl fmt::Debug for BhRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BhRef")
            .field("live", &self.live().is_some())
            .finish()
    }
}

impl Bh {
    /// A [`BhRef`] to this BH.
    pub fn handle(&self) -> BhRef {
        BhRef {
            inner: Arc::downgrade(&self.inner),
            remote: Arc::downgrade(&self.remote),
        }
    }
}

impl AioContext {
    /// Like [`bh_new`](Self::bh_new), but the callback gets a [`BhRef`] to its own BH,
    /// to re-schedule or cancel it without owning the [`Bh`].
    pub fn bh_new_with(&self, mut cb: impl FnMut(&BhRef) + Send + 'static) -> Bh {
        // The handle is known only once the BH exists; it cannot run before it is
        // scheduled, which needs the `Bh` this function has not returned yet.
        let me: Arc<std::sync::OnceLock<BhRef>> = Arc::default();
        let slot = Arc::clone(&me);
        let bh = self.bh_new(move || {
            if let Some(me) = slot.get() {
                cb(me);
            }
        });
        let _ = me.set(bh.handle());
        bh
    }
}
