//! `Fallocate`: `fallocate` (io_uring `FALLOCATE`; epoll `fallocate(2)` on the pool).

use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, libc_res};

/// `fallocate(fd, mode, off, len)`.
pub(crate) struct Fallocate {
    pub(crate) fd: Target,
    pub(crate) mode: libc::c_int,
    pub(crate) off: u64,
    pub(crate) len: u64,
}

impl OpCode for Fallocate {
    type Output = ();
    const OPCODE: u8 = opcode::Fallocate::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = super::on_target!(self.fd, |fd| opcode::Fallocate::new(fd, self.len)
            .offset(self.off)
            .mode(self.mode)
            .build());
        // SAFETY: a FALLOCATE names no memory.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let off = super::file_off(self.off);
        let len = super::file_off(self.len);
        // SAFETY: plain integer arguments.
        libc_res(unsafe { libc::fallocate(self.fd.raw(), self.mode, off, len) }.into())
    }

    fn into_output(self, _res: i32) {}
}
