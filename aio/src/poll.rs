//! One iteration of the loop (QEMU: `aio_poll` in util/aio-posix.c): apply requests,
//! wait, run bottom halves, dispatch what the back end reported, run timers.
//!
//! Panics: a callback's panic (bottom half, fd handler, completion, timer, or a detached
//! task's) unwinds out of [`AioContext::poll`] to its caller, and the context stays
//! usable. That holds because:
//! [PO1] No `RefCell` borrow of the home state is held while a callback runs.
//! [PO2] Work is taken one item at a time from queues that live in the context (the BH
//!    slices, the driver's dispatch queue, the timer list), so the items after the
//!    panicking one stay queued and run at the next `poll`.
//! [PO3] A callback that panics is put back in its cell (`callback.rs`), so a BH, handler
//!    or timer can be scheduled and run again; an fd handler is re-armed on unwind.
//! [PO4] A run queue whose drain unwinds reschedules its bottom half if tasks are left.

use std::mem;
use std::time::Duration;

use crate::backend::Driver;
use crate::backend::Ready;
use crate::context::AioContext;
use crate::fd::FdNode;
use crate::notify::NotifyState;
use crate::stats::bump;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, lock};
use crate::sys;

/// The wait bound of a blocking poll (QEMU: `aio_compute_timeout`, plus what the loop
/// already took from the kernel): zero while a completion or event taken from the
/// kernel waits for dispatch (`driver_ready`; the kernel does not know about it, so a
/// sleep would not end for it), or a BH must run (`bh_ns == Some(0)`), or a timer is due
/// (`timer_ns == Some(0)`); else the earlier of 10 ms for idle BHs and the next timer;
/// else no limit. Every place a blocking poll decides to sleep goes through here.
pub(crate) fn wait_bound(
    driver_ready: bool,
    bh_ns: Option<i64>,
    timer_ns: Option<i64>,
) -> Option<Duration> {
    if driver_ready {
        return Some(Duration::ZERO);
    }
    let ns = match (bh_ns, timer_ns) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(Duration::from_nanos(ns.max(0) as u64))
}

/// The kernel side of a poll's wait, as [`sleep_or_look`] drives it.
pub(crate) trait Kernel {
    /// Sleeps until something completes or `timeout` passes (submitting what is queued).
    fn wait(&mut self, timeout: Option<Duration>);
    /// Looks without sleeping (submitting what is queued).
    fn look(&mut self);
}

/// The driver, counting the sleeps in `stats()` before it enters them.
struct Counted<'a> {
    driver: &'a mut Driver,
    sleeps: &'a AtomicU64,
}

impl Kernel for Counted<'_> {
    fn wait(&mut self, timeout: Option<Duration>) {
        bump(self.sleeps, 1);
        self.driver.wait(timeout);
    }
    fn look(&mut self) {
        self.driver.poll_nowait();
    }
}

/// The wait of one poll inside the notify protocol ([N3] and [N4] (`notify.rs`)): sleeps
/// only when `timeout` is not zero and no notify arrived since the last `accept`, then
/// accepts. Returns whether it slept.
#[inline]
pub(crate) fn sleep_or_look(
    notify: &NotifyState,
    timeout: Option<Duration>,
    kernel: &mut impl Kernel,
) -> bool {
    let raised = timeout != Some(Duration::ZERO);
    let sleep = raised && notify.prepare_sleep();
    if sleep {
        kernel.wait(timeout);
    } else {
        kernel.look();
    }
    if raised {
        notify.finish_sleep();
    }
    notify.accept();
    sleep
}

impl AioContext {
    /// Runs one iteration of the loop (QEMU: `aio_poll`): applies handler changes, waits
    /// (only if `blocking` and nothing is ready; the earliest timer bounds the wait),
    /// then runs scheduled bottom halves, dispatches completions and fd handlers, and
    /// runs expired timers. Returns whether progress was made: a non-idle BH, a handler,
    /// a completion callback or a timer ran. A bare [`notify`](Self::notify) is not
    /// progress. May be called from inside a callback (nested), and from inside a task
    /// of this context, where it first runs the context's queued tasks (never the
    /// calling one, which is being polled; see [`block_on`](Self::block_on)).
    ///
    /// # Panics
    /// On a thread other than the context's home thread (the first that polled it).
    ///
    /// A panic in a callback run by this `poll` — a bottom half, fd handler, completion
    /// callback or timer, or a detached task (one whose [`JoinHandle`] was dropped) —
    /// propagates out of `poll` unchanged. The context stays usable: catch the panic
    /// and poll again, and the work queued behind the panicking callback runs then; the
    /// panicking BH, handler or timer itself stays registered and runs again when it is
    /// next scheduled or ready, and the run queue keeps draining other tasks. (A task
    /// with a live `JoinHandle` does not unwind the loop: its panic resumes in whoever
    /// awaits the handle.)
    ///
    /// [`JoinHandle`]: crate::JoinHandle
    pub fn poll(&self, blocking: bool) -> bool {
        self.check_home("poll");
        let frame = crate::run_queue::enter_poll(self); // nested in a task: [RQ2] (`run_queue.rs`)
        let remote = &*self.remote;
        bump(&remote.counters.polls, 1);
        let max_ns = remote.poll_max_ns.load(Ordering::Relaxed);
        let start = if blocking && max_ns > 0 {
            sys::monotonic_ns()
        } else {
            0
        };
        self.apply_requests();

        let mut timeout = if blocking {
            self.compute_timeout()
        } else {
            Some(Duration::ZERO)
        };
        if max_ns > 0 && timeout != Some(Duration::ZERO) && self.busy_poll(timeout, max_ns) {
            timeout = Some(Duration::ZERO);
        }
        {
            let mut home = self.home();
            // A maximum lowered by `set_poll_params` bounds the very next poll: a polling
            // time above it starts again from zero (QEMU resets it when the parameters
            // are set).
            if home.poll_ns > max_ns {
                home.poll_ns = 0;
            }
            let mut kernel = Counted {
                driver: &mut home.driver,
                sleeps: &remote.counters.sleeps,
            };
            sleep_or_look(&remote.notify, timeout, &mut kernel);
        }
        if blocking && max_ns > 0 {
            self.adjust_poll_ns(sys::monotonic_ns() - start, max_ns);
        }

        let mut progress = self.bh_poll();
        progress |= self.dispatch();
        let timers = remote.timers.run_expired();
        bump(&remote.counters.timers_run, timers as u64);
        progress || timers > 0 || frame.ran_tasks()
    }

    /// Applies fd-handler changes and raw operations queued by other threads.
    fn apply_requests(&self) {
        // A plain look first: no RMW on the common poll with no request. A request
        // this load misses was published after the last `accept` synchronized with its
        // notify, so `notified` is still up: this poll does not sleep, and the next one
        // applies it ([N3] and [N4] (`notify.rs`)).
        if !self.remote.has_requests.load(Ordering::Relaxed)
            // Acquire: pairs with the Release store in `Remote::request`.
            || !self.remote.has_requests.swap(false, Ordering::Acquire)
        {
            return;
        }
        let changed = mem::take(&mut *lock(&self.remote.fd_changes));
        for fd in changed {
            let want = lock(&self.remote.fds).get(&fd).cloned();
            let failed = self.home().driver.set_fd(fd, want);
            if let Some((node, err)) = failed {
                self.remove_bad_fd(&node, &err);
            }
        }
        let raws = lock(&self.remote.raw_queue)
            .as_mut()
            .map(mem::take)
            .unwrap_or_default();
        // One borrow per operation, none while the rest are dropped on an unwind: a
        // raw callback is a user's closure, whose `Drop` may call back into the context.
        for (sqe, cb) in raws {
            self.home().driver.push_raw(sqe, cb);
        }
    }

    /// The wait bound of a blocking poll (see [`wait_bound`]).
    fn compute_timeout(&self) -> Option<Duration> {
        let (bh, ready) = {
            let mut home = self.home();
            self.remote.bhs.take_all(&mut home.bhs.queued);
            (home.bhs.timeout_ns(), home.driver.has_ready())
        };
        wait_bound(ready, bh, self.remote.timers.timeout_ns())
    }

    /// Spins for up to the current polling time, watching for work; returns whether
    /// some arrived (QEMU: `try_poll_mode`).
    fn busy_poll(&self, timeout: Option<Duration>, max_ns: u64) -> bool {
        let poll_ns = self.home().poll_ns.min(max_ns);
        if poll_ns == 0 {
            return false;
        }
        let budget = timeout.map_or(poll_ns, |t| (t.as_nanos() as u64).min(poll_ns));
        let end = sys::monotonic_ns() + budget as i64;
        loop {
            if !self.remote.bhs.is_empty()
                || self.remote.notify.is_notified()
                || self.home().driver.has_ready()
                || self.remote.timers.has_expired()
            {
                return true;
            }
            if sys::monotonic_ns() >= end {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// QEMU's grow/shrink rule (`adjust_polling_time`).
    fn adjust_poll_ns(&self, block_ns: i64, max_ns: u64) {
        let grow = self.remote.poll_grow.load(Ordering::Relaxed);
        let shrink = self.remote.poll_shrink.load(Ordering::Relaxed);
        let mut home = self.home();
        let ns = home.poll_ns;
        let block_ns = block_ns.max(0) as u64;
        home.poll_ns = if block_ns <= ns {
            ns
        } else if block_ns > max_ns {
            ns.checked_div(shrink).unwrap_or(0)
        } else if ns < max_ns && block_ns < max_ns {
            let grown = if ns > 0 {
                ns.saturating_mul(if grow == 0 { 2 } else { grow })
            } else {
                4000
            };
            grown.min(max_ns)
        } else {
            ns
        };
    }

    /// Runs one slice of bottom halves ([BH2], [BH3], [BH5] (`bh.rs`); QEMU: `aio_bh_poll`): takes
    /// the list onto the back of the queue, then runs the queue from its front (the
    /// slices of the polls further up the stack first) until it is empty.
    fn bh_poll(&self) -> bool {
        self.remote.bhs.take_all(&mut self.home().bhs.queued);
        let mut progress = false;
        loop {
            let bh = self.home().bhs.queued.pop_front();
            let Some(bh) = bh else { break };
            let run = bh.run(&self.remote.bhs);
            bump(&self.remote.counters.bhs_run, u64::from(run.ran()));
            progress |= run.progress();
            if bh.is_oneshot() {
                // [BH10] (`bh.rs`): keep a spent oneshot for the next one.
                self.home().bhs.recycle(bh);
            }
        }
        progress
    }

    /// Dispatches what the back end reported, one item at a time ([PO2]);
    /// returns whether a callback ran.
    fn dispatch(&self) -> bool {
        self.home().driver.collect(self.name());
        self.publish_counters();
        let mut progress = false;
        loop {
            let ready = self.home().driver.next_ready(self.name());
            match ready {
                None => {
                    // Callbacks may have forced enters (a full SQ) meanwhile.
                    self.publish_counters();
                    return progress;
                }
                Some(Ready::Raw(cb, res, flags)) => {
                    cb.run(res, flags);
                    progress = true;
                }
                Some(Ready::Fd(node, revents)) => progress |= self.run_fd_handler(&node, revents),
                Some(Ready::FdFailed(node, err)) => self.remove_bad_fd(&node, &err),
            }
        }
    }

    /// Publishes the driver's counts to `stats()`. The driver counts every kernel entry,
    /// also those a full SQ (push) or a CQ overflow (reap) forces outside the wait, which
    /// may happen in callbacks and in `submit_raw`. Single writer (the home thread), so
    /// absolute stores suffice.
    pub(crate) fn publish_counters(&self) {
        let home = self.home();
        let c = &self.remote.counters;
        c.enters.store(home.driver.enters(), Ordering::Relaxed);
        c.cqes.store(home.driver.cqes(), Ordering::Relaxed);
        c.eventfd_reads
            .store(home.driver.eventfd_reads(), Ordering::Relaxed);
    }

    /// Runs a ready handler, then re-arms it — also when the handler panics (module
    /// [PO3]; [FD3] and [FD5] (`fd.rs`)).
    fn run_fd_handler(&self, node: &Arc<FdNode>, revents: u32) -> bool {
        struct Rearm<'a>(&'a AioContext, &'a Arc<FdNode>);
        impl Drop for Rearm<'_> {
            fn drop(&mut self) {
                let failed = self.0.home().driver.rearm(self.1.fd, self.1);
                if let Some(err) = failed {
                    self.0.remove_bad_fd(self.1, &err);
                }
            }
        }
        let _rearm = Rearm(self, node);
        let ran = node.dispatch(revents);
        if ran {
            bump(&self.remote.counters.fd_handlers_run, 1);
        }
        ran
    }

    /// Removes the handler of a descriptor the kernel reports as bad ([FD5] (`fd.rs`)).
    fn remove_bad_fd(&self, node: &Arc<FdNode>, err: &std::io::Error) {
        let fd = node.fd;
        log::warn!(
            "{}: polling fd {fd} failed ({err}); removing its handler",
            self.name()
        );
        let removed = {
            let mut fds = lock(&self.remote.fds);
            match fds.get(&fd) {
                Some(n) if Arc::ptr_eq(n, node) => fds.remove(&fd),
                _ => None,
            }
        };
        if removed.is_some() {
            node.kill();
        }
        self.home().driver.forget_fd(fd, node);
    }
}
