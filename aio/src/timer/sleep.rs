//! [`sleep`]: a future that completes after a duration, on a timer of the current
//! context.

use crate::sync::{Arc, Mutex, lock};
use crate::timer::{ClockType, Timer};

/// Completes `duration` after its first poll, on the context of the task that awaits it
/// (QEMU: `qemu_co_sleep_ns`). The task sleeps: its context may sleep in the kernel
/// until the deadline, nothing spins.
///
/// The deadline is fixed at the first poll, and the timer armed on the current context
/// then. If that context shuts down first (dropped, or its `IoThread` stopped) while
/// the future lives on — it was moved to another context, or is polled by
/// `block_on` elsewhere — the shutdown wakes it, and the next poll arms the same
/// deadline on the context current then: it never waits on a dead context.
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
/// When polled, first or after its context shut down, on a thread without a current
/// context (see [`current`]).
///
/// [`current`]: crate::current
pub fn sleep(duration: std::time::Duration) -> Sleep {
    Sleep {
        duration,
        deadline: 0,
        state: None,
    }
}

/// The future of [`sleep`]. Each poll that finds it pending keeps that poll's waker,
/// replacing the one before (the `Future` contract: wake the task that polled last).
#[must_use = "a future does nothing unless awaited"]
pub struct Sleep {
    duration: std::time::Duration,
    /// Fixed at the first poll.
    deadline: i64,
    state: Option<(Timer, Arc<Mutex<SleepState>>)>,
}

/// Whether the timer fired, and the waker of the last poll that found it pending.
struct SleepState {
    fired: bool,
    waker: Option<std::task::Waker>,
}

/// What a `Sleep`'s timer callback owns. Running it fires the sleep; freeing it unrun
/// (the context shut down) wakes the task too, so that it re-arms elsewhere. `Sleep`'s
/// own drop takes the waker out first: dropping the future wakes nobody.
struct Alarm(Arc<Mutex<SleepState>>);

impl Alarm {
    fn wake(&self, fired: bool) {
        let waker = {
            let mut st = lock(&self.0);
            st.fired |= fired;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.wake(false);
    }
}

impl Sleep {
    /// Arms a timer for the deadline on the calling thread's current context.
    fn arm(&mut self, state: Arc<Mutex<SleepState>>) {
        let alarm = Alarm(Arc::clone(&state));
        let timer = crate::current().timer_new(ClockType::Realtime, move || alarm.wake(true));
        timer.modify(self.deadline);
        self.state = Some((timer, state));
    }
}

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let state = match &self.state {
            Some((timer, state)) => {
                let mut st = lock(state);
                if st.fired {
                    return std::task::Poll::Ready(());
                }
                match &mut st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                drop(st);
                if timer.pending() {
                    return std::task::Poll::Pending;
                }
                // Neither fired nor armed: its context shut down (which disarms every
                // timer and frees its callback), or the callback is firing right now on
                // another thread (re-arming then is harmless: both share the state).
                let state = Arc::clone(state);
                let old = self.state.take();
                let waker = lock(&state).waker.take();
                drop(old); // may wake through a not yet freed callback: taken above
                lock(&state).waker = waker;
                state
            }
            None => {
                let ns = i64::try_from(self.duration.as_nanos()).unwrap_or(i64::MAX / 2);
                self.deadline = ClockType::Realtime.now_ns().saturating_add(ns);
                Arc::new(Mutex::new(SleepState {
                    fired: false,
                    waker: Some(cx.waker().clone()),
                }))
            }
        };
        if lock(&state).fired {
            return std::task::Poll::Ready(());
        }
        self.arm(state);
        std::task::Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((_, state)) = &self.state {
            // Dropping the future wakes nobody (see `Alarm`).
            lock(state).waker = None;
        }
    }
}
