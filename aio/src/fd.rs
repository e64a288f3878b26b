//! fd handlers: callbacks run by the home thread when a descriptor is readable or
//! writable (QEMU: `aio_set_fd_handler`, `AioHandler`).
//!
//! Rules:
//! [FD1] Any thread may add, replace or remove a handler. The call updates the registry at
//!    once (so a removed handler's callbacks are killed before the call returns and never
//!    run again), queues the fd for the home thread and notifies the context.
//! [FD2] The home thread applies queued changes at the start of its next `poll`: it arms a
//!    one-shot `POLL_ADD` for the wanted events, or removes the armed one by `user_data`.
//! [FD3] Handlers are level-triggered: each `POLL_ADD` completion runs the callbacks once and
//!    re-arms, so a descriptor that stays readable keeps firing (QEMU dropped multishot
//!    poll because it is edge-triggered).
//! [FD4] The in-flight table holds an `Arc` of the handler for every armed poll, so its
//!    memory lives until the last CQE that names it.
//! [FD5] A descriptor the kernel reports as bad (`EBADF`, e.g. closed while registered) has
//!    its handler removed, with a log line: the loop never spins on it.

use std::fmt;
use std::os::fd::RawFd;

use crate::callback::CallbackCell;

/// A handler callback.
pub type FdCallback = Box<dyn FnMut() + Send>;

/// One registration of an fd ([FD4]). Replacing a handler makes a new node.
pub(crate) struct FdNode {
    pub(crate) fd: RawFd,
    read: Option<CallbackCell<dyn FnMut() + Send>>,
    write: Option<CallbackCell<dyn FnMut() + Send>>,
}

impl FdNode {
    pub(crate) fn new(fd: RawFd, read: Option<FdCallback>, write: Option<FdCallback>) -> Self {
        Self {
            fd,
            read: read.map(CallbackCell::new),
            write: write.map(CallbackCell::new),
        }
    }

    /// The `poll(2)` events this node waits for.
    pub(crate) fn events(&self) -> u32 {
        let mut events = 0;
        if self.read.is_some() {
            events |= libc::POLLIN as u32;
        }
        if self.write.is_some() {
            events |= libc::POLLOUT as u32;
        }
        events
    }

    /// Kills both callbacks ([FD1]).
    pub(crate) fn kill(&self) {
        for cb in self.read.iter().chain(self.write.iter()) {
            cb.kill();
        }
    }

    /// Whether the node was removed or replaced.
    pub(crate) fn is_dead(&self) -> bool {
        self.read
            .as_ref()
            .or(self.write.as_ref())
            .is_none_or(CallbackCell::is_dead)
    }

    /// Runs the callbacks that `revents` calls for; returns whether one ran.
    pub(crate) fn dispatch(&self, revents: u32) -> bool {
        let err = (libc::POLLHUP | libc::POLLERR) as u32;
        let mut ran = false;
        if revents & (libc::POLLIN as u32 | err) != 0
            && let Some(cb) = &self.read
        {
            ran |= cb.run(|f| f());
        }
        if revents & (libc::POLLOUT as u32 | err) != 0
            && let Some(cb) = &self.write
        {
            ran |= cb.run(|f| f());
        }
        ran
    }
}

impl fmt::Debug for FdNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdNode")
            .field("fd", &self.fd)
            .field("events", &self.events())
            .finish()
    }
}
