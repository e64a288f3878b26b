//! `WriteFixed`: `pwrite` from one buffer of the ring's registered buffer table
//! (io_uring `WRITE_FIXED`; on the worker pool, where the ring lacks the opcode,
//! `pwritev2`).

use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, iovec, rw};
use crate::io_buf::IoBuf;

/// Writes `buf`'s `bytes_init()` bytes at `off`; `buf` is entry `index` of the ring's
/// registered buffer table (the caller checked that).
pub(crate) struct WriteFixed<B> {
    pub(crate) fd: Target,
    pub(crate) buf: B,
    pub(crate) index: u16,
    pub(crate) off: u64,
}

impl<B: IoBuf> OpCode for WriteFixed<B> {
    type Output = B;
    const OPCODE: u8 = opcode::WriteFixed::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let len = self.buf.bytes_init().min(u32::MAX as usize) as u32;
        let ptr = self.buf.stable_ptr();
        let entry = super::on_target!(self.fd, |fd| opcode::WriteFixed::new(
            fd, ptr, len, self.index
        )
        .offset(self.off)
        .build());
        // SAFETY: the entry names `buf`'s initialized bytes, inside registered buffer
        // `index`; the caller keeps them alive and unchanged until the final CQE
        // (`OpCode::sqe`'s contract), and the pool's memory outlives the ring.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let iov = iovec(self.buf.stable_ptr(), self.buf.bytes_init());
        // SAFETY: the iovec covers `buf`'s initialized bytes, owned by `self` for the call.
        super::cqe_res(unsafe { rw(self.fd.raw(), &[iov], file_off(self.off), 0, false) })
    }

    fn into_output(self, _res: i32) -> B {
        self.buf
    }
}

// The op never pins `B` (it is only moved by value, after the final CQE).
impl<B> Unpin for WriteFixed<B> {}
