//! [`BhQueue`]: the home thread's side of the bottom halves — the BHs taken off the
//! list and not run yet, and the spent oneshots kept for reuse ([BH10] (`bh.rs`)).

use std::collections::VecDeque;

use super::BhInner;
use crate::sync::Arc;

/// The home thread's side of the BH machinery: the BHs taken off the list and not run
/// yet, oldest first — the slices of every `poll` on the stack, concatenated ([BH2]
/// and 5). One buffer, reused, so a `poll` that runs BHs allocates nothing and moves no
/// queue around.
#[derive(Default)]
pub(crate) struct BhQueue {
    /// Taken off the list, not run yet: the outermost `poll`'s slice first.
    pub(crate) queued: VecDeque<Arc<BhInner>>,
    /// Spent oneshots kept for reuse ([BH10]), at most [`SPARE_MAX`].
    pub(crate) spare: Vec<Arc<BhInner>>,
}

/// How many spent oneshots the home thread keeps ([BH10]): about 20 KiB at most.
const SPARE_MAX: usize = 256;

impl BhQueue {
    /// Keeps `bh` for reuse if it is a spent oneshot that nothing else references and
    /// the pool has room ([BH10]); else drops it.
    pub(crate) fn recycle(&mut self, bh: Arc<BhInner>) {
        if self.spare.len() < SPARE_MAX
            && bh.is_oneshot()
            && bh.cb.is_dead()
            && Arc::strong_count(&bh) == 1
        {
            self.spare.push(bh);
        }
    }

    /// Takes every BH the home thread took off the list and has not run: the context
    /// is being closed ([BH8]).
    pub(crate) fn take_queued(&mut self) -> VecDeque<Arc<BhInner>> {
        std::mem::take(&mut self.queued)
    }

    /// Timeout contribution of pending BHs: `Some(0)` when one must run now,
    /// `Some(10ms)` for idle ones only, `None` when none is scheduled.
    pub(crate) fn timeout_ns(&self) -> Option<i64> {
        let mut idle = false;
        for bh in &self.queued {
            match bh.wants_run() {
                Some(false) => return Some(0),
                Some(true) => idle = true,
                None => {}
            }
        }
        idle.then_some(10_000_000)
    }
}
