//! `Mkdir`: `mkdirat` (io_uring `MKDIRAT`, Linux 5.15 and later; otherwise and on
//! epoll `mkdirat(2)` on the pool).

use std::ffi::CString;
use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, libc_res};

/// Creates the directory `path` with `mode` (less the umask).
pub(crate) struct Mkdir {
    pub(crate) path: CString,
    pub(crate) mode: libc::mode_t,
}

impl OpCode for Mkdir {
    type Output = ();
    const OPCODE: u8 = opcode::MkDirAt::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let entry = opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), self.path.as_ptr())
            .mode(self.mode)
            .build();
        // SAFETY: the entry names the path's heap bytes, owned by `self`, which the
        // caller keeps alive until the final CQE.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        // SAFETY: the path is a NUL-terminated string owned by `self`.
        libc_res(unsafe { libc::mkdirat(libc::AT_FDCWD, self.path.as_ptr(), self.mode) }.into())
    }

    fn into_output(self, _res: i32) {}
}
