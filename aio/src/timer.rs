//! Timers: callbacks that run on the home thread once their clock passes a deadline.
//!
//! QEMU: `QEMUTimer`, `timer_mod`, `timer_mod_anticipate`, `timer_del`,
//! `timer_pending`, `timer_expire_time_ns`, `timerlist_run_timers` (util/qemu-timer.c).
//!
//! Each context keeps one list per clock, ordered by `(deadline, id)` under a mutex.
//! Rules:
//! [T1] Any thread may modify or delete a timer; when a change makes a timer the earliest
//!    on its list, the context is notified so a sleeping loop shortens its wait.
//! [T2] The home thread takes an expired timer off the list, marks it not pending and
//!    takes its callback out of its cell in ONE critical section of the list lock, then
//!    runs the callback outside the lock, so a callback may re-arm (or delete) its own
//!    timer. Taking the callback is the moment the callback starts: a `delete` or
//!    `modify` that takes the list lock before it keeps the callback from running (the
//!    timer is still on the list), one that comes after finds it running — and, like
//!    QEMU's `timer_del`, does not wait for it.
//! [T3] A timer pass runs only timers armed before the pass began: each pass bumps the
//!    list's pass number, and each arming records the number it was armed under. A
//!    timer re-armed into the past from its own callback (or from another thread)
//!    during a pass runs at the next `poll` at the earliest, so one `poll` runs each
//!    timer at most once and cannot starve bottom halves and fd handlers.
//! [T4] The earliest deadline becomes the kernel timeout of a blocking `poll`.
//! [T5] The context's drop closes each list: under the list lock it takes every armed
//!    timer off and marks the list closed, then (outside the lock) kills the callback
//!    of every timer of the list, armed or not: none can ever run again. A `modify`
//!    that takes the lock after the close is refused (`Timer::try_modify` reports
//!    `ContextGone`), so a timer is never left armed on a dead list, and a callback that
//!    owns its own `Timer` (a cycle, through the list or not) is freed at the drop. The
//!    list knows every live timer for this: `Timer::new` registers it, its drop
//!    unregisters it.
//! [T6] A callback never runs re-entrantly. A timer that re-armed itself from its own
//!    callback and that a nested `poll` inside that callback finds due is taken off the
//!    list but stays pending (its deadline kept), so nested blocking polls do not spin
//!    on it; when the callback returns (or unwinds), the outer pass puts it back, and it
//!    runs at the next `poll`. A `delete` or `modify` meanwhile wins, as always.
//! [T7] Each list keeps a hint of its earliest deadline (`NO_TIMER` when nothing is
//!    armed), stored (Relaxed) under the list lock by every change of the list. The home
//!    thread's timer pass reads it before the lock and leaves at once — no lock, and no
//!    clock read when nothing is armed — when it says nothing is armed or nothing is due.
//!    A stale hint that says "armed" or "due" costs the lock and nothing else. One that
//!    says "nothing" or "later" while an earlier timer is armed cannot lose that timer:
//!    the hint only moves earlier (or away from `NO_TIMER`) by an arming that made its
//!    timer the earliest, and such an arming notifies the context after its store
//!    ([T1]). From the home thread that is program order. From another thread, the
//!    store is sequenced before the notify's release swap ([P1] (`notify.rs`)); the
//!    poll's `accept` ([C4]) that reads it acquires, so the pass that follows that
//!    `accept` sees the store or a later one. If the pass's `accept` came before the
//!    notify, `notified` stays up: this pass may miss the timer, but the next `poll`
//!    cannot sleep ([N3]) and its `accept` synchronizes with the arming. An arming that
//!    left the earliest deadline alone found an earlier timer armed, whose own arming
//!    is covered the same way. The loom model `loom_timer.rs` runs this race on the
//!    real code.

mod deadline;
mod sleep;

pub use deadline::TimerRef;
pub use sleep::{Sleep, sleep};

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::bh::ContextGone;
use crate::callback::CallbackCell;
use crate::context::Remote;
use crate::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};
use crate::sys;

/// The clock a timer follows (QEMU: `QEMUClockType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

/// The earliest-deadline hint of a list with no armed timer ([T7]).
const NO_TIMER: i64 = i64::MAX;

pub(crate) struct TimerInner {
    id: u64,
    /// Deadline while on the list, else `NOT_PENDING`. Written under the list lock.
    expire: AtomicI64,
    pub(crate) cb: CallbackCell<Callback>,
}

impl TimerInner {
    /// A disarmed timer numbered `id` on its list.
    pub(crate) fn new(id: u64, cb: Box<Callback>) -> Arc<Self> {
        Arc::new(Self {
            id,
            expire: AtomicI64::new(NOT_PENDING),
            cb: CallbackCell::new(cb),
        })
    }
}

/// The armed timers of one list and the number of the current pass ([T3]).
struct Armed {
    /// `(deadline, id)` → the timer and the pass number it was armed under.
    timers: BTreeMap<(i64, u64), (Arc<TimerInner>, u64)>,
    /// Bumped at the start of every pass.
    pass: u64,
    /// Set by the context's drop ([T5]): nothing is armed any more.
    closed: bool,
    /// Every live timer of the list, armed or not, by id ([T5]).
    all: HashMap<u64, Arc<TimerInner>>,
}

impl Armed {
    /// The earliest armed deadline, or [`NO_TIMER`].
    fn earliest(&self) -> i64 {
        self.timers.keys().next().map_or(NO_TIMER, |&(t, _)| t)
    }
}

/// Puts a timer that a nested pass deferred ([T6]) back on the list once its callback
/// returned, on return and on unwind alike, armed under the current pass (so it runs at
/// the next `poll`, [T3]).
struct RearmDeferred<'a> {
    list: &'a TimerList,
    timer: &'a Arc<TimerInner>,
}

impl Drop for RearmDeferred<'_> {
    fn drop(&mut self) {
        // Relaxed, then checked again under the lock: only this thread defers ([T6]);
        // another thread's modify or delete is ordered by the lock below.
        if self.timer.expire.load(Ordering::Relaxed) == NOT_PENDING {
            return;
        }
        let mut armed = lock(&self.list.armed);
        let expire = self.timer.expire.load(Ordering::Relaxed);
        if expire == NOT_PENDING {
            return;
        }
        if armed.closed {
            self.timer.expire.store(NOT_PENDING, Ordering::Relaxed);
            return;
        }
        let pass = armed.pass;
        armed
            .timers
            .entry((expire, self.timer.id))
            .or_insert_with(|| (Arc::clone(self.timer), pass));
        // [T7]: the home thread's own store; program order covers its next pass.
        self.list.publish(&armed);
    }
}

/// What arming a timer did to its list's earliest deadline ([`TimerList::modify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Earliest {
    /// The timer is now the earliest of its list: a sleeping loop must shorten its wait
    /// ([T1]).
    Changed,
    /// The earliest deadline is the one it was: the timer sits behind another, or
    /// `modify_anticipate` kept an earlier deadline it had.
    Unchanged,
}

/// One context's list for one clock ([T1]).
pub(crate) struct TimerList {
    clock: ClockType,
    next_id: AtomicU64,
    /// [T7]: the earliest armed deadline, or [`NO_TIMER`]; written under `armed`'s lock.
    earliest: AtomicI64,
    armed: Mutex<Armed>,
}

impl TimerList {
    pub(crate) fn new(clock: ClockType) -> Self {
        Self {
            clock,
            next_id: AtomicU64::new(0),
            earliest: AtomicI64::new(NO_TIMER),
            armed: Mutex::new(Armed {
                timers: BTreeMap::new(),
                pass: 0,
                closed: false,
                all: HashMap::new(),
            }),
        }
    }

    /// Stores the [T7] hint; called under the lock after every change of `armed`.
    fn publish(&self, armed: &Armed) {
        // Relaxed: [T7] — a store that moves the hint earlier is published by the
        // arming's notify ([P1] (`notify.rs`)), which the poll's `accept` acquires.
        self.earliest.store(armed.earliest(), Ordering::Relaxed);
    }

    /// A number for a new timer of this list.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a new timer of this list ([T5]); on a closed list its callback is
    /// killed at once instead.
    pub(crate) fn register(&self, timer: &Arc<TimerInner>) {
        let mut armed = lock(&self.armed);
        if armed.closed {
            drop(armed);
            timer.cb.kill();
        } else {
            armed.all.insert(timer.id, Arc::clone(timer));
        }
    }

    /// Nanoseconds until the earliest deadline (0 if already due), or `None`.
    pub(crate) fn timeout_ns(&self) -> Option<i64> {
        let first = lock(&self.armed).timers.keys().next().map(|&(t, _)| t)?;
        Some((first - self.clock.now_ns()).max(0))
    }

    /// Whether a timer is due now (for busy polling).
    pub(crate) fn has_expired(&self) -> bool {
        self.timeout_ns() == Some(0)
    }

    /// Runs the timers that expired and were armed before this pass began ([T2] and
    /// [T3]); returns how many ran. Home thread only.
    #[inline]
    pub(crate) fn run_expired(&self) -> usize {
        // [T7]: no lock and no clock read while nothing is armed. Relaxed: see [T7] for
        // why a stale hint loses no timer.
        let hint = self.earliest.load(Ordering::Relaxed);
        if hint == NO_TIMER {
            return 0;
        }
        self.run_armed(hint)
    }

    /// [`run_expired`](Self::run_expired) once its hint says a timer is armed, due at
    /// `hint` or (the hint being stale) earlier or later.
    #[inline(never)]
    fn run_armed(&self, hint: i64) -> usize {
        // The clock is read once per pass, and only when a timer is armed; no lock
        // while nothing is due ([T7]).
        let now = self.clock.now_ns();
        if hint > now {
            return 0;
        }
        let pass = {
            let mut armed = lock(&self.armed);
            if armed.timers.is_empty() {
                return 0;
            }
            armed.pass += 1;
            armed.pass
        };
        let mut ran = 0;
        loop {
            let (timer, f) = {
                let mut armed = lock(&self.armed);
                // [T3]: skip timers armed during this pass; they are due next time.
                let key = armed
                    .timers
                    .iter()
                    .take_while(|(k, _)| k.0 <= now)
                    .find(|(_, (_, armed_in))| *armed_in < pass)
                    .map(|(&k, _)| k);
                let Some(key) = key else { break };
                let (timer, _) = armed.timers.remove(&key).expect("found above");
                self.publish(&armed);
                // [T2]: the callback starts here, under the list lock. `None`: it is
                // running already, further up this thread's stack ([T6]), or dead.
                let f = timer.cb.take();
                if f.is_some() || timer.cb.is_dead() {
                    timer.expire.store(NOT_PENDING, Ordering::Relaxed);
                }
                (timer, f)
            };
            if let Some(f) = f {
                let _rearm = RearmDeferred {
                    list: self,
                    timer: &timer,
                };
                timer.cb.run_taken(f, |f| f());
                ran += 1;
            }
        }
        ran
    }

    /// Puts `timer` on the list at `expire`; says whether it became the earliest.
    ///
    /// # Errors
    /// [`ContextGone`] once the list is closed ([T5]); the timer stays disarmed.
    pub(crate) fn modify(
        &self,
        timer: &Arc<TimerInner>,
        expire: i64,
        anticipate: bool,
    ) -> Result<Earliest, ContextGone> {
        let expire = expire.max(0);
        let mut armed = lock(&self.armed);
        if armed.closed {
            return Err(ContextGone);
        }
        let old = timer.expire.load(Ordering::Relaxed);
        if old != NOT_PENDING {
            if anticipate && old <= expire {
                return Ok(Earliest::Unchanged);
            }
            armed.timers.remove(&(old, timer.id));
        }
        timer.expire.store(expire, Ordering::Relaxed);
        let pass = armed.pass;
        armed
            .timers
            .insert((expire, timer.id), (Arc::clone(timer), pass));
        // [T7]: a store that moves the hint earlier is followed by the caller's notify.
        self.publish(&armed);
        if armed.timers.keys().next() == Some(&(expire, timer.id)) {
            Ok(Earliest::Changed)
        } else {
            Ok(Earliest::Unchanged)
        }
    }

    /// Closes the list for good ([T5]): disarms every armed timer and frees its
    /// callback; later `modify` calls are refused. Idempotent.
    pub(crate) fn close(&self) {
        let all = {
            let mut armed = lock(&self.armed);
            armed.closed = true;
            for (timer, _) in std::mem::take(&mut armed.timers).into_values() {
                timer.expire.store(NOT_PENDING, Ordering::Relaxed);
            }
            self.publish(&armed);
            std::mem::take(&mut armed.all)
        };
        // Outside the lock: a callback's drop may drop a `Timer` of this list, whose
        // drop takes the lock.
        for timer in all.values() {
            // Also one deferred by [T6] (off the list, still pending).
            timer.expire.store(NOT_PENDING, Ordering::Relaxed);
            timer.cb.kill();
        }
    }

    /// Takes `timer` off the list ([T2]: once this returns, a callback that has not
    /// started will not start).
    pub(crate) fn delete(&self, timer: &TimerInner) {
        let mut armed = lock(&self.armed);
        let old = timer.expire.swap(NOT_PENDING, Ordering::Relaxed);
        if old != NOT_PENDING {
            armed.timers.remove(&(old, timer.id));
            self.publish(&armed);
        }
    }

    /// Deletes `timer` and forgets it for good: its handle is being dropped.
    fn unregister(&self, timer: &TimerInner) -> Option<Arc<TimerInner>> {
        self.delete(timer);
        lock(&self.armed).all.remove(&timer.id)
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
        let list = remote.timers(clock);
        let inner = TimerInner::new(list.next_id(), cb);
        list.register(&inner);
        Self {
            inner,
            remote,
            clock,
        }
    }

    /// Arms (or re-arms) the timer to fire at `expire_ns` on its clock
    /// (QEMU: `timer_mod_ns`). A deadline in the past fires on the next `poll` — the
    /// one after the current, when called while that `poll` runs its timers (e.g. from
    /// the timer's own callback): one `poll` runs a timer at most once. Callable from
    /// any thread; see [`delete`](Self::delete) for a callback about to run. Does
    /// nothing once the context was dropped; see [`try_modify`](Self::try_modify).
    pub fn modify(&self, expire_ns: i64) {
        let _ = self.modify_inner(expire_ns, false);
    }

    /// Like [`modify`](Self::modify), but says when the context is gone.
    ///
    /// # Errors
    /// [`ContextGone`] when the context was shut down (its drop has begun, or its
    /// [`IoThread`](crate::IoThread) stopped): the timer stays disarmed and its callback
    /// never runs. The shutdown disarmed every timer of the context and freed its
    /// callback, armed or not.
    pub fn try_modify(&self, expire_ns: i64) -> Result<(), ContextGone> {
        self.modify_inner(expire_ns, false)
    }

    /// Like [`modify`](Self::modify), but only moves the deadline earlier: a pending
    /// timer with an earlier deadline is left alone (QEMU: `timer_mod_anticipate_ns`).
    pub fn modify_anticipate(&self, expire_ns: i64) {
        let _ = self.modify_inner(expire_ns, true);
    }

    fn modify_inner(&self, expire_ns: i64, anticipate: bool) -> Result<(), ContextGone> {
        modify(&self.remote, &self.inner, self.clock, expire_ns, anticipate)
    }

    /// Disarms the timer (QEMU: `timer_del`): once this returns, the callback does not
    /// start until the timer is modified again, from whatever thread this is called.
    ///
    /// The callback may be running at that moment on the home thread (it started before
    /// this call); `delete` does not wait for it, as QEMU's `timer_del` does not. A
    /// [`modify`](Self::modify) racing the home thread's timer pass is ordered the same
    /// way: before the callback starts, the timer moves to its new deadline instead of
    /// running now; after, the callback runs and the timer stays armed at the new one.
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

/// Arms `timer` of `remote`'s `clock` list; the one path of `Timer` and `TimerRef`.
fn modify(
    remote: &Remote,
    timer: &Arc<TimerInner>,
    clock: ClockType,
    expire_ns: i64,
    anticipate: bool,
) -> Result<(), ContextGone> {
    arm(remote.timers(clock), timer, expire_ns, anticipate, || {
        remote.notify()
    })
}

/// Arms `timer` on `list`, then calls `notify` when it became the earliest ([T1]; the
/// notify also publishes the [T7] hint). Split from [`modify`] for the loom models.
pub(crate) fn arm(
    list: &TimerList,
    timer: &Arc<TimerInner>,
    expire_ns: i64,
    anticipate: bool,
    notify: impl FnOnce(),
) -> Result<(), ContextGone> {
    if list.modify(timer, expire_ns, anticipate)? == Earliest::Changed {
        // [T1]: the earliest deadline changed; a sleeping loop must recompute.
        notify();
    }
    Ok(())
}

impl Drop for Timer {
    fn drop(&mut self) {
        let registered = self.remote.timers(self.clock).unregister(&self.inner);
        self.inner.cb.kill();
        drop(registered);
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
