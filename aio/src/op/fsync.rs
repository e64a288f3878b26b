//! `Fsync`: `fsync`/`fdatasync` (io_uring `FSYNC`; epoll the same syscalls).

use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, Target};
use crate::sys;

/// Flushes the file's data, and its metadata unless `data_only`.
pub(crate) struct Fsync {
    pub(crate) fd: Target,
    pub(crate) data_only: bool,
}

impl OpCode for Fsync {
    type Output = ();
    const OPCODE: u8 = opcode::Fsync::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let flags = if self.data_only {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        // SAFETY: an FSYNC names no memory.
        unsafe {
            Sqe::new(super::on_target!(self.fd, |fd| opcode::Fsync::new(fd)
                .flags(flags)
                .build()))
        }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let res = if self.data_only {
            sys::fdatasync(self.fd.raw())
        } else {
            sys::fsync(self.fd.raw())
        };
        super::cqe_res(res.map(|()| 0))
    }

    fn into_output(self, _res: i32) {}
}
