//! Counters the loop keeps anyway: cheap, always on (QEMU has no equivalent; its
//! tracepoints play the part).

use crate::sync::atomic::{AtomicU64, Ordering};

/// What one context has counted since it was created. See [`AioContext::stats`].
///
/// [`AioContext::stats`]: crate::AioContext::stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to `notify` (from BH schedules, timer changes, fd changes, or directly).
    pub notifies: u64,
    /// Notifies that found the loop asleep and wrote the eventfd.
    pub eventfd_writes: u64,
    /// `read(2)` calls of the home thread on the notify eventfd: always 0 on io_uring,
    /// which consumes it with a ring read; one per wake-up on epoll.
    pub eventfd_reads: u64,
    /// Kernel entries made by the home thread: `io_uring_enter` calls on io_uring,
    /// `epoll_wait` calls on epoll.
    pub enters: u64,
    /// Blocking waits in the kernel.
    pub sleeps: u64,
    /// `poll` calls.
    pub polls: u64,
    /// Bottom-half callbacks run.
    pub bhs_run: u64,
    /// Completions taken off the CQ (including the loop's own eventfd read); on epoll,
    /// events returned by `epoll_wait` (including the notify eventfd's).
    pub cqes: u64,
    /// fd-handler dispatches that ran a callback.
    pub fd_handlers_run: u64,
    /// Timer callbacks run.
    pub timers_run: u64,
}

/// The live counters. Producers' counters are RMWs; home-thread counters have a single
/// writer, so a load and a store suffice ([`bump`]): plain moves on every target, no
/// locked instruction. A count both sides make is split in two, each side writing its
/// own, and summed by [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Notifies from other threads (RMW).
    pub(crate) notifies: AtomicU64,
    /// Notifies the home thread made itself ([N5] (`notify.rs`)); home thread only.
    pub(crate) home_notifies: AtomicU64,
    pub(crate) eventfd_writes: AtomicU64,
    pub(crate) eventfd_reads: AtomicU64,
    pub(crate) enters: AtomicU64,
    pub(crate) sleeps: AtomicU64,
    pub(crate) polls: AtomicU64,
    pub(crate) bhs_run: AtomicU64,
    pub(crate) cqes: AtomicU64,
    pub(crate) fd_handlers_run: AtomicU64,
    pub(crate) timers_run: AtomicU64,
}

/// Adds `n` to a counter only the home thread writes.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            notifies: get(&self.notifies) + get(&self.home_notifies),
            eventfd_writes: get(&self.eventfd_writes),
            eventfd_reads: get(&self.eventfd_reads),
            enters: get(&self.enters),
            sleeps: get(&self.sleeps),
            polls: get(&self.polls),
            bhs_run: get(&self.bhs_run),
            cqes: get(&self.cqes),
            fd_handlers_run: get(&self.fd_handlers_run),
            timers_run: get(&self.timers_run),
        }
    }
}
