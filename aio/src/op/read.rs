//! `ReadAt`: `pread` into one owned buffer (io_uring `READ`; epoll `preadv2`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, iovec, rw};
use crate::io_buf::IoBufMut;

/// Reads up to the buffer's `bytes_total()` bytes at `off`; the buffer's initialized
/// length grows to what was read (`IoBufMut::set_init`).
pub(crate) struct ReadAt<B> {
    pub(crate) fd: Target,
    pub(crate) buf: B,
    pub(crate) off: u64,
    /// The length last asked of the kernel (for `link_ok`).
    pub(crate) asked: u32,
}

impl<B: IoBufMut> ReadAt<B> {
    /// A read of `buf` at `off`.
    pub(crate) fn new(fd: Target, buf: B, off: u64) -> Self {
        Self {
            fd,
            buf,
            off,
            asked: 0,
        }
    }

    fn target(&mut self) -> (*mut u8, usize) {
        let len = self.buf.bytes_total().min(u32::MAX as usize);
        self.asked = len as u32;
        (self.buf.stable_mut_ptr(), len)
    }
}

impl<B: IoBufMut> OpCode for ReadAt<B> {
    type Output = B;
    const OPCODE: u8 = opcode::Read::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let this = self.get_mut();
        let (ptr, len) = this.target();
        let entry = super::on_target!(this.fd, |fd| opcode::Read::new(fd, ptr, len as u32)
            .offset(this.off)
            .build());
        // SAFETY: the entry names `buf`'s heap memory (stable across moves, `IoBuf`'s
        // contract) for `bytes_total()` bytes, which the caller keeps alive and
        // untouched until the final CQE (`OpCode::sqe`'s contract).
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let this = self.get_mut();
        let (ptr, len) = this.target();
        let off = file_off(this.off);
        // SAFETY: the iovec covers `buf`'s writable memory, owned by `self` for the call.
        super::cqe_res(unsafe { rw(this.fd.raw(), &[iovec(ptr, len)], off, 0, true) })
    }

    fn stream(&self) -> Option<(RawFd, bool)> {
        Some((self.fd.raw(), true))
    }

    fn run_stream(self: Pin<&mut Self>, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let this = self.get_mut();
        let (ptr, len) = this.target();
        // SAFETY: as in `run_blocking`.
        unsafe { rw(file, &[iovec(ptr, len)], -1, flags, true) }
    }

    fn link_ok(&self, res: i32) -> bool {
        // The length the entry asked for: `bytes_total()` needs `&mut`, so it is kept
        // by `sqe`/`run_blocking` (a short read breaks a chain).
        res >= 0 && res as u32 == self.asked
    }

    fn into_output(mut self, res: i32) -> B {
        if res > 0 {
            // SAFETY: the kernel (or the syscall) wrote `res` bytes at the buffer's start.
            unsafe { self.buf.set_init(res as usize) };
        }
        self.buf
    }
}

// The op never pins `B` (it is only moved by value, and only after the final CQE), so
// pinning the op does not pin the buffer.
impl<B> Unpin for ReadAt<B> {}
