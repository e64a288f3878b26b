//! `SyncFileRange`: `sync_file_range` (io_uring `SYNC_FILE_RANGE`; epoll the syscall
//! on the pool).

use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, libc_res};

/// `sync_file_range(fd, off, len, flags)`; `len` 0 means "to the end of the file".
pub(crate) struct SyncFileRange {
    pub(crate) fd: Target,
    pub(crate) off: u64,
    pub(crate) len: u32,
    pub(crate) flags: u32,
}

impl OpCode for SyncFileRange {
    type Output = ();
    const OPCODE: u8 = opcode::SyncFileRange::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = super::on_target!(self.fd, |fd| opcode::SyncFileRange::new(fd, self.len)
            .offset(self.off)
            .flags(self.flags)
            .build());
        // SAFETY: a SYNC_FILE_RANGE names no memory.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let off = super::file_off(self.off);
        // SAFETY: plain integer arguments.
        let ret = unsafe { libc::sync_file_range(self.fd.raw(), off, self.len.into(), self.flags) };
        libc_res(ret.into())
    }

    fn into_output(self, _res: i32) {}
}
