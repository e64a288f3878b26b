//! The operation layer: one type per kernel operation, each in its own file, each
//! knowing both of its lowerings (the way compio-driver's `OpCode` and mio's sources
//! do it):
//!
//! - io_uring: its submission entry ([`OpCode::sqe`]), built behind the one unsafe
//!   boundary, [`Sqe`]. The operation owns every byte the entry names — buffers,
//!   `iovec` arrays, paths, the `statx` buffer — and its owner keeps it alive and in
//!   place until the operation's final CQE.
//! - epoll: its blocking syscall for the worker pool ([`OpCode::run_blocking`]), and,
//!   for operations that may target a stream (pipes, sockets, ttys), the descriptor and
//!   direction it waits on ([`OpCode::stream`]) and its non-blocking syscall on the
//!   stream table's duplicate of that descriptor ([`OpCode::run_stream`]).
//!
//! An operation imports only leaf modules (`sys`, `io_buf`, `sync`). The back ends
//! (`backend/`, `pool.rs`) depend only on this trait and on leaf types; the futures and
//! the `AioContext`/`File` methods (`io.rs`, `fs/`) sit above them.
//!
//! # Adding an operation
//! One file here with a type that owns what the kernel touches and implements
//! [`OpCode`], and one `mod` line below; then a method in `io.rs` or `fs/` that builds
//! it and hands it to `RingOp::new`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;

use crate::sync::Arc;

mod close;
mod fallocate;
mod fsync;
mod ftruncate;
mod link_timeout;
mod mkdir;
mod open;
mod read;
mod read_fixed;
mod readv;
mod rename;
mod sqe;
mod statx;
mod sync_range;
mod unlink;
mod write;
mod write_fixed;
mod writev;

pub(crate) use self::close::Close;
pub(crate) use self::fallocate::Fallocate;
pub(crate) use self::fsync::Fsync;
pub(crate) use self::ftruncate::Ftruncate;
pub(crate) use self::link_timeout::LinkTimeout;
pub(crate) use self::mkdir::Mkdir;
pub(crate) use self::open::OpenAt;
pub(crate) use self::read::ReadAt;
pub(crate) use self::read_fixed::ReadFixed;
pub(crate) use self::readv::ReadvAt;
pub(crate) use self::rename::Rename;
pub(crate) use self::sqe::Sqe;
pub(crate) use self::statx::Statx;
pub(crate) use self::sync_range::SyncFileRange;
pub(crate) use self::unlink::Unlink;
pub(crate) use self::write::WriteAt;
pub(crate) use self::write_fixed::WriteFixed;
pub(crate) use self::writev::WritevAt;

/// One kernel operation with its two lowerings (module docs).
///
/// The owner (`io.rs`'s `InFlight`) keeps the operation pinned (boxed) from its first
/// [`sqe`](Self::sqe) until its final completion, and takes it apart with
/// [`into_output`](Self::into_output) only after that; so an operation may name its own
/// fields in its entry. Results are CQE-style: a count (or 0) on success, `-errno` on
/// failure.
pub(crate) trait OpCode: Send + 'static {
    /// What the operation hands back with its result (its buffers, its descriptor…).
    type Output: Send + 'static;

    /// Its io_uring opcode. A ring whose kernel does not support it (the ring's probe,
    /// `IORING_REGISTER_PROBE`) runs the operation's blocking lowering on the worker
    /// pool instead.
    const OPCODE: u8;

    /// Whether a result of `-EINTR`/`-EAGAIN` resubmits the operation ([IO4] (`io.rs`)).
    /// `false` for an operation that must not run twice (`close`).
    const RETRY: bool = true;

    /// Whether this is a `LINK_TIMEOUT`, which only exists linked behind another
    /// operation (never pushed or run on its own).
    const LINK_TIMEOUT: bool = false;

    /// The io_uring entry. Called on the home thread, again for each resubmission
    /// (`EINTR`/`EAGAIN`).
    ///
    /// # Safety
    /// The caller keeps `self` alive and pinned, and touches none of the memory the
    /// entry names, until the entry's final CQE was reaped (or the entry never reached
    /// the ring).
    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe;

    /// epoll: runs the operation with blocking syscalls on a worker-pool thread.
    fn run_blocking(self: Pin<&mut Self>) -> i32;

    /// epoll: for a read or write that may target a stream, its descriptor and whether
    /// it reads; `None` (the default) runs it on the pool whatever the descriptor.
    fn stream(&self) -> Option<(RawFd, bool)> {
        None
    }

    /// epoll: the operation's syscall on `file` (the stream table's duplicate of its
    /// descriptor) at the current position, with `preadv2`/`pwritev2` `flags`
    /// (`RWF_NOWAIT` or 0). Only called when [`stream`](Self::stream) is `Some`.
    fn run_stream(self: Pin<&mut Self>, file: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let _ = (file, flags);
        unreachable!("run_stream on an operation that names no stream")
    }

    /// Whether a result lets a linked chain go on (`io/link.rs`): the kernel's rule —
    /// a failure breaks the chain, and so does a short read or write. Default: `res >= 0`.
    fn link_ok(&self, res: i32) -> bool {
        res >= 0
    }

    /// Takes the operation apart after its final completion, with its result.
    fn into_output(self, res: i32) -> Self::Output;
}

/// The descriptor an operation acts on: a caller's raw number (the raw-fd methods of
/// `AioContext`, whose caller keeps it open), or a share of a [`File`]'s descriptor,
/// which keeps it open until the operation's final completion (the `File` closes only
/// once no operation holds a share; [FL2] (`fs/file.rs`)).
///
/// [`File`]: crate::File
pub(crate) enum Target {
    /// A caller-owned descriptor.
    Raw(RawFd),
    /// A share of an owned descriptor.
    Shared(Arc<OwnedFd>),
    /// A share of an owned descriptor that is also entry `index` of the ring's
    /// registered file table; `_entry` holds that entry (it is not emptied or reused)
    /// until the operation's final completion ([RF2] (`fs/registered.rs`)). Entries that
    /// take a fixed file name the index (`IOSQE_FIXED_FILE`, [`on_target!`]); the
    /// blocking lowering, and entries that cannot, use the descriptor.
    Fixed {
        fd: Arc<OwnedFd>,
        index: u32,
        _entry: Arc<dyn Send + Sync>,
    },
}

impl Target {
    /// The descriptor number.
    pub(crate) fn raw(&self) -> RawFd {
        match self {
            Target::Raw(fd) => *fd,
            Target::Shared(fd) | Target::Fixed { fd, .. } => fd.as_raw_fd(),
        }
    }

    /// The registered file table's entry, if the target is one.
    pub(crate) fn fixed(&self) -> Option<u32> {
        match self {
            Target::Fixed { index, .. } => Some(*index),
            Target::Raw(_) | Target::Shared(_) => None,
        }
    }
}

/// Builds an entry on a [`Target`]: `$build` runs with `$fd` bound to
/// `io_uring::types::Fixed(index)` for a registered file, else to
/// `io_uring::types::Fd(raw)`.
macro_rules! on_target {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target.fixed() {
            Some(index) => {
                let $fd = io_uring::types::Fixed(index);
                $build
            }
            None => {
                let $fd = io_uring::types::Fd($target.raw());
                $build
            }
        }
    };
}
pub(crate) use on_target;

/// A syscall's result as a CQE's `res`.
pub(crate) fn cqe_res(res: io::Result<usize>) -> i32 {
    match res {
        Ok(n) => n.min(i32::MAX as usize) as i32,
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// One `iovec` over `len` bytes at `ptr`.
pub(crate) fn iovec(ptr: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr.cast_mut().cast(),
        iov_len: len,
    }
}

/// `preadv2`/`pwritev2` of `iov` on `fd` at `off` (`-1`: the current position) with
/// `flags`.
///
/// # Safety
/// Every iovec describes memory valid for writes (`read`) or reads for the whole call.
pub(crate) unsafe fn rw(
    fd: RawFd,
    iov: &[libc::iovec],
    off: i64,
    flags: libc::c_int,
    read: bool,
) -> io::Result<usize> {
    if read {
        // SAFETY: the caller's obligation.
        unsafe { crate::sys::preadv2(fd, iov, off, flags) }
    } else {
        // SAFETY: the caller's obligation.
        unsafe { crate::sys::pwritev2(fd, iov, off, flags) }
    }
}

/// An offset for `preadv2`/`pwritev2`.
pub(crate) fn file_off(off: u64) -> i64 {
    off.min(i64::MAX as u64) as i64
}

/// A libc call's return value (`-1` and `errno` on failure) as a CQE's `res`.
pub(crate) fn libc_res(ret: libc::c_long) -> i32 {
    if ret < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        ret.min(i32::MAX as libc::c_long) as i32
    }
}
