//! Registered buffers (QEMU: `luring_register_buffers`-style `IORING_REGISTER_BUFFERS`;
//! tokio-uring's `FixedBufPool`): a [`FixedBufPool`] of equal buffers registered as the
//! ring's buffer table, read and written with `READ_FIXED`/`WRITE_FIXED`
//! ([`AioContext::read_fixed_at`], [`AioContext::write_fixed_at`]).
//!
//! Rules:
//! [FX1] The pool owns its memory ([`PoolMem`]); the ring's driver keeps a share of it from
//!    registration until the driver is gone — after the ring's last CQE was reaped, or
//!    never, when the shutdown leaks what is in flight — so the kernel's table never
//!    names freed memory, whatever happens to the pool and its buffers.
//! [FX2] A [`FixedBuf`] is one entry, taken from the pool's free list and given back when
//!    it is dropped; an operation owns it until its final completion ([IO1] (`io.rs`)).
//! [FX3] An operation on a buffer of a pool registered on *its* context's ring is lowered
//!    to `READ_FIXED`/`WRITE_FIXED` with the entry's index; any other (epoll, a pool
//!    that could not be registered, another context's pool) to a plain `READ`/`WRITE`
//!    (`pread`/`pwrite` on epoll) with the same result.
//! [FX4] One table per ring: registering a second pool on a context fails.
//! [FX5] Each buffer starts on a page boundary (`FIXED_BUF_ALIGN`, 4096 bytes), so a pool
//!    serves O_DIRECT files whose memory alignment is at most a page (all Linux has).

use std::io;
use std::os::fd::RawFd;
use std::sync::Weak;

use super::RingOp;
use crate::context::AioContext;
use crate::op::{ReadAt, ReadFixed, Target, WriteAt, WriteFixed};
use crate::sync::{Arc, Mutex, lock};

/// The most buffers a pool holds (io_uring's `IORING_MAX_REG_BUFFERS`).
pub const MAX_FIXED_BUFS: usize = 1 << 14;
/// The largest buffer of a pool (io_uring's limit: 1 GiB).
pub const MAX_FIXED_BUF_SIZE: usize = 1 << 30;

/// The alignment of each buffer of a pool ([FX5]): a page, enough for O_DIRECT.
const FIXED_BUF_ALIGN: usize = 4096;

/// The layout of one buffer of `size` bytes ([FX5]).
fn buf_layout(size: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(size, FIXED_BUF_ALIGN)
        .expect("a buffer size within MAX_FIXED_BUF_SIZE has a layout")
}

/// The pool's memory: `count` zero-filled heap allocations of `size` bytes ([FX1]),
/// each aligned to `FIXED_BUF_ALIGN` ([FX5]).
struct PoolMem {
    ptrs: Vec<*mut u8>,
    size: usize,
}

// SAFETY: the pointers are heap allocations owned by this value; who touches which
// byte is arbitrated by the free list (one `FixedBuf` per entry) and the kernel.
unsafe impl Send for PoolMem {}
// SAFETY: as above; `PoolMem` itself never reads or writes the memory.
unsafe impl Sync for PoolMem {}

impl Drop for PoolMem {
    fn drop(&mut self) {
        for &p in &self.ptrs {
            // SAFETY: `p` came from `alloc_zeroed` with `buf_layout(size)` in
            // `FixedBufPool::new`, and is freed only here, once.
            unsafe { std::alloc::dealloc(p, buf_layout(self.size)) };
        }
    }
}

struct PoolInner {
    mem: Arc<PoolMem>,
    free: Mutex<Vec<u16>>,
    /// The context whose ring has the pool as its buffer table ([FX3]).
    ring: Option<Weak<AioContext>>,
}

/// A pool of equal buffers registered as a context's io_uring buffer table (\[FX1\] of
/// `io/fixed.rs`); on epoll, or where registration is not possible, the same buffers
/// without registration. Cloning shares the pool.
///
/// ```
/// let ctx = aioctx_aio::AioContext::new()?;
/// let pool = aioctx_aio::FixedBufPool::new(&ctx, 2, 4096)?;
/// let mut buf = pool.try_get().expect("a free buffer");
/// buf.set_len(5);
/// buf.copy_from_slice(b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct FixedBufPool {
    inner: Arc<PoolInner>,
}

impl FixedBufPool {
    /// `count` zero-filled buffers of `size` bytes, each page-aligned (\[FX5\]: usable
    /// for O_DIRECT), registered on `ctx`'s ring when it runs io_uring
    /// (`IORING_REGISTER_BUFFERS`).
    ///
    /// # Errors
    /// `InvalidInput` when `count` is not in `1..=MAX_FIXED_BUFS` or `size` not in
    /// `1..=MAX_FIXED_BUF_SIZE`; `AlreadyExists` when the ring has a pool already;
    /// the kernel's error otherwise — `ENOMEM` when the pinned memory would exceed
    /// `RLIMIT_MEMLOCK` (the message names the limit).
    ///
    /// # Panics
    /// Off `ctx`'s home thread (the calling thread becomes home if none is yet), or
    /// from inside one of `ctx`'s callbacks on io_uring.
    pub fn new(ctx: &AioContext, count: usize, size: usize) -> io::Result<Self> {
        if !(1..=MAX_FIXED_BUFS).contains(&count) || !(1..=MAX_FIXED_BUF_SIZE).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a registered buffer pool of {count} buffers of {size} bytes: io_uring takes \
                     1..={MAX_FIXED_BUFS} buffers of 1..={MAX_FIXED_BUF_SIZE} bytes"
                ),
            ));
        }
        // Binds the calling thread as home if none is, like `poll`.
        ctx.check_home("FixedBufPool::new");
        let layout = buf_layout(size);
        let mut mem = PoolMem {
            ptrs: Vec::with_capacity(count),
            size,
        };
        for _ in 0..count {
            // SAFETY: the layout's size is at least 1 (checked above).
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            mem.ptrs.push(p); // freed by `PoolMem`'s drop, even if a later one fails
        }
        let mem = Arc::new(mem);
        let mut ring = None;
        if ctx.backend() == crate::Backend::IoUring {
            let iovecs: Vec<libc::iovec> = mem
                .ptrs
                .iter()
                .map(|&p| crate::op::iovec(p, size))
                .collect();
            let mut home = ctx
                .try_home()
                .expect("FixedBufPool::new from inside a callback of its context");
            let crate::backend::Driver::Uring(driver) = &mut home.driver else {
                unreachable!("an io_uring context without a ring");
            };
            let keep: Arc<dyn Send + Sync> = Arc::clone(&mem) as Arc<dyn Send + Sync>;
            // SAFETY: each iovec covers one of `mem`'s allocations, valid for reads and
            // writes while `mem` lives; the driver keeps `keep` ([FX1]).
            unsafe { driver.register_buffers(&iovecs, keep) }.map_err(memlock_hint)?;
            ring = Some(ctx.weak());
        }
        Ok(Self {
            inner: Arc::new(PoolInner {
                mem,
                free: Mutex::new((0..count as u16).rev().collect()),
                ring,
            }),
        })
    }

    /// A free buffer (its length 0, its capacity the pool's buffer size), or `None`
    /// when every buffer is taken. Dropping the buffer gives it back.
    pub fn try_get(&self) -> Option<FixedBuf> {
        let index = lock(&self.inner.free).pop()?;
        Some(FixedBuf {
            inner: Arc::clone(&self.inner),
            index,
            len: 0,
        })
    }

    /// Whether the pool is the buffer table of its context's ring (\[FX3\]).
    pub fn is_registered(&self) -> bool {
        self.inner.ring.is_some()
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.inner.mem.size
    }

    /// How many buffers are free now.
    pub fn available(&self) -> usize {
        lock(&self.inner.free).len()
    }
}

impl std::fmt::Debug for FixedBufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedBufPool")
            .field("buffers", &self.inner.mem.ptrs.len())
            .field("buf_size", &self.inner.mem.size)
            .field("registered", &self.is_registered())
            .finish()
    }
}

/// `ENOMEM` from the registration, with the `RLIMIT_MEMLOCK` that caused it.
fn memlock_hint(e: io::Error) -> io::Error {
    if e.raw_os_error() != Some(libc::ENOMEM) {
        return io::Error::new(e.kind(), format!("IORING_REGISTER_BUFFERS failed: {e}"));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 {
        format!("{} bytes", lim.rlim_cur)
    } else {
        "unknown".to_owned()
    };
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "IORING_REGISTER_BUFFERS failed: {e}: the pinned buffers exceed RLIMIT_MEMLOCK \
             ({limit}); raise it (ulimit -l) or use fewer or smaller buffers"
        ),
    )
}

/// One buffer of a [`FixedBufPool`], given back to the pool when dropped. Its bytes
/// up to `len()` are its contents (what a write sends); a read sets the
/// length to what it read.
pub struct FixedBuf {
    inner: Arc<PoolInner>,
    index: u16,
    len: usize,
}

impl FixedBuf {
    /// Its capacity, the pool's buffer size.
    pub fn capacity(&self) -> usize {
        self.inner.mem.size
    }

    /// Sets its length (every byte of the buffer is initialized: zero-filled at first).
    ///
    /// # Panics
    /// When `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "FixedBuf::set_len({len}) beyond the capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    fn ptr(&self) -> *mut u8 {
        self.inner.mem.ptrs[usize::from(self.index)]
    }
}

impl std::ops::Deref for FixedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: entry `index` belongs to this value alone ([FX2]), is initialized for
        // its whole capacity, and `len <= capacity`.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl std::ops::DerefMut for FixedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl std::fmt::Debug for FixedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        lock(&self.inner.free).push(self.index);
    }
}

// SAFETY: the memory is a heap allocation the pool keeps alive while this value (which
// holds a share of it) lives, at a fixed address; it is entirely initialized.
unsafe impl crate::IoBuf for FixedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: as above; writable for its whole capacity, by this value alone ([FX2]).
unsafe impl crate::IoBufMut for FixedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        self.len = n;
    }
}

impl AioContext {
    /// Whether `buf`'s pool is this context's ring's buffer table ([FX3]).
    fn fixed_index(&self, buf: &FixedBuf) -> Option<u16> {
        let ring = buf.inner.ring.as_ref()?;
        Weak::ptr_eq(ring, &self.weak()).then_some(buf.index)
    }

    /// Reads into `buf` (up to its capacity) from `fd` at `offset`: `READ_FIXED` when
    /// its pool is registered on this context's ring, a plain read otherwise (\[FX3\]).
    /// The buffer's length becomes what was read.
    pub fn read_fixed_at(&self, fd: RawFd, buf: FixedBuf, offset: u64) -> RingOp<FixedBuf> {
        self.read_fixed_on(Target::Raw(fd), buf, offset)
    }

    /// [`read_fixed_at`](Self::read_fixed_at) on any target (a `File`'s share).
    pub(crate) fn read_fixed_on(&self, fd: Target, buf: FixedBuf, off: u64) -> RingOp<FixedBuf> {
        match self.fixed_index(&buf) {
            Some(index) => RingOp::new(
                self,
                ReadFixed {
                    fd,
                    buf,
                    index,
                    off,
                },
            ),
            None => RingOp::new(self, ReadAt::new(fd, buf, off)),
        }
    }

    /// Writes `buf`'s contents (its first `len()` bytes) to `fd` at
    /// `offset`: `WRITE_FIXED` when its pool is registered on this context's ring, a
    /// plain write otherwise (\[FX3\]).
    pub fn write_fixed_at(&self, fd: RawFd, buf: FixedBuf, offset: u64) -> RingOp<FixedBuf> {
        self.write_fixed_on(Target::Raw(fd), buf, offset)
    }

    /// [`write_fixed_at`](Self::write_fixed_at) on any target (a `File`'s share).
    pub(crate) fn write_fixed_on(&self, fd: Target, buf: FixedBuf, off: u64) -> RingOp<FixedBuf> {
        match self.fixed_index(&buf) {
            Some(index) => RingOp::new(
                self,
                WriteFixed {
                    fd,
                    buf,
                    index,
                    off,
                },
            ),
            None => RingOp::new(self, WriteAt { fd, buf, off }),
        }
    }
}
