//! `Rename`: `renameat` (io_uring `RENAMEAT`; epoll `renameat(2)` on the pool).

use std::ffi::CString;
use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, libc_res};

/// Renames `from` to `to`, replacing `to`.
pub(crate) struct Rename {
    pub(crate) from: CString,
    pub(crate) to: CString,
}

impl OpCode for Rename {
    type Output = ();
    const OPCODE: u8 = opcode::RenameAt::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let cwd = types::Fd(libc::AT_FDCWD);
        let entry = opcode::RenameAt::new(cwd, self.from.as_ptr(), cwd, self.to.as_ptr()).build();
        // SAFETY: the entry names both paths' heap bytes, owned by `self`, which the
        // caller keeps alive until the final CQE.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: both paths are NUL-terminated strings owned by `self`.
        let ret = unsafe {
            libc::renameat(
                libc::AT_FDCWD,
                self.from.as_ptr(),
                libc::AT_FDCWD,
                self.to.as_ptr(),
            )
        };
        libc_res(ret.into())
    }

    fn into_output(self, _res: i32) {}
}
