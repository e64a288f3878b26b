//! The io_uring ring of one context: setup, submission, waiting, completion reaping.
//!
//! Only the home thread touches the ring (the context enforces it). Rules:
//! 1. SQ full: submit what is queued and retry the push; never drop an entry.
//! 2. CQ overflow: the kernel keeps overflowed CQEs (`IORING_FEAT_NODROP`, required at
//!    setup); after draining the CQ, an `io_uring_enter` flushes the backlog, and we
//!    drain again until the overflow flag is clear. No completion is lost.
//! 3. `EINTR`, `ETIME` and `EBUSY` from a wait are not errors: the loop goes on to reap.
//! 4. Waits pass the timeout to the kernel (`IORING_ENTER_EXT_ARG`), so a sleep costs one
//!    `io_uring_enter` that also submits whatever is queued.

use std::io;
use std::time::Duration;

use io_uring::{IoUring, squeue, types};

/// The largest ring io_uring accepts (`IORING_MAX_ENTRIES`).
pub const MAX_RING_ENTRIES: u32 = 32768;

/// A ring and the counters the loop keeps for it.
pub(crate) struct Ring {
    ring: IoUring,
    /// `io_uring_enter` calls made.
    pub(crate) enters: u64,
}

/// Why a CQE batch was read: one completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Ring {
    /// Sets up a ring of `entries` submission entries.
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        if entries == 0 || entries > MAX_RING_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ring size {entries} is out of range: io_uring takes 1..={MAX_RING_ENTRIES} entries"
                ),
            ));
        }
        let ring = IoUring::builder()
            .setup_clamp()
            .build(entries)
            .map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(libc::ENOMEM) => {
                        " (the ring's memory could not be locked: raise RLIMIT_MEMLOCK or use a smaller ring)"
                    }
                    Some(libc::EPERM) => {
                        " (io_uring is denied here: seccomp, or sysctl kernel.io_uring_disabled)"
                    }
                    Some(libc::ENOSYS) => " (this kernel has no io_uring)",
                    _ => "",
                };
                io::Error::new(e.kind(), format!("io_uring_setup({entries}) failed: {e}{hint}"))
            })?;
        let params = ring.params();
        if !params.is_feature_ext_arg() || !params.is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (Linux 5.11 or later is needed)",
            ));
        }
        Ok(Self { ring, enters: 0 })
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
            self.submit(0);
        }
    }

    /// Whether entries are queued and not yet submitted.
    pub(crate) fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Whether completions are waiting in the CQ (a hint for busy polling).
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// One `io_uring_enter`: submits what is queued, and waits for `want` completions for
    /// at most `timeout` (`None`: no limit). Rule 3.
    pub(crate) fn submit(&mut self, want: usize) {
        self.enter(want, None);
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

    /// Moves every completion into `out`, flushing the kernel's overflow list (rule 2).
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        loop {
            let mut cq = self.ring.completion();
            cq.sync();
            out.extend(cq.map(|cqe| Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            }));
            if !self.ring.submission().cq_overflow() {
                return;
            }
            // The kernel holds CQEs it could not post; an enter with GETEVENTS flushes them.
            self.submit(0);
        }
    }
}
