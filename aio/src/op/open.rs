//! `OpenAt`: `openat` (io_uring `OPENAT`; epoll `openat(2)` on the pool).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, libc_res};

/// Opens `path` relative to `dirfd` (`AT_FDCWD`: the working directory). The new
/// descriptor is owned at once (`into_output`), so one opened for a future that was
/// dropped meanwhile is closed, never leaked.
pub(crate) struct OpenAt {
    pub(crate) dirfd: libc::c_int,
    pub(crate) path: CString,
    pub(crate) flags: libc::c_int,
    pub(crate) mode: libc::mode_t,
}

impl OpCode for OpenAt {
    type Output = Option<OwnedFd>;
    const OPCODE: u8 = opcode::OpenAt::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = opcode::OpenAt::new(types::Fd(self.dirfd), self.path.as_ptr())
            .flags(self.flags | libc::O_CLOEXEC)
            .mode(self.mode)
            .build();
        // SAFETY: the entry names the path's heap bytes (a `CString` owned by `self`),
        // which the caller keeps alive until the final CQE (`OpCode::sqe`'s contract).
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: the path is a NUL-terminated string owned by `self`.
        let fd = unsafe {
            libc::openat(
                self.dirfd,
                self.path.as_ptr(),
                self.flags | libc::O_CLOEXEC,
                libc::c_uint::from(self.mode),
            )
        };
        libc_res(fd.into())
    }

    fn into_output(self, res: i32) -> Option<OwnedFd> {
        // SAFETY: a non-negative result of `openat` is a new descriptor nobody owns yet.
        (res >= 0).then(|| unsafe { OwnedFd::from_raw_fd(res) })
    }
}
