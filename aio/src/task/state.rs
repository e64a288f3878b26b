//! The task state word (see the rules in `task.rs`'s module docs): its bits and the
//! CAS transitions every side of the protocol goes through.

use crate::sync::atomic::{AtomicU32, Ordering};

/// Parked: not queued, not running.
pub(super) const IDLE: u32 = 0;
/// On exactly one run queue ([TK1]).
pub(super) const SCHEDULED: u32 = 1 << 0;
/// Being polled ([TK2]).
pub(super) const RUNNING: u32 = 1 << 1;
/// Woken while running: requeue after the poll ([TK3]).
pub(super) const NOTIFIED: u32 = 1 << 2;
/// The future finished (or panicked); wakes are no-ops.
pub(super) const COMPLETE: u32 = 1 << 3;
/// A [`JoinHandle`] exists and will take the output.
pub(super) const JOIN_INTEREST: u32 = 1 << 4;
/// Cancelled ([TK6]): the future is dropped instead of polled again.
pub(super) const CANCELLED: u32 = 1 << 5;
/// The join waker cell holds the waker to wake when the task completes ([TK9]).
pub(super) const JOIN_WAKER: u32 = 1 << 6;
/// The bits that make up the lifecycle value.
pub(super) const LIFECYCLE: u32 = SCHEDULED | RUNNING | NOTIFIED | COMPLETE;

pub(super) fn lifecycle(state: u32) -> u32 {
    state & LIFECYCLE
}

pub(super) fn is_complete(state: u32) -> bool {
    lifecycle(state) == COMPLETE
}

pub(super) fn has_join_waker(state: u32) -> bool {
    state & JOIN_WAKER != 0
}

pub(super) fn has_join_interest(state: u32) -> bool {
    state & JOIN_INTEREST != 0
}

#[cold]
pub(super) fn invalid(state: u32, what: &str) -> ! {
    panic!("task state word {state:#07b} is impossible when {what} (a task bug)")
}

/// A task's state word. See the module docs.
pub(crate) struct State(AtomicU32);

impl State {
    pub(super) fn new(initial: u32) -> Self {
        Self(AtomicU32::new(initial))
    }

    /// A wake: returns `true` when the caller moved the task to `SCHEDULED` and must
    /// push it ([TK1]); a wake of a running task sets `NOTIFIED` ([TK3]).
    pub(crate) fn wake(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = match lifecycle(cur) {
                IDLE => cur | SCHEDULED,
                RUNNING => cur | NOTIFIED,
                SCHEDULED | COMPLETE => return false,
                l if l == RUNNING | NOTIFIED => return false,
                _ => invalid(cur, "waking"),
            };
            // AcqRel: Release publishes what the waker wrote before waking to the next
            // poll (read by the Acquire in `start_run` or `finish_pending`); Acquire
            // pairs with the runner's Release in `finish_pending`, so the pusher sees
            // the home the task last set ([TK4]).
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return lifecycle(next) == SCHEDULED,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The runner took the task off a run queue: `SCHEDULED → RUNNING` ([TK2]).
    /// Returns `false` for a task a canceller claimed while it was queued ([TK6]): the
    /// runner skips it.
    pub(crate) fn start_run(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if lifecycle(cur) != SCHEDULED {
                if cur & CANCELLED != 0 {
                    return false;
                }
                invalid(cur, "starting a run");
            }
            // Acquire: pairs with the Release of the wake (or of `finish_pending`) that
            // scheduled the task.
            match self.0.compare_exchange_weak(
                cur,
                cur ^ (SCHEDULED | RUNNING),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The poll returned `Pending`: parks the task, or says the runner must push it
    /// again (a wake came during the poll, [TK3]) or cancel it ([TK6]).
    pub(crate) fn finish_pending(&self) -> AfterPoll {
        // Acquire: pairs with the Release of the cancel that set CANCELLED.
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur & CANCELLED != 0 {
                return AfterPoll::Cancel;
            }
            let (next, then) = match lifecycle(cur) {
                RUNNING => (cur & !RUNNING, AfterPoll::Park),
                l if l == RUNNING | NOTIFIED => (
                    (cur & !(RUNNING | NOTIFIED)) | SCHEDULED,
                    AfterPoll::Requeue,
                ),
                _ => invalid(cur, "finishing a poll"),
            };
            // AcqRel: Release publishes the future's state and home to the next
            // pusher/runner/canceller; Acquire pairs with the Release of the wake that
            // set NOTIFIED (and of a cancel that set CANCELLED, seen on failure).
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return then,
                Err(actual) => cur = actual,
            }
        }
    }

    /// A cancel ([TK6]): returns whether the caller claimed the task and must drop its
    /// future and complete it.
    pub(crate) fn cancel(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (next, claimed) = match lifecycle(cur) {
                IDLE | SCHEDULED => ((cur & !SCHEDULED) | RUNNING | CANCELLED, true),
                RUNNING if cur & CANCELLED != 0 => return false,
                RUNNING => (cur | CANCELLED, false),
                l if l == RUNNING | NOTIFIED && cur & CANCELLED != 0 => return false,
                l if l == RUNNING | NOTIFIED => (cur | CANCELLED, false),
                COMPLETE => return false,
                _ => invalid(cur, "cancelling"),
            };
            // AcqRel: Acquire pairs with the Release in `finish_pending` (the parked
            // future's state, dropped next by a claiming canceller); Release publishes
            // CANCELLED to the runner's Acquire in `finish_pending`.
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return claimed,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The future finished: `RUNNING[|NOTIFIED] → COMPLETE`. Returns the old word.
    pub(crate) fn complete(&self) -> u32 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if lifecycle(cur) & !NOTIFIED != RUNNING {
                invalid(cur, "completing");
            }
            let next = (cur & !(RUNNING | NOTIFIED)) | COMPLETE;
            // AcqRel: Release publishes the stored output to the JoinHandle's Acquire
            // load (and failed CASes in `set_join_waker`/`clear_join_waker`); Acquire
            // pairs with `drop_join_interest`, and with `set_join_waker`'s Release (the
            // waker in the cell, [TK9]).
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return cur,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The JoinHandle went away; returns whether the task had already completed.
    pub(super) fn drop_join_interest(&self) -> bool {
        // AcqRel: pairs with `complete`; of the two RMWs exactly one sees the other, so
        // exactly one side drops the output.
        is_complete(self.0.fetch_and(!JOIN_INTEREST, Ordering::AcqRel))
    }

    /// [TK9]: the JoinHandle publishes the waker it wrote in the cell; `false` (and the
    /// bit stays clear) when the task completed first.
    pub(super) fn set_join_waker(&self) -> bool {
        // Acquire: pairs with the Release in `complete`, when it reads `COMPLETE` (the
        // output).
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if is_complete(cur) {
                return false;
            }
            debug_assert!(!has_join_waker(cur), "join waker published twice");
            // Release: publishes the cell's waker to the Acquire in `complete`. Acquire
            // on failure: pairs with `complete`'s Release, should the task have
            // completed (the output).
            match self.0.compare_exchange_weak(
                cur,
                cur | JOIN_WAKER,
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// [TK9]: the JoinHandle takes the cell back, to replace its waker; `false` (the
    /// bit stays set, the cell the runner's) when the task completed first.
    pub(super) fn clear_join_waker(&self) -> bool {
        // Acquire: pairs with the Release in `complete`, when it reads `COMPLETE` (the
        // output).
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if is_complete(cur) {
                return false;
            }
            // Relaxed on success: a runner whose `complete` comes later in this word's
            // order sees the bit clear and does not read the cell. Acquire on failure:
            // pairs with `complete`'s Release (the output).
            match self.0.compare_exchange_weak(
                cur,
                cur & !JOIN_WAKER,
                Ordering::Relaxed,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(super) fn load(&self) -> u32 {
        // Acquire: pairs with the Release in `complete`, so the output is visible.
        self.0.load(Ordering::Acquire)
    }
}

/// What the runner does after a poll that returned `Pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterPoll {
    /// No wake came: the task waits for one.
    Park,
    /// A wake came during the poll: push the task again ([TK3]).
    Requeue,
    /// A cancel came: drop the future and complete the task ([TK6]).
    Cancel,
}
