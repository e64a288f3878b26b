//! `Close`: closes an owned descriptor (io_uring `CLOSE`; epoll `close(2)` on the
//! pool). Exactly once, whatever happens: a descriptor the kernel did not close (the
//! operation never ran, or its cancel won: `-ECANCELED`) is closed with `close(2)` when
//! the op is taken apart; one the kernel took is forgotten.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;

use io_uring::{opcode, types};

use super::{OpCode, Sqe, libc_res};

/// Closes `fd`.
pub(crate) struct Close {
    fd: Option<OwnedFd>,
}

impl Close {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self { fd: Some(fd) }
    }
}

impl OpCode for Close {
    type Output = ();
    const OPCODE: u8 = opcode::Close::CODE;
    // A close that reported EINTR closed the descriptor anyway (Linux): never again.
    const RETRY: bool = false;

    unsafe fn sqe(self: Pin<&mut Self>) -> Sqe {
        let fd = self.fd.as_ref().expect("closed once").as_raw_fd();
        // SAFETY: a CLOSE names no memory; the descriptor is owned by `self` and is not
        // used by anything else (the caller holds the only owner).
        unsafe { Sqe::new(opcode::Close::new(types::Fd(fd)).build()) }
    }

    fn run_blocking(self: Pin<&mut Self>) -> i32 {
        let fd = self.get_mut().fd.take().expect("closed once").into_raw_fd();
        // SAFETY: `fd` was owned by `self` and is closed exactly once, here.
        let res = libc_res(unsafe { libc::close(fd) }.into());
        // EINTR: Linux closed it anyway.
        if res == -libc::EINTR { 0 } else { res }
    }

    fn into_output(mut self, res: i32) {
        if let Some(fd) = self.fd.take() {
            if res == -libc::ECANCELED {
                // Never ran, or cancelled before it ran: still ours to close.
                drop(fd);
            } else {
                // The kernel took it (closed, or refused a number that was ours: any
                // other result means it is gone from the table).
                let _ = fd.into_raw_fd();
            }
        }
    }
}
