//! `Unlink`: `unlinkat` (io_uring `UNLINKAT`; epoll `unlinkat(2)` on the pool).

use std::ffi::CString;
use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, libc_res};

/// Removes `path` (a directory with `AT_REMOVEDIR` in `flags`).
pub(crate) struct Unlink {
    pub(crate) path: CString,
    pub(crate) flags: libc::c_int,
}

impl OpCode for Unlink {
    type Output = ();
    const OPCODE: u8 = opcode::UnlinkAt::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), self.path.as_ptr())
            .flags(self.flags)
            .build();
        // SAFETY: the entry names the path's heap bytes, owned by `self`, which the
        // caller keeps alive until the final CQE.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: the path is a NUL-terminated string owned by `self`.
        libc_res(unsafe { libc::unlinkat(libc::AT_FDCWD, self.path.as_ptr(), self.flags) }.into())
    }

    fn into_output(self, _res: i32) {}
}
