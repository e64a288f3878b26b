//! Every raw syscall the crate makes, wrapped once.
//!
//! Each wrapper returns `io::Result`, retries `EINTR` where a retry is the right answer,
//! and turns a new descriptor into an [`OwnedFd`] at once. Nothing outside this module
//! and the module that owns in-flight ring buffers (`backend::uring`) needs `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Runs a libc call that returns -1 on error, retrying on `EINTR`.
macro_rules! syscall {
    ($call:expr) => {{
        loop {
            // SAFETY: each caller passes valid arguments for the named libc function; the
            // macro only adds the errno check.
            let res = unsafe { $call };
            if res == -1 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(err);
            }
            break Ok(res);
        }
    }};
}

/// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: eventfd just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd counter. `EAGAIN` (counter saturated) means a wake-up is already
/// pending, so it counts as success.
pub(crate) fn eventfd_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    let res = syscall!(libc::write(
        fd.as_raw_fd(),
        (&raw const one).cast::<libc::c_void>(),
        8
    ));
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads and clears an eventfd counter; `Ok(false)` when it was zero.
pub(crate) fn eventfd_read(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut value: u64 = 0;
    let res = syscall!(libc::read(
        fd.as_raw_fd(),
        (&raw mut value).cast::<libc::c_void>(),
        8
    ));
    match res {
        Ok(_) => Ok(value != 0),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Checks that `fd` is an open descriptor (`fcntl(F_GETFD)`).
pub(crate) fn check_fd(fd: RawFd) -> io::Result<()> {
    syscall!(libc::fcntl(fd, libc::F_GETFD)).map(drop)
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub(crate) fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let res = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(res, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}
