//! The buffers owned-buffer I/O hands to the kernel ([IO1] (`io.rs`)): [`IoBuf`],
//! [`IoBufMut`], and the `iovec` arrays of vectored operations.

/// A buffer the kernel may read from: its bytes stay at the same address when the
/// value is moved (a heap buffer).
///
/// # Safety
/// `stable_ptr()` must point at `bytes_init()` initialized bytes that stay valid and at
/// the same address while the value is alive, even when it is moved, and must not be
/// changed by anything but the owner.
pub unsafe trait IoBuf: Send + 'static {
    /// The address of the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes are initialized (what a write sends).
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel may write into. A read writes up to [`bytes_total`] bytes at
/// [`stable_mut_ptr`] — the spare capacity included, which need not be initialized —
/// then calls [`set_init`] with the count it wrote.
///
/// # Safety
/// As for [`IoBuf`], and `stable_mut_ptr()` must be valid for writes of
/// `bytes_total()` bytes.
///
/// [`bytes_total`]: IoBufMut::bytes_total
/// [`stable_mut_ptr`]: IoBufMut::stable_mut_ptr
/// [`set_init`]: IoBufMut::set_init
pub unsafe trait IoBufMut: IoBuf {
    /// The address of the first byte, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// How many bytes a read may write (for a `Vec`, its capacity). Default:
    /// `bytes_init()`.
    fn bytes_total(&mut self) -> usize {
        self.bytes_init()
    }

    /// Records that a read wrote the first `n` bytes (`n <= bytes_total()`); a `Vec`
    /// grows its length to `n` if it was shorter. Default: nothing.
    ///
    /// # Safety
    /// The first `n` bytes at `stable_mut_ptr()` were written.
    unsafe fn set_init(&mut self, n: usize) {
        let _ = n;
    }
}

// SAFETY: a Vec's elements live on the heap and do not move with the Vec; `len` bytes
// are initialized.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; the pointer is derived from `&mut self`, and the allocation holds
// `capacity()` bytes.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: `n <= capacity()` bytes were written (the caller's obligation),
            // and the bytes below `len()` were initialized already.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: a boxed slice lives on the heap and does not move with the box.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: static data never moves or goes away, and `&[u8]` gives no write access.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// `iovec`s pointing into buffers owned by the same operation.
pub(crate) struct IoVecs(pub(crate) Box<[libc::iovec]>);

// SAFETY: the iovecs only point into buffers owned by the same in-flight operation,
// which moves between threads with them (the buffers are `Send`).
unsafe impl Send for IoVecs {}

/// Records a vectored read of `n` bytes in `bufs`, filled in order (`set_init`).
pub(crate) fn set_init_vectored<B: IoBufMut>(bufs: &mut [B], mut n: usize) {
    for b in bufs {
        if n == 0 {
            return;
        }
        let k = n.min(b.bytes_total());
        // SAFETY: a vectored read fills its iovecs in order, and `iovecs_mut` gave the
        // kernel `bytes_total()` bytes of each buffer: the first `k` bytes of this one
        // were written.
        unsafe { b.set_init(k) };
        n -= k;
    }
}

pub(crate) fn iovecs<B: IoBuf>(bufs: &[B]) -> IoVecs {
    IoVecs(
        bufs.iter()
            .map(|b| libc::iovec {
                iov_base: b.stable_ptr().cast_mut().cast(),
                iov_len: b.bytes_init(),
            })
            .collect(),
    )
}

pub(crate) fn iovecs_mut<B: IoBufMut>(bufs: &mut [B]) -> IoVecs {
    IoVecs(
        bufs.iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.stable_mut_ptr().cast(),
                iov_len: b.bytes_total(),
            })
            .collect(),
    )
}
