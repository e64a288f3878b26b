//! `LinkTimeout`: the deadline of the operation it is linked behind (io_uring
//! `LINK_TIMEOUT`). It exists only linked: where a chain runs step by step, and on
//! epoll, the deadline is a timer that cancels the operation instead (`io/deadline.rs`).

use std::pin::Pin;
use std::time::Duration;

use io_uring::{opcode, types};

use super::{OpCode, Sqe};

/// Cancels the operation before it in its chain if that one has not completed within
/// the duration (relative to the submission).
pub(crate) struct LinkTimeout {
    ts: Box<types::Timespec>,
}

impl LinkTimeout {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            ts: Box::new(types::Timespec::from(after)),
        }
    }
}

impl OpCode for LinkTimeout {
    type Output = ();
    const OPCODE: u8 = opcode::LinkTimeout::CODE;
    const LINK_TIMEOUT: bool = true;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = opcode::LinkTimeout::new(&raw const *self.ts).build();
        // SAFETY: the entry names the boxed timespec owned by `self`, which the caller
        // keeps alive until the final CQE (`OpCode::sqe`'s contract).
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // Never run on its own (module docs): nothing to time out.
        -libc::ECANCELED
    }

    fn into_output(self, _res: i32) {}
}
