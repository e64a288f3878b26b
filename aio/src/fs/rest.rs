//! [`Rest`]: the part of a buffer after its first `start` bytes, so that
//! `read_exact_at`/`write_all_at` continue a short transfer in the same buffer.

use crate::io_buf::{IoBuf, IoBufMut};

/// `buf` from byte `start` on.
pub(crate) struct Rest<B> {
    pub(crate) buf: B,
    pub(crate) start: usize,
}

// SAFETY: the pointer is `buf`'s stable pointer advanced by `start`, which never
// exceeds `bytes_init()` (the callers' loops stop there), so it stays inside the same
// stable allocation; the count shrinks by the same amount.
unsafe impl<B: IoBuf> IoBuf for Rest<B> {
    fn stable_ptr(&self) -> *const u8 {
        self.buf.stable_ptr().wrapping_add(self.start)
    }
    fn bytes_init(&self) -> usize {
        self.buf.bytes_init().saturating_sub(self.start)
    }
}

// SAFETY: as above, with `bytes_total()`; `set_init` reports the bytes before `start`
// too, which earlier reads of the same loop wrote.
unsafe impl<B: IoBufMut> IoBufMut for Rest<B> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.buf.stable_mut_ptr().wrapping_add(self.start)
    }
    fn bytes_total(&mut self) -> usize {
        self.buf.bytes_total().saturating_sub(self.start)
    }
    unsafe fn set_init(&mut self, n: usize) {
        // SAFETY: the first `start` bytes were written by the loop's earlier reads,
        // the next `n` by this one (the caller's obligation).
        unsafe { self.buf.set_init(self.start + n) };
    }
}
