//! The Rust-shaped face of timers: deadlines as [`Duration`]s and [`Instant`]s beside
//! QEMU's raw nanoseconds, and [`TimerRef`], the handle a timer's callback gets to
//! re-arm or delete its own timer without owning it (no `Arc<Mutex<Option<Timer>>>`,
//! no cycle).

use std::fmt;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{ClockType, NOT_PENDING, Timer, TimerInner};
use crate::bh::ContextGone;
use crate::context::{AioContext, Remote};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// `now + delay` on `clock`, in its nanoseconds, saturating (a `Duration` beyond
/// `i64::MAX` ns, ~292 years, is "never", as far as a timer can tell).
fn after(clock: ClockType, delay: Duration) -> i64 {
    let ns = i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX);
    clock.now_ns().saturating_add(ns)
}

/// `deadline` on `clock`: now plus what is left until it (zero when it passed).
fn at(clock: ClockType, deadline: Instant) -> i64 {
    after(clock, deadline.saturating_duration_since(Instant::now()))
}

/// What is left until `expire` on `clock` (zero when it passed); `None` when unarmed.
fn remaining(clock: ClockType, expire: i64) -> Option<Duration> {
    (expire != NOT_PENDING)
        .then(|| Duration::from_nanos(expire.saturating_sub(clock.now_ns()).max(0) as u64))
}

impl Timer {
    /// Arms (or re-arms) the timer to fire `delay` from now on its clock: the
    /// `Duration` form of [`modify`](Self::modify), with the same rules.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx_aio::{AioContext, ClockType};
    /// let ctx = AioContext::new()?;
    /// let timer = ctx.timer_new(ClockType::Realtime, || {});
    /// timer.modify_after(Duration::from_millis(1));
    /// while timer.pending() {
    ///     ctx.poll(true);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn modify_after(&self, delay: Duration) {
        self.modify(after(self.clock, delay));
    }

    /// Arms (or re-arms) the timer to fire at `deadline`: the `Instant` form of
    /// [`modify`](Self::modify). The deadline is taken as "what is left until it" at
    /// the call, so it is exact for [`ClockType::Realtime`] (both are
    /// `CLOCK_MONOTONIC`); a deadline in the past fires on the next `poll`.
    pub fn modify_at(&self, deadline: Instant) {
        self.modify(at(self.clock, deadline));
    }

    /// Like [`modify_after`](Self::modify_after), but says when the context is gone.
    ///
    /// # Errors
    /// [`ContextGone`], as [`try_modify`](Self::try_modify).
    pub fn try_modify_after(&self, delay: Duration) -> Result<(), ContextGone> {
        self.try_modify(after(self.clock, delay))
    }

    /// What is left until the timer fires (zero when it is due), or `None` when it is
    /// not armed.
    pub fn remaining(&self) -> Option<Duration> {
        remaining(self.clock, self.inner.expire.load(Ordering::Relaxed))
    }

    /// A [`TimerRef`] to this timer.
    pub fn handle(&self) -> TimerRef {
        TimerRef {
            inner: Arc::downgrade(&self.inner),
            remote: Arc::downgrade(&self.remote),
            clock: self.clock,
        }
    }
}

/// A handle to a timer that does not own it: what a timer's callback receives from
/// [`AioContext::timer_new_with`] to re-arm or delete its own timer. Cloneable and
/// `Send`; once the [`Timer`] is dropped (or its context shut down) every call on it is
/// a no-op and [`pending`](Self::pending) is `false`.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
/// use std::time::Duration;
/// use aioctx_aio::{AioContext, ClockType};
/// let ctx = AioContext::new()?;
/// let ticks = Arc::new(AtomicU32::new(0));
/// let t = ticks.clone();
/// // A periodic timer: the callback re-arms itself, three times.
/// let timer = ctx.timer_new_with(ClockType::Realtime, move |me| {
///     if t.fetch_add(1, Ordering::Relaxed) + 1 < 3 {
///         me.modify_after(Duration::from_micros(100));
///     }
/// });
/// timer.modify_after(Duration::ZERO);
/// while timer.pending() {
///     ctx.poll(true);
/// }
/// assert_eq!(ticks.load(Ordering::Relaxed), 3);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct TimerRef {
    inner: Weak<TimerInner>,
    remote: Weak<Remote>,
    clock: ClockType,
}

impl TimerRef {
    fn live(&self) -> Option<(Arc<TimerInner>, Arc<Remote>)> {
        Some((self.inner.upgrade()?, self.remote.upgrade()?))
    }

    /// [`Timer::try_modify`] through the handle.
    ///
    /// # Errors
    /// [`ContextGone`] when the context was shut down or the [`Timer`] dropped.
    pub fn try_modify(&self, expire_ns: i64) -> Result<(), ContextGone> {
        let (inner, remote) = self.live().ok_or(ContextGone)?;
        super::modify(&remote, &inner, self.clock, expire_ns, false)
    }

    /// [`Timer::modify`] through the handle; nothing once the timer or its context is
    /// gone.
    pub fn modify(&self, expire_ns: i64) {
        let _ = self.try_modify(expire_ns);
    }

    /// [`Timer::modify_after`] through the handle.
    pub fn modify_after(&self, delay: Duration) {
        self.modify(after(self.clock, delay));
    }

    /// [`Timer::modify_at`] through the handle.
    pub fn modify_at(&self, deadline: Instant) {
        self.modify(at(self.clock, deadline));
    }

    /// [`Timer::delete`] through the handle.
    pub fn delete(&self) {
        if let Some((inner, remote)) = self.live() {
            remote.timers(self.clock).delete(&inner);
        }
    }

    /// [`Timer::pending`] through the handle (`false` once the timer is gone).
    pub fn pending(&self) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|i| i.expire.load(Ordering::Relaxed) != NOT_PENDING)
    }

    /// [`Timer::remaining`] through the handle.
    pub fn remaining(&self) -> Option<Duration> {
        let inner = self.inner.upgrade()?;
        remaining(self.clock, inner.expire.load(Ordering::Relaxed))
    }

    /// The clock the timer follows.
    pub fn clock(&self) -> ClockType {
        self.clock
    }
}

impl fmt::Debug for TimerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerRef")
            .field("clock", &self.clock)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl AioContext {
    /// Like [`timer_new`](Self::timer_new), but the callback gets a [`TimerRef`] to its
    /// own timer, to re-arm it (a periodic timer) or delete it without owning the
    /// [`Timer`].
    pub fn timer_new_with(
        &self,
        clock: ClockType,
        mut cb: impl FnMut(&TimerRef) + Send + 'static,
    ) -> Timer {
        // The handle is known only once the timer exists; the timer cannot fire before
        // it is armed, which needs the `Timer` this function has not returned yet.
        let me: Arc<std::sync::OnceLock<TimerRef>> = Arc::default();
        let slot = Arc::clone(&me);
        let timer = self.timer_new(clock, move || {
            if let Some(me) = slot.get() {
                cb(me);
            }
        });
        let _ = me.set(timer.handle());
        timer
    }
}
