//! Collecting completions off the CQ and handing them out for dispatch ([UR12] in
//! `uring.rs`; [UR6] to [UR8] for the loop's own operations).

use std::collections::VecDeque;
use std::io;

use io_uring::cqueue;

use super::super::Ready;
use super::super::ops::{Op, OpTable};
use super::{Completion, UringDriver};
use crate::completion::Callback;
use crate::fd::FdNode;
use crate::sync::Arc;

/// A CQE collected for dispatch, with what its slot held ([UR12]).
pub(super) enum Collected {
    /// A user operation's CQE: its callback (a clone of a kept handler's reference for
    /// a multishot operation's non-final CQE), `res`, `flags`.
    Raw(Callback, i32, u32),
    /// An fd handler's poll: the handler, the poll's `user_data`, `res`.
    Poll(Arc<FdNode>, u64, i32),
}

impl UringDriver {
    /// Takes every completion off the ring: the loop's own ones are handled in place
    /// ([UR6] to [UR8]), the others queued for dispatch with what their slots held
    /// ([UR12]).
    pub(crate) fn collect(&mut self, name: &str) {
        let Self {
            ring,
            ops,
            completions,
            cqes,
            ..
        } = self;
        let mut rearm_notify = false;
        ring.reap_with(|c| {
            *cqes += 1;
            rearm_notify |= triage(name, ops, completions, c);
        });
        if rearm_notify {
            // [UR6]: before anything is dispatched, so before the loop can sleep.
            self.arm_notify_read();
        }
    }

    /// The next collected item to run.
    pub(crate) fn next_ready(&mut self) -> Option<Ready> {
        while let Some(c) = self.completions.pop_front() {
            let (node, user_data, result) = match c {
                Collected::Raw(cb, res, flags) => return Some(Ready::Raw(cb, res, flags)),
                Collected::Poll(node, user_data, result) => (node, user_data, result),
            };
            let fd = node.fd;
            let current = match self.fds.get_mut(&fd) {
                Some(h) if h.armed == Some(user_data) => {
                    h.armed = None;
                    Arc::ptr_eq(&h.node, &node)
                }
                _ => false,
            };
            if !current {
                continue;
            }
            if result == -libc::ECANCELED {
                // Not our POLL_REMOVE (that one unsets `armed` first): a user
                // cancel reached the poll ([UR8]).
                self.arm_poll(fd);
                continue;
            }
            if result < 0 {
                return Some(Ready::FdFailed(node, io::Error::from_raw_os_error(-result)));
            }
            return Some(Ready::Fd(node, result as u32));
        }
        None
    }
}

/// Handles one CQE as it is collected ([UR6] to [UR8], [UR12]): the loop's own
/// operations in place (returns true when the notify read must be armed again), a user
/// operation's or an fd poll's queued for dispatch with what its slot held, the slot
/// freed at the final CQE. A stale CQE is logged and dropped.
fn triage(name: &str, ops: &mut OpTable, queue: &mut VecDeque<Collected>, c: Completion) -> bool {
    let Some(slot) = ops.find(c.user_data) else {
        log::warn!(
            "{name}: dropped a CQE for no operation in flight (user_data {:#x}, res {}, \
             flags {:#x}): stale or foreign",
            c.user_data,
            c.result,
            c.flags
        );
        return false;
    };
    if cqueue::more(c.flags) {
        // Only a kept handler may be multishot (`raw::check`, [RW5]); the slot stays.
        match &slot.op {
            Some(Op::Raw(Callback::Shared(h))) => {
                let cb = Callback::Shared(std::sync::Arc::clone(h));
                queue.push_back(Collected::Raw(cb, c.result, c.flags));
            }
            _ => log::warn!(
                "{name}: dropped a non-final CQE (IORING_CQE_F_MORE) of user_data {:#x}, \
                 which is not a multishot operation",
                c.user_data
            ),
        }
        return false;
    }
    match ops.take_found(c.user_data) {
        Op::NotifyRead => {
            if c.result < 0 && c.result != -libc::ECANCELED {
                log::warn!(
                    "{name}: notify eventfd read failed: {}",
                    io::Error::from_raw_os_error(-c.result)
                );
            }
            // Also after ECANCELED: a user cancel reached it ([UR8]); the drop path
            // does not come here.
            true
        }
        Op::Control => false,
        Op::Poll(node) => {
            queue.push_back(Collected::Poll(node, c.user_data, c.result));
            false
        }
        Op::Raw(cb) => {
            queue.push_back(Collected::Raw(cb, c.result, c.flags));
            false
        }
    }
}

/// Drop path: frees the operation a final CQE names, keeping a user callback and its
/// CQE in `done`; a kept handler also gets its operation's non-final CQEs.
pub(super) fn finish(
    name: &str,
    ops: &mut OpTable,
    c: Completion,
    done: &mut Vec<(Callback, i32, u32)>,
) {
    if cqueue::more(c.flags) {
        if let Some(Op::Raw(Callback::Shared(h))) =
            ops.find(c.user_data).and_then(|s| s.op.as_ref())
        {
            done.push((
                Callback::Shared(std::sync::Arc::clone(h)),
                c.result,
                c.flags,
            ));
        }
        return;
    }
    match ops.remove(c.user_data) {
        Some(Op::Raw(cb)) => done.push((cb, c.result, c.flags)),
        Some(_) => {}
        None => log::warn!(
            "{name}: dropped a CQE for no operation in flight at drop (user_data {:#x})",
            c.user_data
        ),
    }
}
