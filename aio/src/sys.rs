//! Every raw syscall the crate makes, wrapped once.
//!
//! Each wrapper returns `io::Result`, retries `EINTR` where a retry is the right answer,
//! and turns a new descriptor into an [`OwnedFd`] at once. Nothing outside this module
//! and the module that owns in-flight ring buffers (`backend::uring`) needs `unsafe`
//! for a syscall (`aligned.rs` needs it for its allocation, `timeout.rs` for a pin).
//! The epoll back end (`backend::epoll`) and its worker pool (`pool.rs`) make every
//! call through here: epoll, the eventfd read, and the pool's `preadv2`/`pwritev2`/
//! `fsync`/`fdatasync`, and the stream I/O's `poll` and `fstat`; `IoThread` pins its
//! thread to a CPU and `AlignedBuf` asks for a file's O_DIRECT alignment through here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Runs a libc call that returns -1 on error, retrying on `EINTR`: `io::Result` of the
/// call's value. The one copy for the workspace: the `aioctx` CLI's `sys.rs` uses it too
/// (hidden from the docs; not a public API).
#[doc(hidden)]
#[macro_export]
macro_rules! syscall {
    ($call:expr) => {{
        loop {
            // SAFETY: each caller passes valid arguments for the named libc function; the
            // macro only adds the errno check.
            let res = unsafe { $call };
            if res == -1 {
                let err = ::std::io::Error::last_os_error();
                if err.kind() == ::std::io::ErrorKind::Interrupted {
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

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    let fd = syscall!(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
    // SAFETY: epoll_create1 just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(epfd, op, fd, {events, data})`; `EPOLL_CTL_DEL` ignores the event.
pub(crate) fn epoll_ctl(
    epfd: BorrowedFd<'_>,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    syscall!(libc::epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev)).map(drop)
}

/// Whether `epoll_pwait2` works here: 0 unknown, 1 yes, 2 no (old kernel or filtered).
static PWAIT2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Waits for events on `epfd` for at most `timeout` (`None`: no limit). Uses
/// `epoll_pwait2` for nanosecond timeouts where the kernel has it, else `epoll_wait`
/// with the timeout rounded *up* to whole milliseconds (a timer never fires early).
/// `EINTR` returns `Ok(0)`: the caller's loop goes on, and a retry would stretch the wait.
pub(crate) fn epoll_wait(
    epfd: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    timeout: Option<std::time::Duration>,
) -> io::Result<usize> {
    use std::sync::atomic::Ordering::Relaxed;
    let max = events.len().min(i32::MAX as usize) as libc::c_int;
    if PWAIT2.load(Relaxed) != 2 {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` is a writable array of `max` entries, `tsp` is null or points
        // at a timespec on this stack frame, and a null sigmask leaves the mask alone.
        let res = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd.as_raw_fd(),
                events.as_mut_ptr(),
                max,
                tsp,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if res >= 0 {
            PWAIT2.store(1, Relaxed);
            return Ok(res as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Not on this kernel, or filtered: fall back for good.
            Some(libc::ENOSYS | libc::EPERM) if PWAIT2.load(Relaxed) == 0 => {
                PWAIT2.store(2, Relaxed);
            }
            Some(libc::EINTR) => return Ok(0),
            _ => return Err(err),
        }
    }
    let ms = timeout.map_or(-1, |t| {
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `events` is a writable array of `max` entries.
    let res = unsafe { libc::epoll_wait(epfd.as_raw_fd(), events.as_mut_ptr(), max, ms) };
    if res < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(res as usize)
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a second descriptor for the same open file.
pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    let new = syscall!(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0))?;
    // SAFETY: fcntl just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `preadv2(fd, iov, offset, flags)`, retrying `EINTR`.
///
/// # Safety
/// Every iovec must describe memory valid for writes for the whole call.
pub(crate) unsafe fn preadv2(
    fd: RawFd,
    iov: &[libc::iovec],
    offset: i64,
    flags: libc::c_int,
) -> io::Result<usize> {
    let cnt = iov.len().min(libc::c_int::MAX as usize) as libc::c_int;
    syscall!(libc::preadv2(fd, iov.as_ptr(), cnt, offset, flags)).map(|n| n as usize)
}

/// `pwritev2(fd, iov, offset, flags)`, retrying `EINTR`.
///
/// # Safety
/// Every iovec must describe memory valid for reads for the whole call.
pub(crate) unsafe fn pwritev2(
    fd: RawFd,
    iov: &[libc::iovec],
    offset: i64,
    flags: libc::c_int,
) -> io::Result<usize> {
    let cnt = iov.len().min(libc::c_int::MAX as usize) as libc::c_int;
    syscall!(libc::pwritev2(fd, iov.as_ptr(), cnt, offset, flags)).map(|n| n as usize)
}

/// `fsync(fd)`.
pub(crate) fn fsync(fd: RawFd) -> io::Result<()> {
    syscall!(libc::fsync(fd)).map(drop)
}

/// `fdatasync(fd)`.
pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    syscall!(libc::fdatasync(fd)).map(drop)
}

/// Whether `fd` has one of `events` (or an error or hang-up) right now: `poll(2)` with
/// a zero timeout. A closed `fd` counts as ready (the syscall that follows reports it).
pub(crate) fn poll_now(fd: RawFd, events: i16) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    Ok(syscall!(libc::poll(&mut pfd, 1, 0))? > 0)
}

/// Whether `a` and `b`, descriptors of this process, name the same open file description
/// (`kcmp(KCMP_FILE)`): the one exact test, where `(st_dev, st_ino)` is shared by all
/// anon-inode files (eventfd, timerfd, …) and all pty masters. `None` where the kernel
/// refuses `kcmp` (built without it, or a seccomp filter).
pub(crate) fn same_open_file(a: RawFd, b: RawFd) -> Option<bool> {
    /// `enum kcmp_type` in include/uapi/linux/kcmp.h.
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(std::process::id() as libc::pid_t);
    let res = syscall!(libc::syscall(
        libc::SYS_kcmp,
        pid,
        pid,
        KCMP_FILE,
        libc::c_long::from(a),
        libc::c_long::from(b)
    ));
    res.ok().map(|order| order == 0)
}

/// `fstat(fd)`: `(st_mode & S_IFMT, st_dev, st_ino)`.
pub(crate) fn fstat(fd: RawFd) -> io::Result<(libc::mode_t, u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    syscall!(libc::fstat(fd, st.as_mut_ptr()))?;
    // SAFETY: fstat succeeded, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    Ok((st.st_mode & libc::S_IFMT, st.st_dev, st.st_ino))
}

/// The CPUs the calling thread may run on (`sched_getaffinity(0)`), as CPU numbers.
///
/// # Errors
/// The `sched_getaffinity(2)` error.
#[doc(hidden)]
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    syscall!(libc::sched_getaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &mut set
    ))?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's size in bits.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity(0)`).
///
/// # Errors
/// `InvalidInput` for a CPU at or above `CPU_SETSIZE`; the `sched_setaffinity(2)` error.
#[doc(hidden)]
pub fn set_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond CPU_SETSIZE ({})", libc::CPU_SETSIZE),
            ));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so in range.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    syscall!(libc::sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))
    .map(drop)
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    set_cpus(&[cpu])
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN)`: the O_DIRECT alignment of the file
/// `fd` names, `(dio_mem_align, dio_offset_align)`; `None` where the kernel or the
/// file system does not report it (before Linux 6.1, or a file system without it), and
/// `Some((0, 0))` for a file that does not support O_DIRECT.
pub(crate) fn dio_align(fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    syscall!(libc::statx(
        fd.as_raw_fd(),
        c"".as_ptr(),
        libc::AT_EMPTY_PATH,
        libc::STATX_DIOALIGN,
        stx.as_mut_ptr()
    ))?;
    // SAFETY: statx succeeded and filled the struct; it was zeroed before anyway.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}
