//! Timers: callbacks that run on the home thread once their clock passes a deadline.
//!
//! QEMU: `QEMUTimer`, `timer_mod`, `timer_mod_anticipate`, `timer_del`,
//! `timer_pending`, `timer_expire_time_ns`, `timerlist_run_timers` (util/qemu-timer.c).
//!
//! Each context keeps one list per clock, ordered by `(deadline, id)` under a mutex.
//! Rules:
//! 1. Any thread may modify or delete a timer; when a change makes a timer the earliest
//!    on its list, the context is notified so a sleeping loop shortens its wait.
//! 2. The home thread takes expired timers off the list one at a time, marks them not
//!    pending, and runs the callback outside the lock, so a callback may re-arm (or
//!    delete) its own timer.
//! 3. The earliest deadline becomes the kernel timeout of a blocking `poll`.

use std::collections::BTreeMap;
use std::fmt;

use crate::callback::CallbackCell;
use crate::context::Remote;
use crate::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::sys;

/// The clock a timer follows (QEMU: `QEMUClockType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockType {
    /// `CLOCK_MONOTONIC`, in nanoseconds: never jumps, runs while the process runs
    /// (QEMU: `QEMU_CLOCK_REALTIME`, which is monotonic despite its name).
    Realtime,
}

impl ClockType {
    /// The clock's current time in nanoseconds (QEMU: `qemu_clock_get_ns`).
    pub fn now_ns(self) -> i64 {
        match self {
            ClockType::Realtime => sys::monotonic_ns(),
        }
    }
}

type Callback = dyn FnMut() + Send;

/// Not on the list.
const NOT_PENDING: i64 = -1;

pub(crate) struct TimerInner {
    id: u64,
    /// Deadline while on the list, else `NOT_PENDING`. Written under the list lock.
    expire: AtomicI64,
    cb: CallbackCell<Callback>,
}

/// One context's list for one clock (rule 1).
pub(crate) struct TimerList {
    clock: ClockType,
    next_id: AtomicU64,
    timers: Mutex<BTreeMap<(i64, u64), Arc<TimerInner>>>,
}

impl TimerList {
    pub(crate) fn new(clock: ClockType) -> Self {
        Self {
            clock,
            next_id: AtomicU64::new(0),
            timers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Nanoseconds until the earliest deadline (0 if already due), or `None`.
    pub(crate) fn timeout_ns(&self) -> Option<i64> {
        let first = lock(&self.timers).keys().next().map(|&(t, _)| t)?;
        Some((first - self.clock.now_ns()).max(0))
    }

    /// Whether a timer is due now (for busy polling).
    pub(crate) fn has_expired(&self) -> bool {
        self.timeout_ns() == Some(0)
    }

    /// Runs every expired timer (rule 2); returns how many ran.
    pub(crate) fn run_expired(&self) -> usize {
        // The clock is read once, and only when a timer is armed: a poll with no timer
        // pays no clock read.
        let mut now = None;
        let mut ran = 0;
        loop {
            let timer = {
                let mut timers = lock(&self.timers);
                match timers.first_key_value() {
                    Some((&(t, _), _)) if t <= *now.get_or_insert_with(|| self.clock.now_ns()) => {}
                    _ => break,
                }
                let (_, timer) = timers.pop_first().expect("checked non-empty");
                timer.expire.store(NOT_PENDING, Ordering::Relaxed);
                timer
            };
            if timer.cb.run(|f| f()) {
                ran += 1;
            }
        }
        ran
    }

    /// Puts `timer` on the list at `expire`; returns whether it became the earliest.
    fn modify(&self, timer: &Arc<TimerInner>, expire: i64, anticipate: bool) -> bool {
        let expire = expire.max(0);
        let mut timers = lock(&self.timers);
        let old = timer.expire.load(Ordering::Relaxed);
        if old != NOT_PENDING {
            if anticipate && old <= expire {
                return false;
            }
            timers.remove(&(old, timer.id));
        }
        timer.expire.store(expire, Ordering::Relaxed);
        timers.insert((expire, timer.id), Arc::clone(timer));
        timers.keys().next() == Some(&(expire, timer.id))
    }

    fn delete(&self, timer: &TimerInner) {
        let mut timers = lock(&self.timers);
        let old = timer.expire.swap(NOT_PENDING, Ordering::Relaxed);
        if old != NOT_PENDING {
            timers.remove(&(old, timer.id));
        }
    }
}

/// A timer on an [`AioContext`](crate::AioContext). Dropping it deletes it.
///
/// ```
/// use aioctx_aio::{AioContext, ClockType};
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
/// let ctx = AioContext::new()?;
/// let fired = Arc::new(AtomicBool::new(false));
/// let f = fired.clone();
/// let timer = ctx.timer_new(ClockType::Realtime, move || f.store(true, Ordering::Relaxed));
/// timer.modify(ClockType::Realtime.now_ns() + 1_000_000); // 1 ms from now
/// while !fired.load(Ordering::Relaxed) {
///     ctx.poll(true); // sleeps until the deadline
/// }
/// assert!(!timer.pending());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Timer {
    inner: Arc<TimerInner>,
    remote: Arc<Remote>,
    clock: ClockType,
}

impl Timer {
    pub(crate) fn new(remote: Arc<Remote>, clock: ClockType, cb: Box<Callback>) -> Self {
        let id = remote.timers(clock).next_id.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: Arc::new(TimerInner {
                id,
                expire: AtomicI64::new(NOT_PENDING),
                cb: CallbackCell::new(cb),
            }),
            remote,
            clock,
        }
    }

    /// Arms (or re-arms) the timer to fire at `expire_ns` on its clock
    /// (QEMU: `timer_mod_ns`). A deadline in the past fires on the next `poll`.
    pub fn modify(&self, expire_ns: i64) {
        self.modify_inner(expire_ns, false);
    }

    /// Like [`modify`](Self::modify), but only moves the deadline earlier: a pending
    /// timer with an earlier deadline is left alone (QEMU: `timer_mod_anticipate_ns`).
    pub fn modify_anticipate(&self, expire_ns: i64) {
        self.modify_inner(expire_ns, true);
    }

    fn modify_inner(&self, expire_ns: i64, anticipate: bool) {
        if self
            .remote
            .timers(self.clock)
            .modify(&self.inner, expire_ns, anticipate)
        {
            // Rule 1: the earliest deadline changed; a sleeping loop must recompute.
            self.remote.notify();
        }
    }

    /// Disarms the timer; its callback will not run until it is modified again
    /// (QEMU: `timer_del`).
    pub fn delete(&self) {
        self.remote.timers(self.clock).delete(&self.inner);
    }

    /// Whether the timer is armed (QEMU: `timer_pending`).
    pub fn pending(&self) -> bool {
        self.inner.expire.load(Ordering::Relaxed) != NOT_PENDING
    }

    /// The deadline in nanoseconds, or `None` when not armed
    /// (QEMU: `timer_expire_time_ns`, which returns -1 there).
    pub fn expire_time(&self) -> Option<i64> {
        let t = self.inner.expire.load(Ordering::Relaxed);
        (t != NOT_PENDING).then_some(t)
    }

    /// The clock this timer follows.
    pub fn clock(&self) -> ClockType {
        self.clock
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.delete();
        self.inner.cb.kill();
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("clock", &self.clock)
            .field("expire_time", &self.expire_time())
            .finish()
    }
}

/// Completes `duration` after its first poll, on the context of the task that awaits it
/// (QEMU: `qemu_co_sleep_ns`). The task sleeps: its context may sleep in the kernel
/// until the deadline, nothing spins.
///
/// ```
/// use std::time::{Duration, Instant};
/// let ctx = aioctx_aio::AioContext::new()?;
/// let start = Instant::now();
/// ctx.block_on(aioctx_aio::sleep(Duration::from_millis(2)));
/// assert!(start.elapsed() >= Duration::from_millis(2));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
/// When first polled on a thread without a current context (see [`current`]).
///
/// [`current`]: crate::current
pub fn sleep(duration: std::time::Duration) -> Sleep {
    Sleep {
        duration,
        state: None,
    }
}

/// The future of [`sleep`].
#[must_use = "a future does nothing unless awaited"]
pub struct Sleep {
    duration: std::time::Duration,
    state: Option<(Timer, Arc<std::sync::atomic::AtomicBool>)>,
}

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if let Some((_, fired)) = &self.state {
            // Acquire: pairs with the Release store in the timer callback.
            if fired.load(std::sync::atomic::Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            return std::task::Poll::Pending;
        }
        let ctx = crate::current();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, waker) = (Arc::clone(&fired), cx.waker().clone());
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            // Release: pairs with the Acquire load in `poll`.
            f.store(true, std::sync::atomic::Ordering::Release);
            waker.wake_by_ref();
        });
        let ns = i64::try_from(self.duration.as_nanos()).unwrap_or(i64::MAX / 2);
        timer.modify(ClockType::Realtime.now_ns().saturating_add(ns));
        self.state = Some((timer, fired));
        std::task::Poll::Pending
    }
}
