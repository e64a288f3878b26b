//! `ReadFixed`: `pread` into one buffer of the ring's registered buffer table (io_uring
//! `READ_FIXED`; on the worker pool, where the ring lacks the opcode, `preadv2`).

use std::pin::Pin;

use io_uring::opcode;

use super::{OpCode, Sqe, Target, file_off, iovec, rw};
use crate::io_buf::IoBufMut;

/// Reads up to `bytes_total()` bytes at `off` into `buf`, which is entry `index` of the
/// ring's registered buffer table (the caller checked that).
pub(crate) struct ReadFixed<B> {
    pub(crate) fd: Target,
    pub(crate) buf: B,
    pub(crate) index: u16,
    pub(crate) off: u64,
}

impl<B: IoBufMut> OpCode for ReadFixed<B> {
    type Output = B;
    const OPCODE: u8 = opcode::ReadFixed::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let this = self.get_mut();
        let len = this.buf.bytes_total().min(u32::MAX as usize) as u32;
        let ptr = this.buf.stable_mut_ptr();
        let entry = super::on_target!(this.fd, |fd| opcode::ReadFixed::new(
            fd, ptr, len, this.index
        )
        .offset(this.off)
        .build());
        // SAFETY: the entry names `buf`'s memory, inside registered buffer `index`,
        // for `bytes_total()` bytes; the caller keeps it alive and untouched until the
        // final CQE (`OpCode::sqe`'s contract), and the pool's memory outlives the ring.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let this = self.get_mut();
        let len = this.buf.bytes_total();
        let ptr = this.buf.stable_mut_ptr();
        // SAFETY: the iovec covers `buf`'s writable memory, owned by `self` for the call.
        let res = unsafe {
            rw(
                this.fd.raw(),
                &[iovec(ptr, len)],
                file_off(this.off),
                0,
                true,
            )
        };
        super::cqe_res(res)
    }

    fn into_output(mut self, res: i32) -> B {
        if res > 0 {
            // SAFETY: the kernel (or the syscall) wrote `res` bytes at the buffer's start.
            unsafe { self.buf.set_init(res as usize) };
        }
        self.buf
    }
}

// The op never pins `B` (it is only moved by value, after the final CQE).
impl<B> Unpin for ReadFixed<B> {}
