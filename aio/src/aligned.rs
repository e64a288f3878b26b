//! `AlignedBuf`: memory aligned for `O_DIRECT` I/O, owned by one operation at a time.
//!
//! Rules:
//! - [A1] The memory is allocated once, aligned to `align` (a power of two), zeroed by
//!   the allocation itself (fresh pages from the kernel for large buffers) and never
//!   again: a read into it costs no fill, and the buffer is reused from one read to the
//!   next by taking it back from the completed operation.
//! - [A2] Its bytes never move while it lives (it is a heap block, not resized), so the
//!   kernel may use them through [`IoBuf`]/[`IoBufMut`] for as long as the operation
//!   owns the buffer; it is freed only by its own drop, i.e. after the operation's final
//!   completion gave it back or dropped it.
//! - [A3] Alignment checks happen before the kernel sees a request: [`for_file`] takes
//!   the file's `dio_mem_align`/`dio_offset_align` from `statx(STATX_DIOALIGN)`, aligns
//!   memory to the larger of the two (a device may report a memory alignment it does
//!   not honour: see `for_file`), and refuses a length that is not a multiple of the
//!   offset alignment;
//!   [`check_offset`](AlignedBuf::check_offset) does the same for an offset.
//!
//! [`for_file`]: AlignedBuf::for_file

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::ptr::NonNull;

use crate::io_buf::{IoBuf, IoBufMut};
use crate::sys;

/// The alignment [`AlignedBuf::for_file`] uses when the kernel does not report the
/// file's (`statx` without `STATX_DIOALIGN`, before Linux 6.1): a page, which every
/// block device accepts.
pub const FALLBACK_DIO_ALIGN: usize = 4096;

/// A heap buffer aligned for `O_DIRECT` (rules A1-A3 in `aligned.rs`): `len` bytes at
/// an address that is a multiple of `align`. A read fills it without zeroing it first;
/// give it to [`AioContext::read_at`](crate::AioContext::read_at) and take it back from
/// the result to read again.
///
/// ```
/// use aioctx_aio::AlignedBuf;
/// let mut buf = AlignedBuf::new(8192, 4096)?;
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// buf[..5].copy_from_slice(b"hello");
/// assert_eq!(&buf[..5], b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
    /// The file offset alignment `check_offset` enforces.
    offset_align: usize,
}

// SAFETY: the buffer owns its memory exclusively (like a `Box<[u8]>`).
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for AlignedBuf {}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl AlignedBuf {
    /// `len` bytes aligned to `align`.
    ///
    /// # Errors
    /// `InvalidInput` when `align` is not a power of two, `len` is 0, or the size
    /// overflows; `OutOfMemory` when the allocation fails.
    pub fn new(len: usize, align: usize) -> io::Result<Self> {
        if !align.is_power_of_two() {
            return Err(invalid(format!(
                "AlignedBuf: alignment {align} is not a power of two"
            )));
        }
        if len == 0 {
            return Err(invalid("AlignedBuf: length 0".to_owned()));
        }
        let layout = Layout::from_size_align(len, align)
            .map_err(|e| invalid(format!("AlignedBuf: {len} bytes at {align}: {e}")))?;
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("AlignedBuf: allocating {len} bytes failed"),
            )
        })?;
        Ok(Self {
            ptr,
            len,
            align,
            offset_align: align,
        })
    }

    /// A buffer of `len` bytes for `O_DIRECT` I/O on `file`: aligned to the larger of
    /// the file's `dio_mem_align` and `dio_offset_align` ([`FALLBACK_DIO_ALIGN`] where
    /// the kernel does not report them). Not to `dio_mem_align` alone: a zram device on
    /// Linux 6.18 reports 512 for it, yet a read into a buffer that is 512- but not
    /// 4096-aligned (its logical block size) writes whole pages around the buffer,
    /// with `pread` and io_uring alike.
    ///
    /// # Errors
    /// `InvalidInput` when `len` is not a multiple of the file's `dio_offset_align`
    /// (the message names both), or the file does not support `O_DIRECT` (its
    /// alignment is reported as 0); the `statx` error; as [`new`](Self::new).
    pub fn for_file(file: impl AsFd, len: usize) -> io::Result<Self> {
        let (mem, offset) = dio_alignment(file)?;
        if !len.is_multiple_of(offset) {
            return Err(invalid(format!(
                "AlignedBuf: length {len} is not a multiple of the file's O_DIRECT offset \
                 alignment {offset}"
            )));
        }
        let mut buf = Self::new(len, mem.max(offset))?;
        buf.offset_align = offset;
        Ok(buf)
    }

    /// Checks an `O_DIRECT` file offset before the kernel sees it: against the file's
    /// `dio_offset_align` for a buffer made by [`for_file`](Self::for_file), else
    /// against the buffer's alignment.
    ///
    /// # Errors
    /// `InvalidInput` naming the offset and the alignment.
    pub fn check_offset(&self, offset: u64) -> io::Result<()> {
        if !offset.is_multiple_of(self.offset_align as u64) {
            return Err(invalid(format!(
                "O_DIRECT offset {offset} is not a multiple of the file's offset alignment {}",
                self.offset_align
            )));
        }
        Ok(())
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a buffer has at least one byte); for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The alignment of the first byte.
    pub fn align(&self) -> usize {
        self.align
    }
}

/// The `O_DIRECT` alignment of `file`: `(memory, offset)` from
/// `statx(STATX_DIOALIGN)`, or [`FALLBACK_DIO_ALIGN`] for both where the kernel does not
/// report them.
///
/// # Errors
/// The `statx` error; `InvalidInput` when the file does not support `O_DIRECT`.
pub fn dio_alignment(file: impl AsFd) -> io::Result<(usize, usize)> {
    match sys::dio_align(file.as_fd())? {
        None => Ok((FALLBACK_DIO_ALIGN, FALLBACK_DIO_ALIGN)),
        Some((0, _) | (_, 0)) => Err(invalid(
            "this file does not support O_DIRECT (statx reports no alignment)".to_owned(),
        )),
        Some((mem, offset)) => Ok((mem as usize, offset as usize)),
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` bytes this buffer owns, initialized by the
        // zeroing allocation (or the kernel's writes since).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout (checked there), freed once.
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, self.align),
            );
        }
    }
}

// SAFETY: [A2]: a heap block that does not move with the value and is freed only by its
// drop; all `len` bytes are initialized ([A1]).
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: as above; the pointer comes from `&mut self`.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}
