//! `Ftruncate`: `ftruncate` (io_uring `FTRUNCATE`, Linux 6.9 and later; on an older
//! ring, and on epoll, `ftruncate(2)` on the worker pool).

use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, Target, libc_res};

/// `ftruncate(fd, len)`.
pub(crate) struct Ftruncate {
    pub(crate) fd: Target,
    pub(crate) len: u64,
}

impl OpCode for Ftruncate {
    type Output = ();
    const OPCODE: u8 = opcode::Ftruncate::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = opcode::Ftruncate::new(types::Fd(self.fd.raw()), self.len).build();
        // SAFETY: an FTRUNCATE names no memory.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let len = super::file_off(self.len);
        // SAFETY: plain integer arguments.
        libc_res(unsafe { libc::ftruncate(self.fd.raw(), len) }.into())
    }

    fn into_output(self, _res: i32) {}
}
