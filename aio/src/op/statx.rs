//! `Statx`: `statx` of an open descriptor (io_uring `STATX`; epoll `statx(2)`).

use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, Target, libc_res};

/// What `statx` is asked for: the basic fields and the O_DIRECT alignment.
const MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_DIOALIGN;

/// `statx(fd, "", AT_EMPTY_PATH)` into a boxed buffer the op owns.
pub(crate) struct Statx {
    fd: Target,
    buf: Box<libc::statx>,
}

impl Statx {
    pub(crate) fn new(fd: Target) -> Self {
        // SAFETY: `statx` is plain old data; all-zero is a valid value.
        let buf = Box::new(unsafe { std::mem::zeroed::<libc::statx>() });
        Self { fd, buf }
    }
}

/// The empty path `AT_EMPTY_PATH` asks for (static, so it outlives every operation).
const EMPTY: &std::ffi::CStr = c"";

impl OpCode for Statx {
    type Output = Box<libc::statx>;
    const OPCODE: u8 = opcode::Statx::CODE;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let this = self.get_mut();
        let buf = (&raw mut *this.buf).cast::<types::statx>();
        let entry = opcode::Statx::new(types::Fd(this.fd.raw()), EMPTY.as_ptr(), buf)
            .flags(libc::AT_EMPTY_PATH)
            .mask(MASK)
            .build();
        // SAFETY: the entry names the boxed `statx` buffer owned by `self` (the kernel
        // writes it; the caller keeps it alive and untouched until the final CQE) and a
        // static empty path.
        unsafe { Sqe::new(entry) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let this = self.get_mut();
        // SAFETY: the buffer is a valid `statx` owned by `self`; the path is static.
        let ret = unsafe {
            libc::statx(
                this.fd.raw(),
                EMPTY.as_ptr(),
                libc::AT_EMPTY_PATH,
                MASK,
                &raw mut *this.buf,
            )
        };
        libc_res(ret.into())
    }

    fn into_output(self, _res: i32) -> Box<libc::statx> {
        self.buf
    }
}
