//! [`LinkBuf`]: one buffer shared by the two steps of a read → write chain
//! ([LK5] (`io/link.rs`)). Each step holds a share until its own final completion, so
//! the buffer outlives both; the chain's future takes it back once both are done.

use std::cell::UnsafeCell;

use crate::io_buf::{IoBuf, IoBufMut};
use crate::sync::Arc;
use crate::sync::atomic::{AtomicUsize, Ordering};

struct Cell<B> {
    buf: UnsafeCell<B>,
    /// Where the buffer's bytes are and how many a read may fill, taken once at
    /// creation (the steps never touch the `B` itself).
    ptr: *mut u8,
    total: usize,
    /// What the read reported, applied with `set_init` when the buffer is taken back.
    filled: AtomicUsize,
}

// SAFETY: the `B` is only touched at creation and by `into_inner`, with no other share
// left; the steps only use `ptr`/`total`, and the kernel's ordering of the chain keeps
// the read's writes before the write's reads.
unsafe impl<B: Send> Send for Cell<B> {}
// SAFETY: as above: shared access never touches the `B`.
unsafe impl<B: Send> Sync for Cell<B> {}

/// A share of a chain's buffer.
pub(crate) struct LinkBuf<B>(Arc<Cell<B>>);

impl<B: IoBufMut> LinkBuf<B> {
    /// Two shares of `buf`: one for the read, one for the write.
    pub(crate) fn pair(mut buf: B) -> (Self, Self) {
        let ptr = buf.stable_mut_ptr();
        let total = buf.bytes_total();
        let cell = Arc::new(Cell {
            buf: UnsafeCell::new(buf),
            ptr,
            total,
            filled: AtomicUsize::new(0),
        });
        (Self(Arc::clone(&cell)), Self(cell))
    }

    /// The buffer, once the other share is gone, with the read's count applied.
    pub(crate) fn into_inner(self, other: Self) -> B {
        drop(other);
        let cell = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| unreachable!("both steps of the chain handed their share back"));
        let mut buf = cell.buf.into_inner();
        // Relaxed: written by the read's completion, which happened before its result
        // reached the future (the slot's lock orders it).
        let n = cell.filled.load(Ordering::Relaxed);
        if n > 0 {
            // SAFETY: the read wrote `n <= total` bytes at the buffer's start.
            unsafe { buf.set_init(n) };
        }
        buf
    }
}

// SAFETY: `ptr` is the stable address of the `B` the cell owns (heap memory that does
// not move with it) and stays valid while any share lives; the write step sends
// `total` bytes, which the chain's read filled in full before the kernel starts the
// write (a short read breaks the chain: the write never runs).
unsafe impl<B: IoBufMut> IoBuf for LinkBuf<B> {
    fn stable_ptr(&self) -> *const u8 {
        self.0.ptr
    }
    fn bytes_init(&self) -> usize {
        self.0.total
    }
}

// SAFETY: as above; `total` bytes at `ptr` are writable (`bytes_total` of the `B`).
unsafe impl<B: IoBufMut> IoBufMut for LinkBuf<B> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.0.ptr
    }
    fn bytes_total(&mut self) -> usize {
        self.0.total
    }
    unsafe fn set_init(&mut self, n: usize) {
        // Relaxed: read by `into_inner` after the chain's future saw both results.
        self.0.filled.store(n, Ordering::Relaxed);
    }
}
