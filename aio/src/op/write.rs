//! `WriteAt`: `pwrite` of one owned buffer (io_uring `WRITE`; epoll `pwritev2`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, iovec, rw};
use crate::io_buf::IoBuf;

/// Writes the buffer's `bytes_init()` bytes at `off`.
pub(crate) struct WriteAt<B> {
    pub(crate) fd: Target,
    pub(crate) buf: B,
    pub(crate) off: u64,
}

impl<B: IoBuf> WriteAt<B> {
    fn target(&self) -> (*const u8, usize) {
        (
            self.buf.stable_ptr(),
            self.buf.bytes_init().min(u32::MAX as usize),
        )
    }
}

impl<B: IoBuf> OpCode for WriteAt<B> {
    type Output = B;
    const OPCODE: u8 = opcode::Write::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let (ptr, len) = self.target();
        let entry = super::on_target!(self.fd, |fd| opcode::Write::new(fd, ptr, len as u32)
            .offset(self.off)
            .build());
        // SAFETY: the entry names `buf`'s heap memory (stable across moves), which the
        // caller keeps alive until the final CQE (`OpCode::sqe`'s contract).
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let (ptr, len) = self.target();
        // SAFETY: the iovec covers `buf`'s initialized bytes, owned by `self`.
        super::cqe_res(unsafe {
            rw(
                self.fd.raw(),
                &[iovec(ptr, len)],
                file_off(self.off),
                0,
                false,
            )
        })
    }

    fn stream(&self) -> Option<(RawFd, bool)> {
        Some((self.fd.raw(), false))
    }

    fn run_stream(self: Pin<&mut Self>, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let (ptr, len) = self.target();
        // SAFETY: as in `run_blocking`.
        unsafe { rw(file, &[iovec(ptr, len)], -1, flags, false) }
    }

    fn link_ok(&self, res: i32) -> bool {
        res >= 0 && res as usize == self.target().1
    }

    fn into_output(self, _res: i32) -> B {
        self.buf
    }
}

// The op never pins `B` (it is only moved by value, and only after the final CQE), so
// pinning the op does not pin the buffer.
impl<B> Unpin for WriteAt<B> {}
