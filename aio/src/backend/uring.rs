//! The io_uring back end: one ring per context, and the table of operations in flight.
//!
//! Only the home thread touches the ring (the context enforces it). Rules:
//! [UR1] SQ full: submit what is queued and retry the push; never drop an entry. If the
//!    kernel refuses the submit (`EBUSY`: its CQ overflow backlog is full), move every
//!    CQE into the ring's pending buffer so the next enter can flush the backlog, and
//!    retry: each round either submits entries or frees CQ space, so the push always
//!    makes progress. The loop dispatches the pending buffer before the CQ.
//! [UR2] CQ overflow: the kernel keeps overflowed CQEs (`IORING_FEAT_NODROP`, required at
//!    setup); after draining the CQ, an `io_uring_enter` flushes the backlog, and we
//!    drain again until the overflow flag is clear. No completion is lost.
//! [UR3] `EINTR`, `ETIME` and `EBUSY` from a wait are not errors: the loop goes on to reap.
//! [UR4] Waits pass the timeout to the kernel (`IORING_ENTER_EXT_ARG`), so a sleep costs one
//!    `io_uring_enter` that also submits whatever is queued.
//! [UR5] fd handlers (see `fd.rs`): one-shot `POLL_ADD` per registration, re-armed after
//!    each dispatch, removed by `POLL_REMOVE`; the in-flight table holds the handler.
//! [UR6] The notify eventfd is consumed by a `READ` the ring keeps armed. Its CQE is
//!    handled (and the read re-armed) when it is collected, never queued behind a
//!    callback, so the read is armed whenever the loop may sleep.
//! [UR7] Operations live in a table of fixed slots with generations; `user_data` is
//!    `tag | generation << 32 | slot`, with the top bit (the tag) set for the loop's own
//!    operations. A CQE whose slot is free or whose generation or tag does not match is
//!    logged and dropped: it can never reach another operation. A slot is freed at its
//!    operation's final CQE (one without `IORING_CQE_F_MORE`), and only then reused.
//! [UR8] The loop's own operations (eventfd read, fd-handler polls) that complete with
//!    `ECANCELED` while the context lives — a user cancel reached them by fd or "any" —
//!    are armed again; users cannot name them by `user_data` (`raw.rs` refuses the tag).
//! [UR9] At drop, every operation is cancelled and its CQE reaped; a user operation's
//!    callback gets that CQE — its real result if it completed, `ECANCELED` if the
//!    cancel won — and runs once the ring is quiet.
//! [UR10] A typed I/O future dropped before its result ([IO6] (`io.rs`)) cancels its
//!     operation with an `ASYNC_CANCEL` aimed at the operation's own `user_data`, which
//!     the table checks is a live user operation (so the loop's own operations, and a
//!     later operation in a reused slot, are out of reach). The cancel is submitted at
//!     once; the cancelled operation's slot, and the buffer its callback owns, stay
//!     until its final CQE.
//! [UR11] A typed operation whose opcode this kernel's ring lacks (the ring's probe,
//!     `IORING_REGISTER_PROBE`, taken once: e.g. `FTRUNCATE` before Linux 6.9,
//!     `MKDIRAT` before 5.15) runs its blocking lowering on the worker pool instead,
//!     and completes on the home thread as a bottom half, as on epoll.
//! [UR12] Completions are triaged as they come off the CQ, one CQ borrow per batch
//!     (`Ring::reap_with`; a poll with an empty CQ, no pending CQE and no overflow
//!     costs three loads): the loop's own are handled there, a user operation's or an
//!     fd poll's slot is emptied at its final CQE and what it held is queued for
//!     dispatch with the CQE, one item each, taken one at a time ([PO2] (`poll.rs`)).
//!     A multishot operation's non-final CQE (`IORING_CQE_F_MORE`, only a kept
//!     handler's: [RW5] (`raw.rs`)) queues a clone of the handler's reference and
//!     leaves the slot, and what it owns, in place until the final CQE.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use self::setup::{RingFeatures, RingSetup};
use super::ops::{Op, OpTable};
use crate::completion::Callback;
use crate::fd::FdNode;
use crate::op::Sqe;
use crate::sync::Arc;
use crate::sys;

mod collect;
pub(crate) mod setup;

use self::collect::{Collected, finish};

/// The largest ring io_uring accepts (`IORING_MAX_ENTRIES`).
pub const MAX_RING_ENTRIES: u32 = 32768;

/// A ring and the counters the loop keeps for it.
pub(crate) struct Ring {
    ring: IoUring,
    /// CQEs taken off the CQ by a push that found the SQ full ([UR1]), not dispatched yet.
    pending: VecDeque<Completion>,
    /// `io_uring_enter` calls made.
    pub(crate) enters: u64,
    /// The setup flags the ring runs with (`setup.rs`).
    features: RingFeatures,
    /// The thread that enabled a single-issuer ring (setup rule [S3]).
    issuer: Option<libc::pid_t>,
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
    /// A ring of `entries` submission entries with the default flags (for the unit
    /// tests, which do not run under loom).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        Self::with_setup(&RingSetup {
            sq: entries,
            ..RingSetup::default()
        })
    }

    /// Sets up a ring as `setup` asks (see `setup.rs`) and probes `io_uring_enter`
    /// once, so that a filter that allows the setup but denies the enter is found here.
    pub(crate) fn with_setup(setup: &RingSetup) -> io::Result<Self> {
        setup.check()?;
        let entries = setup.sq;
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
        let (ring, features) = setup.open().map_err(|e| {
            if setup::is_refusal(&e) {
                e
            } else {
                io::Error::new(
                    e.kind(),
                    format!("io_uring_setup({entries}) failed: {e}{}", hint(&e)),
                )
            }
        })?;
        let params = ring.params();
        if !params.is_feature_ext_arg() || !params.is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (Linux 5.11 or later is needed)",
            ));
        }
        match ring.submitter().submit() {
            Ok(_) => {}
            // A single-issuer ring is created disabled (setup rule [S3]): the enter was
            // allowed, and the kernel answered for the ring.
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_uring_enter failed on a new ring: {e}{}", hint(&e)),
                ));
            }
        }
        Ok(Self {
            ring,
            pending: VecDeque::new(),
            enters: 0,
            features,
            issuer: None,
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

    /// Queues `sqe` as `user_data` ([UR1]).
    #[inline]
    fn push(&mut self, sqe: &Sqe, user_data: u64) {
        let entry = sqe.with_user_data(user_data);
        loop {
            // SAFETY: what `sqe` names outlives the operation (`Sqe`'s invariant); the
            // driver keeps the operation's slot, which owns that memory, until its CQE.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.enter(0, None);
            // Whether the submit went through or the kernel answered EBUSY, draining the
            // CQ into `pending` lets the next enter flush the overflow backlog.
            self.drain_cq();
        }
    }

    /// Makes room for `n` entries ([UR1]'s loop, until `n` fit): a linked chain's
    /// entries are then pushed without a submit between them. False when `n` exceeds
    /// the submission queue.
    pub(crate) fn reserve(&mut self, n: usize) -> bool {
        if n > self.sq_entries() as usize {
            return false;
        }
        loop {
            let sq = self.ring.submission();
            if sq.capacity() - sq.len() >= n {
                return true;
            }
            drop(sq);
            self.enter(0, None);
            self.drain_cq();
        }
    }

    /// Whether entries are queued and not yet submitted.
    pub(crate) fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Whether completions are waiting (a hint for busy polling).
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.pending.is_empty() || !self.ring.completion().is_empty() || self.taskrun_pending()
    }

    /// One `io_uring_enter` that submits what is queued ([UR3]).
    pub(crate) fn submit(&mut self) {
        self.enter(0, None);
    }

    /// Submits and waits for one completion or the timeout.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) {
        self.enter(1, timeout);
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) {
        self.enable(); // setup rule [S3]
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

    /// Whether the CQ or the pending buffer may hold completions, or the kernel holds
    /// overflowed ones ([UR2]): three loads, no store, for the common empty poll.
    fn may_have_completions(&mut self) -> bool {
        !self.pending.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().cq_overflow()
    }

    /// Hands every completion to `f`, pending ones first, with one borrow of the CQ
    /// per batch (its head is published once, when the batch ends), flushing the
    /// kernel's overflow list ([UR2]). `f` must not touch the ring.
    pub(crate) fn reap_with(&mut self, mut f: impl FnMut(Completion)) {
        if !self.may_have_completions() {
            return;
        }
        loop {
            for c in self.pending.drain(..) {
                f(c);
            }
            for cqe in &mut self.ring.completion() {
                f(Completion {
                    user_data: cqe.user_data(),
                    result: cqe.result(),
                    flags: cqe.flags(),
                });
            }
            if !self.ring.submission().cq_overflow() {
                return;
            }
            // The kernel holds CQEs it could not post; an enter with GETEVENTS flushes them.
            self.submit();
        }
    }
}

/// The home thread's view of one registered fd.
struct FdHome {
    node: Arc<FdNode>,
    armed: Option<u64>,
}

/// The io_uring driver of one context (home thread only).
pub(crate) struct UringDriver {
    ring: Ring,
    ops: OpTable,
    fds: HashMap<RawFd, FdHome>,
    event: RawFd,
    /// The target of the notify eventfd read; its address is given to the kernel.
    notify_buf: Box<u64>,
    /// Completions of user operations and fd polls, collected for dispatch ([UR12]).
    completions: VecDeque<Collected>,
    /// Completions collected for dispatch.
    pub(crate) cqes: u64,
    /// The kernel's supported opcodes (`IORING_REGISTER_PROBE`), taken at first need;
    /// `None` inside when the kernel has no probe (every opcode is then assumed).
    probe: Option<Option<io_uring::Probe>>,
    /// The memory of the registered buffer table (`io/fixed.rs`), kept until the
    /// driver is gone (after the ring's last CQE), or leaked with the operations when
    /// the shutdown leaks them.
    fixed: Option<Arc<dyn Send + Sync>>,
}

impl UringDriver {
    /// A driver on `ring`, reading the notify eventfd `event` (which outlives it).
    pub(crate) fn new(ring: Ring, event: RawFd) -> Self {
        let mut d = Self {
            ring,
            ops: OpTable::default(),
            fds: HashMap::new(),
            event,
            notify_buf: Box::new(0),
            completions: VecDeque::new(),
            cqes: 0,
            probe: None,
            fixed: None,
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

    /// Queues `sqe` as `op`; returns its `user_data`. The slot keeps `op` (and what it
    /// owns) until the operation's final CQE.
    #[inline]
    fn push(&mut self, sqe: &Sqe, op: Op) -> u64 {
        let user_data = self.ops.insert(op);
        self.ring.push(sqe, user_data);
        user_data
    }

    /// Registers `iovecs` as the ring's buffer table (`IORING_REGISTER_BUFFERS`),
    /// keeping `keep` (their memory's owner) until the driver is gone.
    ///
    /// # Safety
    /// Every iovec describes memory `keep` owns, valid for reads and writes while
    /// `keep` lives.
    pub(crate) unsafe fn register_buffers(
        &mut self,
        iovecs: &[libc::iovec],
        keep: Arc<dyn Send + Sync>,
    ) -> io::Result<()> {
        if self.fixed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this context's ring has a registered buffer pool already (io_uring takes one buffer table per ring)",
            ));
        }
        // SAFETY: the caller's obligation; `keep` is stored below and outlives the
        // ring's use of the memory (dropped with the driver, after the last CQE).
        unsafe { self.ring.ring.submitter().register_buffers(iovecs) }?;
        self.fixed = Some(keep);
        Ok(())
    }

    /// Registers a file table of `slots` empty entries (`IORING_REGISTER_FILES` with
    /// `-1`s): the kernel's error as is (`EMFILE` beyond `RLIMIT_NOFILE`, `EBUSY` for a
    /// second table, `ENOMEM`). The entries are filled by [`update_file`](Self::update_file).
    pub(crate) fn register_files(&mut self, slots: u32) -> io::Result<()> {
        let fds = vec![-1; slots as usize];
        self.ring.ring.submitter().register_files(&fds)
    }

    /// Sets entry `index` of the registered file table to `fd` (`-1`: empties it;
    /// `IORING_REGISTER_FILES_UPDATE`). The kernel holds its own reference to the file
    /// while the entry names it, and operations already issued on it keep theirs.
    pub(crate) fn update_file(&mut self, index: u32, fd: RawFd) -> io::Result<()> {
        match self
            .ring
            .ring
            .submitter()
            .register_files_update(index, &[fd])?
        {
            1 => Ok(()),
            n => Err(io::Error::other(format!(
                "IORING_REGISTER_FILES_UPDATE of entry {index} updated {n} entries"
            ))),
        }
    }

    /// Whether this kernel's ring runs `opcode` ([UR11]).
    pub(crate) fn supports(&mut self, opcode: u8) -> bool {
        let ring = &self.ring.ring;
        let probe = self.probe.get_or_insert_with(|| {
            let mut probe = io_uring::Probe::new();
            ring.submitter()
                .register_probe(&mut probe)
                .ok()
                .map(|()| probe)
        });
        probe.as_ref().is_none_or(|p| p.is_supported(opcode))
    }

    /// Makes the probe say that no opcode is supported (tests of [UR11]'s fallback).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn pretend_no_opcodes(&mut self) {
        self.probe = Some(Some(io_uring::Probe::new()));
    }

    /// User operations in the table (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn user_ops(&self) -> usize {
        self.ops
            .user_data()
            .filter(|(_, op)| matches!(op, Op::Raw(_)))
            .count()
    }

    /// Whether the probe was made to say no (tests).
    #[cfg(all(test, not(loom)))]
    fn pretends(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| {
            p.as_ref()
                .is_some_and(|p| !p.is_supported(io_uring::opcode::Nop::CODE))
        })
    }

    /// Queues a user operation (checked by `raw::check`); returns its `user_data`.
    #[inline]
    pub(crate) fn push_raw(&mut self, sqe: Sqe, cb: Callback) -> u64 {
        #[cfg(all(test, not(loom)))]
        assert!(
            !(matches!(cb, Callback::Op(_)) && self.pretends()),
            "a typed operation reached a ring whose probe refuses its opcode"
        );
        self.push(&sqe, Op::Raw(cb))
    }

    /// Cancels the user operation `user_data` names if it is still in flight ([UR10]):
    /// an `ASYNC_CANCEL` aimed at exactly that `user_data`, submitted at once. Nothing
    /// happens for a stale `user_data` (the operation's final CQE freed its slot) or one
    /// that names one of the loop's own operations (the tag is checked).
    pub(crate) fn cancel_user(&mut self, user_data: u64) {
        if !self
            .ops
            .find(user_data)
            .is_some_and(|slot| matches!(slot.op, Some(Op::Raw(_))))
        {
            return;
        }
        // SAFETY: an ASYNC_CANCEL names no memory.
        let sqe = unsafe { Sqe::new(opcode::AsyncCancel::new(user_data).build()) };
        self.push(&sqe, Op::Control);
        self.ring.submit();
    }

    fn arm_notify_read(&mut self) {
        let entry =
            opcode::Read::new(types::Fd(self.event), (&raw mut *self.notify_buf).cast(), 8).build();
        // SAFETY: `notify_buf` is a heap box owned by the driver that is freed only after
        // every operation's CQE was reaped, or leaked (see `shutdown`); the eventfd
        // outlives the driver.
        let sqe = unsafe { Sqe::new(entry) };
        self.push(&sqe, Op::NotifyRead);
    }

    /// Applies a handler change for `fd` ([UR5]).
    pub(crate) fn set_fd(&mut self, fd: RawFd, want: Option<Arc<FdNode>>) {
        let same = match (self.fds.get(&fd), &want) {
            (Some(h), Some(node)) => Arc::ptr_eq(&h.node, node),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let armed = self.fds.get_mut(&fd).and_then(|h| h.armed.take());
            if let Some(user_data) = armed {
                // SAFETY: a POLL_REMOVE names no memory.
                let sqe = unsafe { Sqe::new(opcode::PollRemove::new(user_data).build()) };
                self.push(&sqe, Op::Control);
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
        // kernel answer EBADF, which [FD5] (`fd.rs`) handles.
        let sqe = unsafe { Sqe::new(entry) };
        let user_data = self.push(&sqe, Op::Poll(node));
        if let Some(h) = self.fds.get_mut(&fd) {
            h.armed = Some(user_data);
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

    /// Whether something taken from the kernel (or in the CQ) waits for dispatch: a
    /// blocking poll must not sleep then.
    pub(crate) fn has_ready(&mut self) -> bool {
        !self.completions.is_empty() || self.ring.has_completions()
    }

    /// Cancels every operation in flight and reaps its CQE before the ring and the
    /// buffers go away ([UR9]); returns the user callbacks with their CQEs, to be run
    /// by the caller now that the kernel is done with their memory. If the kernel does
    /// not answer within `limit`, the operations left are leaked on purpose rather than
    /// freed under it (their callbacks never run).
    pub(crate) fn shutdown(&mut self, name: &str, limit: Duration) -> Vec<(Callback, i32, u32)> {
        let mut done = Vec::new();
        // Completions reaped but not dispatched (a panic unwound the loop, or a nested
        // poll left them): final results.
        for c in mem::take(&mut self.completions) {
            if let Collected::Raw(cb, res, flags) = c {
                done.push((cb, res, flags));
            }
        }
        if !self.ops.is_empty() && !self.ring.can_enter_here() {
            // Setup rule [S3]: only the thread the kernel bound may enter this ring.
            let users = self
                .ops
                .user_data()
                .filter(|(_, op)| matches!(op, Op::Raw(_)))
                .count();
            if users > 0 {
                log::error!(
                    "{name}: dropped on another thread than the one its single-issuer ring \
                     is bound to, with {users} user operations in flight; leaking their \
                     buffers and callbacks instead of freeing them under the kernel",
                );
            }
            mem::forget(mem::take(&mut self.ops));
            mem::forget(mem::replace(&mut self.notify_buf, Box::new(0)));
            mem::forget(self.fixed.take());
            return done;
        }
        let targets: Vec<u64> = self
            .ops
            .user_data()
            .filter(|(_, op)| !matches!(op, Op::Control))
            .map(|(user_data, _)| user_data)
            .collect();
        for user_data in targets {
            // SAFETY: an ASYNC_CANCEL names no memory.
            let sqe = unsafe { Sqe::new(opcode::AsyncCancel::new(user_data).build()) };
            self.push(&sqe, Op::Control);
        }
        let deadline = sys::monotonic_ns() + limit.as_nanos() as i64;
        loop {
            let ops = &mut self.ops;
            self.ring.reap_with(|c| finish(name, ops, c, &mut done));
            if self.ops.is_empty() || sys::monotonic_ns() >= deadline {
                break;
            }
            self.ring.wait(Some(Duration::from_millis(50)));
        }
        if !self.ops.is_empty() {
            log::error!(
                "{name}: {} ring operations did not complete within {limit:?} of drop; \
                 leaking their buffers instead of freeing them under the kernel",
                self.ops.live,
            );
            mem::forget(mem::take(&mut self.ops));
            mem::forget(mem::replace(&mut self.notify_buf, Box::new(0)));
            mem::forget(self.fixed.take());
        }
        done
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
