//! `ReadvAt`: `preadv` into owned buffers (io_uring `READV`; epoll `preadv2`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, rw};
use crate::io_buf::{IoBufMut, IoVecs, iovecs_mut, set_init_vectored};

/// Reads into each buffer's `bytes_total()` bytes in order, at `off`.
pub(crate) struct ReadvAt<B> {
    fd: Target,
    bufs: Vec<B>,
    /// Points into `bufs`' heap memory; built once, so a resubmission names the same.
    iovs: IoVecs,
    off: u64,
}

impl<B: IoBufMut> ReadvAt<B> {
    pub(crate) fn new(fd: Target, mut bufs: Vec<B>, off: u64) -> Self {
        let iovs = iovecs_mut(&mut bufs);
        Self {
            fd,
            bufs,
            iovs,
            off,
        }
    }
}

impl<B: IoBufMut> OpCode for ReadvAt<B> {
    type Output = Vec<B>;
    const OPCODE: u8 = opcode::Readv::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let iov = &self.iovs.0;
        let entry = super::on_target!(self.fd, |fd| opcode::Readv::new(
            fd,
            iov.as_ptr(),
            iov.len() as u32
        )
        .offset(self.off)
        .build());
        // SAFETY: the entry names the boxed iovec array and the buffers' heap memory it
        // points into, all owned by `self`, which the caller keeps alive and untouched
        // until the final CQE (`OpCode::sqe`'s contract).
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: the iovecs point into buffers owned by `self`, valid for writes.
        super::cqe_res(unsafe { rw(self.fd.raw(), &self.iovs.0, file_off(self.off), 0, true) })
    }

    fn stream(&self) -> Option<(RawFd, bool)> {
        Some((self.fd.raw(), true))
    }

    fn run_stream(self: Pin<&mut Self>, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: as in `run_blocking`.
        unsafe { rw(file, &self.iovs.0, -1, flags, true) }
    }

    fn link_ok(&self, res: i32) -> bool {
        let asked: usize = self.iovs.0.iter().map(|v| v.iov_len).sum();
        res >= 0 && res as usize == asked
    }

    fn into_output(mut self, res: i32) -> Vec<B> {
        drop(self.iovs);
        if res > 0 {
            set_init_vectored(&mut self.bufs, res as usize);
        }
        self.bufs
    }
}

// The op never pins `B` (it is only moved by value, and only after the final CQE), so
// pinning the op does not pin the buffer.
impl<B> Unpin for ReadvAt<B> {}
