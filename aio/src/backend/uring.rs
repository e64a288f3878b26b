//! The io_uring back end: one ring per context, and the table of operations in flight.
//!
//! Only the home thread touches the ring (the context enforces it). Rules:
//! 1. SQ full: submit what is queued and retry the push; never drop an entry. If the
//!    kernel refuses the submit (`EBUSY`: its CQ overflow backlog is full), move every
//!    CQE into the ring's pending buffer so the next enter can flush the backlog, and
//!    retry: each round either submits entries or frees CQ space, so the push always
//!    makes progress. The loop dispatches the pending buffer before the CQ.
//! 2. CQ overflow: the kernel keeps overflowed CQEs (`IORING_FEAT_NODROP`, required at
//!    setup); after draining the CQ, an `io_uring_enter` flushes the backlog, and we
//!    drain again until the overflow flag is clear. No completion is lost.
//! 3. `EINTR`, `ETIME` and `EBUSY` from a wait are not errors: the loop goes on to reap.
//! 4. Waits pass the timeout to the kernel (`IORING_ENTER_EXT_ARG`), so a sleep costs one
//!    `io_uring_enter` that also submits whatever is queued.
//! 5. fd handlers (see `fd.rs`): one-shot `POLL_ADD` per registration, re-armed after
//!    each dispatch, removed by `POLL_REMOVE`; the in-flight table holds the handler.
//! 6. The notify eventfd is consumed by a `READ` the ring keeps armed (DESIGN §3).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;

use super::{Backend, Ready};
use crate::context::{AioContext, RawCallback};
use crate::fd::FdNode;
use crate::sync::{Arc, lock};
use crate::sys;

/// The largest ring io_uring accepts (`IORING_MAX_ENTRIES`).
pub const MAX_RING_ENTRIES: u32 = 32768;

/// A ring and the counters the loop keeps for it.
pub(crate) struct Ring {
    ring: IoUring,
    /// CQEs taken off the CQ by a push that found the SQ full (rule 1), not dispatched yet.
    pending: VecDeque<Completion>,
    /// `io_uring_enter` calls made.
    pub(crate) enters: u64,
}

/// One completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

/// Checks a ring size against io_uring's limits (done for every backend, so that a
/// configuration error does not depend on which backend runs).
pub(crate) fn check_entries(entries: u32) -> io::Result<()> {
    if entries == 0 || entries > MAX_RING_ENTRIES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ring size {entries} is out of range: io_uring takes 1..={MAX_RING_ENTRIES} entries"
            ),
        ));
    }
    Ok(())
}

impl Ring {
    /// Sets up a ring of `entries` submission entries and probes `io_uring_enter` once,
    /// so that a filter that allows the setup but denies the enter is found here.
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        check_entries(entries)?;
        let hint = |e: &io::Error| match e.raw_os_error() {
            Some(libc::ENOMEM) => {
                " (the ring's memory could not be locked: raise RLIMIT_MEMLOCK or use a smaller ring)"
            }
            Some(libc::EPERM) => {
                " (io_uring is denied here: seccomp, or sysctl kernel.io_uring_disabled)"
            }
            Some(libc::ENOSYS) => " (this kernel has no io_uring)",
            _ => "",
        };
        let ring = IoUring::builder()
            .setup_clamp()
            .build(entries)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("io_uring_setup({entries}) failed: {e}{}", hint(&e)),
                )
            })?;
        let params = ring.params();
        if !params.is_feature_ext_arg() || !params.is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (Linux 5.11 or later is needed)",
            ));
        }
        ring.submitter().submit().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring_enter failed on a new ring: {e}{}", hint(&e)),
            )
        })?;
        Ok(Self {
            ring,
            pending: VecDeque::new(),
            enters: 0,
        })
    }

    /// The ring's submission queue size.
    pub(crate) fn sq_entries(&self) -> u32 {
        self.ring.params().sq_entries()
    }

    /// The ring's completion queue size.
    pub(crate) fn cq_entries(&self) -> u32 {
        self.ring.params().cq_entries()
    }

    /// Queues `entry` (rule 1).
    ///
    /// # Safety
    /// Every buffer and descriptor `entry` names must stay valid until its CQE is reaped.
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: passed on from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            self.enter(0, None);
            // Whether the submit went through or the kernel answered EBUSY, draining the
            // CQ into `pending` lets the next enter flush the overflow backlog.
            self.drain_cq();
        }
    }

    /// Whether entries are queued and not yet submitted.
    pub(crate) fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Whether completions are waiting (a hint for busy polling).
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.pending.is_empty() || !self.ring.completion().is_empty()
    }

    /// One `io_uring_enter` that submits what is queued (rule 3).
    pub(crate) fn submit(&mut self) {
        self.enter(0, None);
    }

    /// Submits and waits for one completion or the timeout.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) {
        self.enter(1, timeout);
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) {
        self.enters += 1;
        let submitter = self.ring.submitter();
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            None => submitter.submit_and_wait(want),
        };
        match res {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => {}
                _ => panic!("io_uring_enter failed unexpectedly: {e}"),
            },
        }
    }

    fn drain_cq(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.pending.extend(cq.map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
    }

    /// Moves every completion into `out`, pending ones first, flushing the kernel's
    /// overflow list (rule 2).
    pub(crate) fn reap(&mut self, out: &mut VecDeque<Completion>) {
        loop {
            self.drain_cq();
            out.append(&mut self.pending);
            if !self.ring.submission().cq_overflow() {
                return;
            }
            // The kernel holds CQEs it could not post; an enter with GETEVENTS flushes them.
            self.submit();
        }
    }
}

/// What an in-flight ring operation is, keyed by its `user_data`.
enum Op {
    /// The loop's own read of its notify eventfd (rule 6).
    NotifyRead,
    /// A one-shot `POLL_ADD` for an fd handler; holds the handler alive (rule 5).
    Poll(Arc<FdNode>),
    /// A `POLL_REMOVE` or `ASYNC_CANCEL` issued by the loop.
    Control,
    /// A user operation.
    Raw(RawCallback),
}

/// The home thread's view of one registered fd.
struct FdHome {
    node: Arc<FdNode>,
    armed: Option<usize>,
}

/// The io_uring driver of one context (home thread only).
pub(crate) struct UringDriver {
    ring: Ring,
    ops: Slab<Op>,
    fds: HashMap<RawFd, FdHome>,
    event: RawFd,
    /// The target of the notify eventfd read; its address is given to the kernel.
    notify_buf: Box<u64>,
    completions: VecDeque<Completion>,
    /// Completions collected for dispatch.
    pub(crate) cqes: u64,
}

impl UringDriver {
    /// A driver on `ring`, reading the notify eventfd `event` (which outlives it).
    pub(crate) fn new(ring: Ring, event: RawFd) -> Self {
        let mut d = Self {
            ring,
            ops: Slab::new(),
            fds: HashMap::new(),
            event,
            notify_buf: Box::new(0),
            completions: VecDeque::new(),
            cqes: 0,
        };
        d.arm_notify_read();
        d
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(crate) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// Queues `entry` as `op`.
    ///
    /// # Safety
    /// Every buffer and descriptor `entry` names must stay valid until its CQE is reaped;
    /// keeping them inside `op` satisfies this, because `op` is dropped only after its CQE.
    unsafe fn push(&mut self, entry: squeue::Entry, op: Op) -> usize {
        let key = self.ops.insert(op);
        // SAFETY: passed on from this function's contract.
        unsafe { self.ring.push(&entry.user_data(key as u64)) };
        key
    }

    /// Queues a user operation.
    ///
    /// # Safety
    /// As for `AioContext::submit_raw`.
    pub(crate) unsafe fn push_raw(&mut self, entry: squeue::Entry, cb: RawCallback) {
        // SAFETY: passed on from this function's contract.
        unsafe { self.push(entry, Op::Raw(cb)) };
    }

    fn arm_notify_read(&mut self) {
        let entry =
            opcode::Read::new(types::Fd(self.event), (&raw mut *self.notify_buf).cast(), 8).build();
        // SAFETY: `notify_buf` is a heap box owned by the driver that is only freed after
        // the read's CQE was reaped (see `shutdown`), and the eventfd outlives the driver.
        unsafe { self.push(entry, Op::NotifyRead) };
    }

    /// Applies a handler change for `fd` (rule 5).
    pub(crate) fn set_fd(&mut self, fd: RawFd, want: Option<Arc<FdNode>>) {
        let same = match (self.fds.get(&fd), &want) {
            (Some(h), Some(node)) => Arc::ptr_eq(&h.node, node),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let armed = self.fds.get_mut(&fd).and_then(|h| h.armed.take());
            if let Some(key) = armed {
                let entry = opcode::PollRemove::new(key as u64).build();
                // SAFETY: a POLL_REMOVE names no memory.
                unsafe { self.push(entry, Op::Control) };
            }
            match want {
                Some(node) => {
                    self.fds.insert(fd, FdHome { node, armed: None });
                }
                None => {
                    self.fds.remove(&fd);
                }
            }
        }
        self.arm_poll(fd);
    }

    /// Arms the one-shot poll of `fd` if it is registered, alive and not armed.
    pub(crate) fn arm_poll(&mut self, fd: RawFd) {
        let Some(h) = self.fds.get(&fd) else { return };
        if h.armed.is_some() || h.node.is_dead() {
            return;
        }
        let node = Arc::clone(&h.node);
        let entry = opcode::PollAdd::new(types::Fd(fd), node.events()).build();
        // SAFETY: a POLL_ADD names no memory; a descriptor closed meanwhile makes the
        // kernel answer EBADF, which fd rule 5 handles.
        let key = unsafe { self.push(entry, Op::Poll(node)) };
        if let Some(h) = self.fds.get_mut(&fd) {
            h.armed = Some(key);
        }
    }

    /// Forgets `fd` after its handler was removed for an error.
    pub(crate) fn forget_fd(&mut self, fd: RawFd, node: &Arc<FdNode>) {
        if self
            .fds
            .get(&fd)
            .is_some_and(|h| Arc::ptr_eq(&h.node, node))
        {
            self.fds.remove(&fd);
        }
    }

    /// Takes every completion into the dispatch queue.
    pub(crate) fn collect(&mut self) {
        let before = self.completions.len();
        self.ring.reap(&mut self.completions);
        self.cqes += (self.completions.len() - before) as u64;
    }

    /// The next thing to run for the completions collected so far, handling the loop's
    /// own operations in place.
    pub(crate) fn next_ready(&mut self, name: &str) -> Option<Ready> {
        while let Some(c) = self.completions.pop_front() {
            let key = c.user_data as usize;
            match self.ops.try_remove(key) {
                Some(Op::NotifyRead) => {
                    if c.result != -libc::ECANCELED {
                        if c.result < 0 {
                            log::warn!(
                                "{name}: notify eventfd read failed: {}",
                                io::Error::from_raw_os_error(-c.result)
                            );
                        }
                        self.arm_notify_read();
                    }
                }
                Some(Op::Poll(node)) => {
                    let fd = node.fd;
                    let current = match self.fds.get_mut(&fd) {
                        Some(h) if h.armed == Some(key) => {
                            h.armed = None;
                            Arc::ptr_eq(&h.node, &node)
                        }
                        _ => false,
                    };
                    if !current || c.result == -libc::ECANCELED {
                        continue;
                    }
                    if c.result < 0 {
                        return Some(Ready::FdFailed(
                            node,
                            io::Error::from_raw_os_error(-c.result),
                        ));
                    }
                    return Some(Ready::Fd(node, c.result as u32));
                }
                Some(Op::Control) => {}
                Some(Op::Raw(cb)) => return Some(Ready::Raw(cb, c.result, c.flags)),
                None => panic!(
                    "{name}: completion for unknown user_data {} (res {})",
                    c.user_data, c.result
                ),
            }
        }
        None
    }

    /// Cancels every operation in flight and reaps its CQE before the ring and the
    /// buffers go away; if the kernel does not answer within `limit`, the buffers are
    /// leaked on purpose rather than freed under it.
    pub(crate) fn shutdown(&mut self, name: &str, limit: Duration) {
        let keys: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, op)| !matches!(op, Op::Control))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            let entry = opcode::AsyncCancel::new(key as u64).build();
            // SAFETY: an ASYNC_CANCEL names no memory.
            unsafe { self.push(entry, Op::Control) };
        }
        // Completions reaped but not dispatched (a panic unwound the loop) are dropped
        // with their operations below.
        for c in mem::take(&mut self.completions) {
            drop(self.ops.try_remove(c.user_data as usize));
        }
        let deadline = sys::monotonic_ns() + limit.as_nanos() as i64;
        let mut batch = VecDeque::new();
        while !self.ops.is_empty() && sys::monotonic_ns() < deadline {
            self.ring.wait(Some(Duration::from_millis(50)));
            self.ring.reap(&mut batch);
            for c in batch.drain(..) {
                drop(self.ops.try_remove(c.user_data as usize));
            }
        }
        if !self.ops.is_empty() {
            log::error!(
                "{name}: {} ring operations did not complete within {limit:?} of drop; \
                 leaking their buffers instead of freeing them under the kernel",
                self.ops.len(),
            );
            mem::forget(mem::take(&mut self.ops));
            mem::forget(mem::replace(&mut self.notify_buf, Box::new(0)));
        }
    }
}

impl AioContext {
    /// Queues a raw io_uring operation; `on_complete` runs on the home thread with the
    /// CQE's `res` and `flags` (QEMU: `aio_add_sqe`). Callable from any thread: from
    /// another thread the entry is handed over and the loop notified. The entry's
    /// `user_data` is replaced by the loop's own. A full submission queue is submitted
    /// and the push retried; completions that overflow the completion queue are kept by
    /// the kernel and flushed by the loop, so `on_complete` runs exactly once per entry.
    /// The safe typed operations ([`read_at`](Self::read_at) and friends) are built on
    /// this.
    ///
    /// If the context is dropped first, the operation is cancelled, its CQE reaped, and
    /// `on_complete` dropped without being called. If the kernel does not answer the
    /// cancellation within 5 s, `on_complete` is leaked (never dropped) rather than
    /// freed while the kernel may still use what it owns.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicI32, Ordering}};
    /// use aioctx_aio::io_uring::opcode;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let res = Arc::new(AtomicI32::new(-1));
    /// let r = Arc::clone(&res);
    /// // SAFETY: a NOP names no memory.
    /// let submitted = unsafe {
    ///     ctx.submit_raw(opcode::Nop::new().build(), Box::new(move |res, _flags| {
    ///         r.store(res, Ordering::Relaxed);
    ///     }))
    /// };
    /// match submitted {
    ///     Ok(()) => {
    ///         while res.load(Ordering::Relaxed) == -1 {
    ///             ctx.poll(true);
    ///         }
    ///         assert_eq!(res.load(Ordering::Relaxed), 0);
    ///     }
    ///     // The epoll fallback has no ring.
    ///     Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported),
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Safety
    /// Every buffer, `iovec` array and descriptor that `entry` names must stay valid
    /// (and buffers the kernel writes must not be read or written by anyone else) until
    /// the kernel is done with it — until `on_complete` runs or is dropped, which is
    /// never before the operation's CQE was reaped. Moving the buffers into
    /// `on_complete` is the simple way to meet this. A descriptor closed early is not a
    /// memory hazard: the operation fails with `EBADF` (or acts on whatever file took
    /// the number).
    ///
    /// # Errors
    /// `Unsupported` on the epoll back end (see [`backend`](Self::backend)): the entry is
    /// not submitted and `on_complete` is dropped without being called.
    pub unsafe fn submit_raw(
        &self,
        entry: squeue::Entry,
        on_complete: RawCallback,
    ) -> io::Result<()> {
        if self.backend != Backend::IoUring {
            drop(on_complete);
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "submit_raw: context `{}` runs on the {} backend, which cannot run raw \
                     io_uring operations (use the typed I/O operations, or \
                     Backend::IoUring where io_uring is available)",
                    self.name(),
                    self.backend
                ),
            ));
        }
        if self.is_home_thread() {
            // SAFETY: passed on from this function's contract.
            unsafe { self.home().driver.push_raw(entry, on_complete) };
            self.publish_counters();
        } else {
            lock(&self.remote.raw_queue).push((entry, on_complete));
            self.remote.request();
        }
        Ok(())
    }
}
