//! Shutting a context down: what its drop does, and what its `IoThread` does early on
//! its home thread when it stops (nobody can poll the context after either).
//!
//! Rules:
//! [SD0] Unfinished tasks are cancelled before anything else: their futures are dropped
//!    on the calling thread (no context current), and what they drop — I/O futures,
//!    guards, handles — still finds the context open.
//! [SD1] Closing comes next: the BH list, the timer list, the fd handlers and the raw
//!    hand-over queue are closed in one pass, each under its own lock, so a schedule,
//!    modify, `set_fd_handler` or hand-over racing the shutdown either landed before
//!    (and is freed by it) or is refused (and freed at once). None lands where nobody
//!    looks.
//! [SD2] Every callback of the context is freed — BHs pending or not, timers armed or
//!    not, fd handlers — also one that owns its own handle or the context itself (a
//!    cycle that nothing else would break).
//! [SD3] Then operations in flight are cancelled and reaped (`Driver::shutdown`) and their
//!    callbacks run with their real results, and worker-pool jobs are cancelled or
//!    waited for.
//! [SD4] The home cell is borrowed only while no user code runs: a callback's drop or a
//!    completion callback may call into the context.
//! [SD5] Shutting down twice is harmless: the `IoThread` does it, the drop does it again.

use std::collections::VecDeque;

use crate::bh::BhInner;
use crate::context::{AioContext, DROP_REAP_LIMIT, Remote};
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, lock};

impl AioContext {
    /// Shuts the context down for good, on its home thread, when nobody will poll it
    /// again (its `IoThread` stops): what the drop does, done early, so that callbacks
    /// that own the context stop keeping it alive. See [`shut_down`](Self::shut_down).
    pub(crate) fn close_for_good(&self) {
        self.check_home("close_for_good");
        // The context outlives this call, so tasks may still be spawned on it or moved
        // to it: make sure its run queue exists, so the shutdown below closes it and
        // those tasks are cancelled at once ([SD0]), not queued where nobody polls.
        crate::run_queue::RunQueue::of(self);
        self.shut_down();
    }

    /// The drop's work (see `Drop for AioContext`), safe to repeat: the home thread
    /// calls it when its `IoThread` stops, the drop calls it again from any thread
    /// (then nobody else can reach the context). The home cell is borrowed only for
    /// moments in which no user code runs: a callback's drop or a completion callback
    /// may call into the context.
    pub(crate) fn shut_down(&self) {
        // Tasks first ([SD0]): their futures may name the context's work.
        crate::run_queue::shutdown(self);
        // Close the context to callbacks first: a schedule or modify racing this
        // either landed before the close (and is freed by it) or is refused; none lands
        // on a list nobody drains. Likewise for raw operations handed over by other
        // threads.
        let queued = self.home().bhs.take_queued();
        close_callbacks(&self.remote, queued);
        let done = self.home().driver.shutdown(self.name(), DROP_REAP_LIMIT);
        crate::submit::run_at_drop(self.name(), done);
        if let Some(owner) = &self.remote.pool {
            let running = owner.cancel(DROP_REAP_LIMIT);
            if running > 0 {
                log::error!(
                    "{}: {running} worker-pool jobs still run {DROP_REAP_LIMIT:?} after drop; \
                     they own their buffers and free them when they finish",
                    self.name()
                );
            }
        }
    }
}

/// Frees every callback of a context that nobody will poll again, and refuses new ones
/// from then on: closes the BH list (pending BHs, taken ones in `queued`, and the
/// callbacks of all live `Bh`s; [BH8] (`bh.rs`)), the timer list ([T5] (`timer.rs`)), the fd
/// handlers, and the queue of raw operations handed over by other threads (they never
/// reached the ring and are dropped unrun, `submit_raw`'s contract). A callback that
/// owns its own handle or its own context (a cycle) is freed here. Idempotent.
fn close_callbacks(remote: &Remote, queued: VecDeque<Arc<BhInner>>) {
    let mut pending = queued;
    remote.bhs.close(&mut pending);
    remote.timers.close();
    let fds: Vec<_> = {
        let mut fds = lock(&remote.fds);
        // Relaxed: read under the same lock in `set_fd_handler`, and by the home
        // thread's submit paths, which run on this thread (the home thread shuts the
        // context down) or cannot run at all (the drop has the context to itself).
        remote.closed.store(true, Ordering::Relaxed);
        fds.drain().map(|(_, node)| node).collect()
    };
    let raws = lock(&remote.raw_queue).take();
    // Outside the locks: a callback's drop may remove handlers or drop handles.
    for node in &fds {
        node.kill();
    }
    for bh in &pending {
        bh.kill();
    }
    drop(raws);
}
