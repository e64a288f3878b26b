//! The raw-fd operations of [`AioContext`] (QEMU: `luring_co_submit`'s callers in
//! block/file-posix.c): each builds one operation of the op layer on a descriptor the
//! caller keeps open, and returns its [`RingOp`] (`io.rs` rules).

use std::future::Future;
use std::io;
use std::os::fd::RawFd;

use super::RingOp;
use crate::context::AioContext;
use crate::io_buf::{IoBuf, IoBufMut};
use crate::op::{Fsync, ReadAt, ReadvAt, Target, WriteAt, WritevAt};

impl AioContext {
    /// Reads from `fd` at `offset` into `buf` (`pread`), up to the buffer's
    /// [`bytes_total`](IoBufMut::bytes_total) — for a `Vec`, its capacity: spare
    /// capacity is filled without being zeroed first, and the `Vec`'s length grows to the
    /// bytes read if it was shorter (never shrinks). The result says how many bytes were
    /// read (fewer at end of file, 0 past it). Callable from any thread; completes on
    /// this context's home thread.
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-read-{}", std::process::id()));
    /// std::fs::File::create(&path)?.write_all(b"hello, ring")?;
    /// let file = std::fs::File::open(&path)?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let (res, buf) = ctx.block_on(ctx.read_at(file.as_raw_fd(), vec![0u8; 64], 7));
    /// assert_eq!(res?, 4); // short read at end of file
    /// assert_eq!(&buf[..4], b"ring");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Dropping the future cancels the read (module docs, \[IO6\]), but **dropping a read
    /// that already completed loses its data**: not `select!`-safe on streams.
    ///
    /// # Errors
    /// The kernel's error for the read, e.g. `EBADF` for a closed fd; the buffer comes
    /// back either way.
    pub fn read_at<B: IoBufMut>(&self, fd: RawFd, buf: B, offset: u64) -> RingOp<B> {
        RingOp::new(self, ReadAt::new(Target::Raw(fd), buf, offset))
    }

    /// Writes `buf` to `fd` at `offset` (`pwrite`); the result is the number of bytes
    /// written, which may be short.
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-write-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let (res, _buf) = ctx.block_on(ctx.write_at(file.as_raw_fd(), b"data".to_vec(), 0));
    /// assert_eq!(res?, 4);
    /// ctx.block_on(ctx.fsync(file.as_raw_fd()))?;
    /// assert_eq!(std::fs::read(&path)?, b"data");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Dropping the future cancels the write (module docs, \[IO6\]); a write that already
    /// completed (perhaps partly) is not undone, and its count is lost.
    ///
    /// # Errors
    /// The kernel's error for the write.
    pub fn write_at<B: IoBuf>(&self, fd: RawFd, buf: B, offset: u64) -> RingOp<B> {
        RingOp::new(
            self,
            WriteAt {
                fd: Target::Raw(fd),
                buf,
                off: offset,
            },
        )
    }

    /// Reads into several buffers in order (`preadv`), each up to its
    /// [`bytes_total`](IoBufMut::bytes_total) (a `Vec`'s capacity; lengths grow to what
    /// was read, as for [`read_at`](Self::read_at)).
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-readv-{}", std::process::id()));
    /// std::fs::File::create(&path)?.write_all(b"abcdef")?;
    /// let file = std::fs::File::open(&path)?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let (res, bufs) = ctx.block_on(ctx.readv_at(file.as_raw_fd(), vec![vec![0u8; 2], vec![0u8; 4]], 0));
    /// assert_eq!(res?, 6);
    /// assert_eq!(bufs, [b"ab".to_vec(), b"cdef".to_vec()]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Dropping the future cancels the read; **dropping a read that already completed
    /// loses its data** (see [`read_at`](Self::read_at)).
    ///
    /// # Errors
    /// The kernel's error for the read.
    pub fn readv_at<B: IoBufMut>(&self, fd: RawFd, bufs: Vec<B>, offset: u64) -> RingOp<Vec<B>> {
        RingOp::new(self, ReadvAt::new(Target::Raw(fd), bufs, offset))
    }

    /// Writes several buffers in order (`pwritev`).
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-writev-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let bufs = vec![b"ab".to_vec(), b"cd".to_vec()];
    /// let (res, _bufs) = ctx.block_on(ctx.writev_at(file.as_raw_fd(), bufs, 0));
    /// assert_eq!(res?, 4);
    /// assert_eq!(std::fs::read(&path)?, b"abcd");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Dropping the future cancels the write, as for [`write_at`](Self::write_at).
    ///
    /// # Errors
    /// The kernel's error for the write.
    pub fn writev_at<B: IoBuf>(&self, fd: RawFd, bufs: Vec<B>, offset: u64) -> RingOp<Vec<B>> {
        RingOp::new(self, WritevAt::new(Target::Raw(fd), bufs, offset))
    }

    /// Flushes `fd`'s data and metadata to stable storage (`fsync`).
    ///
    /// # Errors
    /// The kernel's error for the sync.
    pub fn fsync(&self, fd: RawFd) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let op = RingOp::new(
            self,
            Fsync {
                fd: Target::Raw(fd),
                data_only: false,
            },
        );
        async move { op.await.0.map(|_| ()) }
    }

    /// Flushes `fd`'s data (and only the metadata needed to read it) (`fdatasync`).
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let file = tempfile_like()?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// ctx.block_on(ctx.fdatasync(file.as_raw_fd()))?;
    /// # fn tempfile_like() -> std::io::Result<std::fs::File> {
    /// #     let p = std::env::temp_dir().join(format!("aioctx-doc-fdatasync-{}", std::process::id()));
    /// #     let f = std::fs::File::create(&p)?; std::fs::remove_file(&p)?; Ok(f)
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// The kernel's error for the sync.
    pub fn fdatasync(&self, fd: RawFd) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let op = RingOp::new(
            self,
            Fsync {
                fd: Target::Raw(fd),
                data_only: true,
            },
        );
        async move { op.await.0.map(|_| ()) }
    }
}
