//! Every raw syscall the CLI makes, wrapped once: the kernel's syscall counter
//! (`perf_event_open` on the `raw_syscalls:sys_enter` tracepoint) and the primitives the
//! peer scenarios measure (eventfd, futex).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

// The workspace's one `syscall!` (a libc call returning -1 on error, retried on EINTR).
use aioctx::aio::syscall;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes), all we need.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bitfield word: bit 0 `disabled`, bit 1 `inherit`, ...
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE_VER0: u32 = 64;
const ATTR_FLAG_INHERIT: u64 = 1 << 1;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER0 as usize);

/// Counts every syscall entry of this process — the thread that opened it and every
/// thread it (and they) create afterwards (`inherit`). Threads that existed before the
/// counter was opened are not counted, so open it before spawning any.
#[derive(Debug)]
pub struct SyscallCounter {
    fd: OwnedFd,
    /// Syscall entries one empty window counts: the `read(2)` that closes it.
    overhead: u64,
}

impl SyscallCounter {
    /// Opens the counter and checks it with a known number of `getppid(2)` calls.
    ///
    /// # Errors
    /// Why the kernel cannot count here: no tracefs, no tracepoint, or
    /// `perf_event_open` denied (`kernel.perf_event_paranoid`, seccomp).
    pub fn open() -> io::Result<Self> {
        let id = tracepoint_id("raw_syscalls", "sys_enter")?;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER0,
            config: id,
            flags: ATTR_FLAG_INHERIT,
            ..PerfEventAttr::default()
        };
        let fd = syscall!(libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            0 as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC
        ))
        .map_err(|e| io::Error::new(e.kind(), format!("perf_event_open: {e}")))?;
        // SAFETY: perf_event_open just returned this descriptor; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut counter = Self { fd, overhead: 0 };
        let a = counter.read()?;
        let b = counter.read()?;
        counter.overhead = b - a;
        const PROBES: u64 = 10;
        let before = counter.read()?;
        for _ in 0..PROBES {
            getppid();
        }
        let counted = counter.read()? - before - counter.overhead;
        if counted != PROBES {
            return Err(io::Error::other(format!(
                "the counter saw {counted} of {PROBES} getppid(2) calls (kernel-side syscalls \
                 excluded?)"
            )));
        }
        Ok(counter)
    }

    /// The count so far.
    ///
    /// # Errors
    /// The `read(2)` error.
    pub fn read(&self) -> io::Result<u64> {
        let mut value: u64 = 0;
        syscall!(libc::read(
            self.fd.as_raw_fd(),
            (&raw mut value).cast::<libc::c_void>(),
            8
        ))?;
        Ok(value)
    }

    /// Syscalls between two reads, less the closing read itself.
    pub fn between(&self, start: u64, end: u64) -> u64 {
        (end - start).saturating_sub(self.overhead)
    }
}

fn getppid() {
    // SAFETY: getppid takes no arguments and cannot fail; `syscall` forces a real entry
    // (no vDSO, no libc caching).
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// The numeric id of a tracepoint, from tracefs. When tracefs is not mounted, it is
/// mounted in a private mount namespace of this process only (nothing on the machine
/// changes), read, and unmounted.
fn tracepoint_id(system: &str, event: &str) -> io::Result<u64> {
    let rel = format!("events/{system}/{event}/id");
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if let Ok(text) = fs::read_to_string(Path::new(root).join(&rel)) {
            return parse_id(&text);
        }
    }
    let dir = std::env::temp_dir().join(format!("aioctx-tracefs-{}", std::process::id()));
    let id = with_private_tracefs(&dir, |root| {
        parse_id(&fs::read_to_string(root.join(&rel)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tracepoint {system}:{event} not found: {e}"),
            )
        })?)
    });
    let _ = fs::remove_dir(&dir);
    id
}

fn parse_id(text: &str) -> io::Result<u64> {
    text.trim()
        .parse()
        .map_err(|e| io::Error::other(format!("bad tracepoint id `{}`: {e}", text.trim())))
}

fn with_private_tracefs<T>(dir: &PathBuf, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let cstr = |s: &str| std::ffi::CString::new(s).expect("no NUL in a path");
    let ctx = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("tracefs is not mounted and {what} failed: {e}"),
            )
        }
    };
    syscall!(libc::unshare(libc::CLONE_NEWNS)).map_err(ctx("unshare(CLONE_NEWNS)"))?;
    let root = cstr("/");
    // Private propagation, so the mount below stays in this process's namespace.
    syscall!(libc::mount(
        std::ptr::null(),
        root.as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null()
    ))
    .map_err(ctx("making mounts private"))?;
    fs::create_dir_all(dir)?;
    let target = cstr(dir.to_str().expect("temp dir is UTF-8"));
    let fstype = cstr("tracefs");
    syscall!(libc::mount(
        fstype.as_ptr(),
        target.as_ptr(),
        fstype.as_ptr(),
        0,
        std::ptr::null()
    ))
    .map_err(ctx("mounting tracefs"))?;
    let result = f(dir);
    let _ = syscall!(libc::umount2(target.as_ptr(), 0));
    result
}

/// A new eventfd; `nonblocking` sets `EFD_NONBLOCK`.
///
/// # Errors
/// The `eventfd(2)` error.
pub fn eventfd(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
    let fd = syscall!(libc::eventfd(0, flags))?;
    // SAFETY: eventfd just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd counter.
///
/// # Panics
/// When the write fails (a peer measurement cannot go on).
pub fn eventfd_write(fd: &OwnedFd) {
    let one: u64 = 1;
    if let Err(e) = syscall!(libc::write(
        fd.as_raw_fd(),
        (&raw const one).cast::<libc::c_void>(),
        8
    )) {
        panic!("eventfd write failed: {e}");
    }
}

/// Reads (and clears) an eventfd counter, blocking if it is zero and the fd blocks.
///
/// # Panics
/// When the read fails.
pub fn eventfd_read(fd: &OwnedFd) -> u64 {
    let mut value: u64 = 0;
    match syscall!(libc::read(
        fd.as_raw_fd(),
        (&raw mut value).cast::<libc::c_void>(),
        8
    )) {
        Ok(_) => value,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("eventfd read failed: {e}"),
    }
}

/// `FUTEX_WAKE_PRIVATE` of one waiter on `word`; returns how many were woken.
pub fn futex_wake(word: &std::sync::atomic::AtomicU32) -> i64 {
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; FUTEX_WAKE
    // only looks up waiters on its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    }
}

// The CPU-affinity helpers are the library's own (one copy in the workspace).
pub use aioctx::aio::__sys::{allowed_cpus, set_cpus};
