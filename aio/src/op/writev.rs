//! `WritevAt`: `pwritev` of owned buffers (io_uring `WRITEV`; epoll `pwritev2`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, rw};
use crate::io_buf::{IoBuf, IoVecs, iovecs};

/// Writes each buffer's `bytes_init()` bytes in order, at `off`.
pub(crate) struct WritevAt<B> {
    fd: Target,
    bufs: Vec<B>,
    /// Points into `bufs`' heap memory.
    iovs: IoVecs,
    off: u64,
}

impl<B: IoBuf> WritevAt<B> {
    pub(crate) fn new(fd: Target, bufs: Vec<B>, off: u64) -> Self {
        let iovs = iovecs(&bufs);
        Self {
            fd,
            bufs,
            iovs,
            off,
        }
    }
}

impl<B: IoBuf> OpCode for WritevAt<B> {
    type Output = Vec<B>;
    const OPCODE: u8 = opcode::Writev::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let iov = &self.iovs.0;
        let entry = super::on_target!(self.fd, |fd| opcode::Writev::new(
            fd,
            iov.as_ptr(),
            iov.len() as u32
        )
        .offset(self.off)
        .build());
        // SAFETY: the entry names the boxed iovec array and the buffers it points into,
        // owned by `self`, which the caller keeps alive until the final CQE.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: the iovecs point into buffers owned by `self`, valid for reads.
        super::cqe_res(unsafe { rw(self.fd.raw(), &self.iovs.0, file_off(self.off), 0, false) })
    }

    fn stream(&self) -> Option<(RawFd, bool)> {
        Some((self.fd.raw(), false))
    }

    fn run_stream(self: Pin<&mut Self>, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: as in `run_blocking`.
        unsafe { rw(file, &self.iovs.0, -1, flags, false) }
    }

    fn link_ok(&self, res: i32) -> bool {
        let asked: usize = self.iovs.0.iter().map(|v| v.iov_len).sum();
        res >= 0 && res as usize == asked
    }

    fn into_output(self, _res: i32) -> Vec<B> {
        drop(self.iovs);
        self.bufs
    }
}

// The op never pins `B` (it is only moved by value, and only after the final CQE), so
// pinning the op does not pin the buffer.
impl<B> Unpin for WritevAt<B> {}
