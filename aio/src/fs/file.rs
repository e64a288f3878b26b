//! [`File`]: an owned descriptor whose operations go through its context's ring.
//!
//! Rules:
//! [FL1] A `File` belongs to one context (the one that opened it, or the current one for
//!    `From<OwnedFd>`) and holds only a `Weak` of it, so a `File` kept in a task or a
//!    callback never keeps its context alive. Its operations run on that context;
//!    once the context is gone they fail with `BrokenPipe`.
//! [FL2] The descriptor is an `Arc<OwnedFd>`; every operation of the `File` holds a share
//!    (`op::Target::Shared`, or `Fixed` when registered) until its final completion — on
//!    every path: completed, cancelled by a drop, reaped by a context's drop. So the descriptor is closed
//!    exactly once, by whoever lets go of the last share, and never while an operation
//!    of this `File` is in flight in the kernel (its number cannot be reused under it).
//! [FL3] Dropping a `File` that holds the only share closes the descriptor: through the
//!    ring (`IORING_OP_CLOSE`, nobody waiting) when it is dropped on its context's home
//!    thread, on io_uring, with the context alive and its home state free; otherwise
//!    with `close(2)` on the spot. A `CLOSE` that never ran, or whose cancel won
//!    (`-ECANCELED`, e.g. the context dropped first), is followed by `close(2)`. When
//!    operations still hold shares (their futures were dropped and the cancels are on
//!    their way), the last one's completion closes it with `close(2)`.
//!    [`close`](File::close) is the explicit form, which reports `close`'s error.
//! [FL4] O_DIRECT: a `File` opened with `O_DIRECT` knows its alignment (`dio.rs`), and its
//!    reads and writes check the buffer's address and length and the offset against
//!    it, returning `InvalidInput` that names the misaligned one before anything
//!    reaches the kernel.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Weak;

use super::dio::DioAlign;
use super::file_op::{FileOp, FileUnitOp};
use super::meta::Metadata;
use super::options::FallocateMode;
use super::registered::FileSlot;
use super::rest::Rest;
use crate::backend::Backend;
use crate::context::AioContext;
use crate::io::RingOp;
use crate::io_buf::{IoBuf, IoBufMut};
use crate::op::{
    Close, Fallocate, Fsync, Ftruncate, OpenAt, ReadAt, ReadvAt, Statx, SyncFileRange, Target,
    WriteAt, WritevAt,
};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

/// An open file whose operations go through its context's ring (QEMU: the `raw`
/// block driver's descriptor, with `raw_co_prw` and friends on `luring_co_submit`).
/// Owns its descriptor (\[FL2\] and \[FL3\]: closed exactly once, through the ring on
/// drop where it can, never while one of its operations is in flight).
///
/// ```
/// use aioctx_aio::{AioContext, OpenOptions};
/// let path = std::env::temp_dir().join(format!("aioctx-doc-file-{}", std::process::id()));
/// let ctx = AioContext::new()?;
/// let c = ctx.clone();
/// let p = path.clone();
/// let n = ctx.block_on(async move {
///     let file = OpenOptions::new().read(true).write(true).create(true).open(&c, &p).await?;
///     let (res, _) = file.write_all_at(b"hello, file".to_vec(), 0).await;
///     res?;
///     file.fdatasync().await?;
///     // Fills the vector's capacity, no zeroing needed.
///     let (res, buf) = file.read_exact_at(Vec::with_capacity(4), 7).await;
///     res?;
///     assert_eq!(buf, b"file");
///     let len = file.metadata().await?.len();
///     file.close().await?;
///     Ok::<_, std::io::Error>(len)
/// })?;
/// assert_eq!(n, 11);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct File {
    /// `None` only while `close`/`into_raw_fd` take it.
    fd: Option<Arc<OwnedFd>>,
    ctx: Weak<AioContext>,
    pub(super) dio: Option<DioAlign>,
    /// Its entry in the ring's file table, while registered ([RF2] (`fs/registered.rs`)).
    pub(super) slot: Option<Arc<FileSlot>>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "File: its AioContext was dropped; its operations cannot run",
    )
}

impl File {
    /// Opens `path` read-only through the ring (see [`OpenOptions`](super::OpenOptions)).
    ///
    /// # Errors
    /// As for [`OpenOptions::open`](super::OpenOptions::open).
    pub fn open<P: AsRef<std::path::Path>>(
        ctx: &AioContext,
        path: P,
    ) -> impl Future<Output = io::Result<File>> + Send + 'static + use<P> {
        super::OpenOptions::new().read(true).open(ctx, path)
    }

    /// Opens `path` for writing through the ring, creating it if missing and
    /// truncating it otherwise.
    ///
    /// # Errors
    /// As for [`OpenOptions::open`](super::OpenOptions::open).
    pub fn create<P: AsRef<std::path::Path>>(
        ctx: &AioContext,
        path: P,
    ) -> impl Future<Output = io::Result<File>> + Send + 'static + use<P> {
        super::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(ctx, path)
    }

    pub(super) fn open_with(
        ctx: &AioContext,
        args: io::Result<(i32, std::ffi::CString)>,
        mode: u32,
    ) -> impl Future<Output = io::Result<File>> + Send + 'static + use<> {
        let op = args.map(|(flags, path)| {
            let op = OpenAt {
                dirfd: libc::AT_FDCWD,
                path,
                flags,
                mode,
            };
            (flags, RingOp::new(ctx, op))
        });
        let ctx = ctx.weak();
        async move {
            let (flags, op) = op?;
            let (res, fd) = op.await;
            res?;
            let fd = fd.expect("a successful open returns its descriptor");
            let mut file = File {
                fd: Some(Arc::new(fd)),
                ctx,
                dio: None,
                slot: None,
            };
            if flags & libc::O_DIRECT != 0 {
                let meta = file.metadata().await?;
                file.dio = Some(DioAlign::of(&meta, file.as_raw_fd()));
            }
            Ok(file)
        }
    }

    /// A `File` on `ctx` that owns `fd`. If `fd` is open with `O_DIRECT`, its
    /// alignment is read with a blocking `statx` here.
    pub fn from_owned_fd(ctx: &AioContext, fd: OwnedFd) -> File {
        // SAFETY: F_GETFL on a descriptor we own reads its status flags.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        let dio = (flags >= 0 && flags & libc::O_DIRECT != 0).then(|| {
            let mut st = Statx::new(Target::Raw(fd.as_raw_fd()));
            let res = crate::op::OpCode::run_blocking(std::pin::Pin::new(&mut st));
            let st = crate::op::OpCode::into_output(st, res);
            // A failed statx leaves the buffer zeroed: the fallback alignment applies.
            DioAlign::of(&Metadata::from_statx(&st), fd.as_raw_fd())
        });
        File {
            fd: Some(Arc::new(fd)),
            ctx: ctx.weak(),
            dio,
            slot: None,
        }
    }

    pub(super) fn share(&self) -> Target {
        let fd = Arc::clone(self.fd.as_ref().expect("a File has its descriptor"));
        match &self.slot {
            Some(slot) => Target::Fixed {
                fd,
                index: slot.index,
                _entry: Arc::clone(slot) as Arc<dyn Send + Sync>,
            },
            None => Target::Shared(fd),
        }
    }

    pub(super) fn context(&self) -> io::Result<Arc<AioContext>> {
        self.ctx.upgrade().ok_or_else(gone)
    }

    /// `op`, which hands back nothing, on the file's context.
    fn unit<O: crate::op::OpCode<Output = ()> + Unpin>(&self, op: O) -> FileUnitOp {
        FileUnitOp::new(match self.context() {
            Ok(ctx) => FileOp::op(RingOp::new(&ctx, op)),
            Err(e) => FileOp::refused(e, ()),
        })
    }

    /// Whether the file was opened with `O_DIRECT` (its reads and writes are checked for
    /// alignment, \[FL4\]).
    pub fn is_direct(&self) -> bool {
        self.dio.is_some()
    }

    /// The file's metadata, through the ring (`statx`; QEMU: `raw_getlength` and
    /// `raw_probe_alignment`).
    ///
    /// # Errors
    /// The kernel's error; `BrokenPipe` when the context is gone.
    pub async fn metadata(&self) -> io::Result<Metadata> {
        let ctx = self.context()?;
        let fut = RingOp::new(&ctx, Statx::new(self.share()));
        drop(ctx);
        let (res, st) = fut.await;
        res?;
        Ok(Metadata::from_statx(&st))
    }

    /// Reads at `offset` into `buf`, up to its `bytes_total()` (a `Vec`'s capacity,
    /// filled without zeroing; its length grows to what was read), as
    /// [`AioContext::read_at`]; 0 at end of file.
    ///
    /// # Errors
    /// `InvalidInput` for a misaligned O_DIRECT read (\[FL4\]); `BrokenPipe` when
    /// the context is gone; the kernel's error. The buffer comes back either way.
    ///
    /// The future takes a deadline ([`FileOp::with_deadline`]) and gives a cancel handle.
    pub fn read_at<B: IoBufMut>(&self, mut buf: B, offset: u64) -> FileOp<B> {
        if let Some(dio) = &self.dio {
            let (ptr, len) = (buf.stable_mut_ptr() as usize, buf.bytes_total());
            if let Err(e) = dio.check("read_at", ptr, len, offset) {
                return FileOp::refused(e, buf);
            }
        }
        match self.context() {
            Ok(ctx) => FileOp::op(RingOp::new(&ctx, ReadAt::new(self.share(), buf, offset))),
            Err(e) => FileOp::refused(e, buf),
        }
    }

    /// Writes `buf` at `offset`, as [`AioContext::write_at`]; may be short.
    ///
    /// # Errors
    /// As for [`read_at`](Self::read_at).
    pub fn write_at<B: IoBuf>(&self, buf: B, offset: u64) -> FileOp<B> {
        if let Some(dio) = &self.dio {
            let (ptr, len) = (buf.stable_ptr() as usize, buf.bytes_init());
            if let Err(e) = dio.check("write_at", ptr, len, offset) {
                return FileOp::refused(e, buf);
            }
        }
        let fd = self.share();
        match self.context() {
            Ok(ctx) => FileOp::op(RingOp::new(
                &ctx,
                WriteAt {
                    fd,
                    buf,
                    off: offset,
                },
            )),
            Err(e) => FileOp::refused(e, buf),
        }
    }

    /// Reads into several buffers in order, as [`AioContext::readv_at`].
    ///
    /// # Errors
    /// As for [`read_at`](Self::read_at) (each buffer is checked on O_DIRECT files).
    pub fn readv_at<B: IoBufMut>(&self, mut bufs: Vec<B>, offset: u64) -> FileOp<Vec<B>> {
        if let Some(dio) = &self.dio {
            for b in &mut bufs {
                let (ptr, len) = (b.stable_mut_ptr() as usize, b.bytes_total());
                if let Err(e) = dio.check("readv_at", ptr, len, offset) {
                    return FileOp::refused(e, bufs);
                }
            }
        }
        match self.context() {
            Ok(ctx) => FileOp::op(RingOp::new(&ctx, ReadvAt::new(self.share(), bufs, offset))),
            Err(e) => FileOp::refused(e, bufs),
        }
    }

    /// Writes several buffers in order, as [`AioContext::writev_at`].
    ///
    /// # Errors
    /// As for [`read_at`](Self::read_at).
    pub fn writev_at<B: IoBuf>(&self, bufs: Vec<B>, offset: u64) -> FileOp<Vec<B>> {
        if let Some(dio) = &self.dio {
            for b in &bufs {
                let (ptr, len) = (b.stable_ptr() as usize, b.bytes_init());
                if let Err(e) = dio.check("writev_at", ptr, len, offset) {
                    return FileOp::refused(e, bufs);
                }
            }
        }
        match self.context() {
            Ok(ctx) => FileOp::op(RingOp::new(&ctx, WritevAt::new(self.share(), bufs, offset))),
            Err(e) => FileOp::refused(e, bufs),
        }
    }

    /// Reads exactly `buf.bytes_total()` bytes at `offset` (a `Vec`'s whole capacity,
    /// after which its length is its capacity), looping on short reads.
    ///
    /// # Errors
    /// `UnexpectedEof` when the file ends first (the bytes read so far are in the
    /// buffer); otherwise as for [`read_at`](Self::read_at).
    pub async fn read_exact_at<B: IoBufMut>(&self, mut buf: B, offset: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_total();
        let mut done = 0;
        while done < total {
            let (res, rest) = self
                .read_at(Rest { buf, start: done }, offset + done as u64)
                .await;
            buf = rest.buf;
            match res {
                Ok(0) => {
                    let msg = format!(
                        "read_exact_at: end of file after {done} of {total} bytes at offset {offset}"
                    );
                    return (Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg)), buf);
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Writes all of `buf` at `offset`, looping on short writes.
    ///
    /// # Errors
    /// `WriteZero` when a write makes no progress; otherwise as for
    /// [`write_at`](Self::write_at).
    pub async fn write_all_at<B: IoBuf>(&self, mut buf: B, offset: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let (res, rest) = self
                .write_at(Rest { buf, start: done }, offset + done as u64)
                .await;
            buf = rest.buf;
            match res {
                Ok(0) => {
                    let msg = format!("write_all_at: no progress after {done} of {total} bytes");
                    return (Err(io::Error::new(io::ErrorKind::WriteZero, msg)), buf);
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Writes `buf` at `offset`, then — linked, only if all of it was written — flushes
    /// the file (`fdatasync` when `data_only`, else `fsync`), as
    /// [`AioContext::write_at_then_fsync`]: one submission, the kernel's ordering.
    ///
    /// # Errors
    /// Each step's own (a failed or short write leaves the flush unrun: `ECANCELED`);
    /// `InvalidInput` for a misaligned O_DIRECT write and `BrokenPipe` when the context
    /// is gone, for both steps.
    pub async fn write_at_then_fsync<B: IoBuf>(
        &self,
        buf: B,
        offset: u64,
        data_only: bool,
    ) -> (io::Result<usize>, io::Result<()>, B) {
        // The same error for both steps.
        let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        if let Some(dio) = &self.dio {
            let (ptr, len) = (buf.stable_ptr() as usize, buf.bytes_init());
            if let Err(e) = dio.check("write_at_then_fsync", ptr, len, offset) {
                return (Err(copy(&e)), Err(e), buf);
            }
        }
        let ctx = match self.context() {
            Ok(ctx) => ctx,
            Err(e) => return (Err(copy(&e)), Err(e), buf),
        };
        let fut = ctx.write_then_fsync_on(self.share(), self.share(), buf, offset, data_only);
        drop(ctx);
        fut.await
    }

    /// Flushes data and metadata (`fsync`).
    ///
    /// # Errors
    /// The kernel's error; `BrokenPipe` when the context is gone.
    pub fn fsync(&self) -> FileUnitOp {
        let op = Fsync {
            fd: self.share(),
            data_only: false,
        };
        self.unit(op)
    }

    /// Flushes data and the metadata needed to read it (`fdatasync`).
    ///
    /// # Errors
    /// As for [`fsync`](Self::fsync).
    pub fn fdatasync(&self) -> FileUnitOp {
        let op = Fsync {
            fd: self.share(),
            data_only: true,
        };
        self.unit(op)
    }

    /// Starts or waits for write-out of a range (`sync_file_range`; `len` 0: to the end
    /// of the file). `flags` are `SYNC_FILE_RANGE_WAIT_BEFORE`/`_WRITE`/`_WAIT_AFTER`.
    /// Not a durability guarantee: see `sync_file_range(2)`.
    ///
    /// # Errors
    /// `EINVAL` for unknown flags; the kernel's error.
    pub fn sync_file_range(&self, offset: u64, len: u32, flags: u32) -> FileUnitOp {
        let op = SyncFileRange {
            fd: self.share(),
            off: offset,
            len,
            flags,
        };
        self.unit(op)
    }

    /// Allocates, punches or zeroes `len` bytes at `offset` (`fallocate`).
    ///
    /// # Errors
    /// `EINVAL` for a zero `len`; `EOPNOTSUPP` where the file system lacks the mode;
    /// `ENOSPC`; the kernel's error.
    pub fn fallocate(&self, mode: FallocateMode, offset: u64, len: u64) -> FileUnitOp {
        let op = Fallocate {
            fd: self.share(),
            mode: mode.bits(),
            off: offset,
            len,
        };
        self.unit(op)
    }

    /// Truncates or extends the file to `len` bytes (`ftruncate`): through the ring
    /// where the kernel has `IORING_OP_FTRUNCATE` (Linux 6.9), else, and on epoll, with
    /// `ftruncate(2)` on the worker pool.
    ///
    /// # Errors
    /// `EINVAL` for a file not open for writing; the kernel's error.
    pub fn set_len(&self, len: u64) -> FileUnitOp {
        let op = Ftruncate {
            fd: self.share(),
            len,
        };
        self.unit(op)
    }

    /// Closes the file, through the ring where the context runs one, and reports
    /// `close`'s error. If operations of this file are still in flight (their futures
    /// were dropped and the cancels are on their way), the descriptor is closed with
    /// `close(2)` when the last one completes (\[FL3\]), and this returns `Ok`.
    ///
    /// # Errors
    /// The kernel's error for `close` (e.g. a deferred write error on NFS).
    pub async fn close(mut self) -> io::Result<()> {
        let shared = self.fd.take().expect("a File has its descriptor");
        let Ok(fd) = Arc::try_unwrap(shared) else {
            return Ok(());
        };
        match self.ctx.upgrade() {
            Some(ctx) => {
                let fut = RingOp::new(&ctx, Close::new(fd));
                drop(ctx);
                fut.await.0.map(drop)
            }
            None => {
                // SAFETY: the descriptor was owned here and is closed exactly once.
                let res = unsafe { libc::close(fd.into_raw_fd()) };
                if res < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for File {
    /// \[FL3\].
    fn drop(&mut self) {
        let Some(shared) = self.fd.take() else {
            return;
        };
        // Other shares: the last operation's completion closes it.
        let Ok(fd) = Arc::try_unwrap(shared) else {
            return;
        };
        if let Some(ctx) = self.ctx.upgrade()
            && ctx.backend() == Backend::IoUring
            && ctx.is_home_thread()
            // Relaxed: set on the home thread (this one) by the shutdown.
            && !ctx.remote.closed.load(Ordering::Relaxed)
            && ctx.try_home().is_some()
        {
            RingOp::new(&ctx, Close::new(fd)).detach();
            return;
        }
        drop(fd); // close(2)
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("a File has its descriptor").as_fd()
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl IntoRawFd for File {
    /// The descriptor, now the caller's. If operations of this file are still in
    /// flight, they keep the original until they complete and the caller gets a
    /// duplicate (`F_DUPFD_CLOEXEC`) of the same open file.
    ///
    /// # Panics
    /// When that duplicate cannot be made (`EMFILE`).
    fn into_raw_fd(mut self) -> RawFd {
        let shared = self.fd.take().expect("a File has its descriptor");
        match Arc::try_unwrap(shared) {
            Ok(fd) => fd.into_raw_fd(),
            Err(shared) => crate::sys::dup(shared.as_raw_fd())
                .unwrap_or_else(|e| {
                    panic!("File::into_raw_fd: cannot duplicate the descriptor: {e}")
                })
                .into_raw_fd(),
        }
    }
}

impl From<OwnedFd> for File {
    /// A `File` on the thread's [`current`](crate::current) context.
    ///
    /// # Panics
    /// When no context is current on this thread (use
    /// [`File::from_owned_fd`] to name one).
    fn from(fd: OwnedFd) -> Self {
        File::from_owned_fd(&crate::current::current(), fd)
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.fd.as_ref().map(|fd| fd.as_raw_fd()))
            .field("direct", &self.dio)
            .field("fixed_index", &self.fixed_index())
            .finish_non_exhaustive()
    }
}

static_assertions::assert_impl_all!(File: Send, Sync);
