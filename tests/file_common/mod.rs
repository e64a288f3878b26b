//! Helpers of the `file_*` tests: a scratch directory per test, an aligned buffer for
//! O_DIRECT, a tmpfs mount guard, and descriptor checks.
#![allow(dead_code)]

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use aioctx::aio::{AioContext, File, IoBuf, IoBufMut, OpenOptions};

/// A scratch directory under `base`, removed with its contents on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        Self::under(&std::env::temp_dir(), tag)
    }

    pub fn under(base: &Path, tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("aioctx-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A heap buffer aligned to `align`, of `cap` bytes of which `len` are initialized.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    align: usize,
    /// Bytes skipped at the start (to make a misaligned buffer on purpose).
    shift: usize,
}

// SAFETY: the buffer owns its allocation exclusively.
unsafe impl Send for Aligned {}

impl Aligned {
    pub fn zeroed(len: usize, align: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), align).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self {
            ptr,
            len,
            cap: len,
            align,
            shift: 0,
        }
    }

    /// The same buffer starting `shift` bytes later (misaligned when `shift` is not a
    /// multiple of the alignment).
    pub fn shifted(mut self, shift: usize) -> Self {
        assert!(shift <= self.len);
        self.shift = shift;
        self
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes are initialized (zeroed, or written by a read).
        unsafe { std::slice::from_raw_parts(self.ptr.add(self.shift), self.len - self.shift) }
    }

    pub fn fill(&mut self, byte: u8) {
        // SAFETY: `cap` bytes are allocated.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.cap) };
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.cap.max(1), self.align).unwrap();
        // SAFETY: allocated with this layout in `zeroed`.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

// SAFETY: the allocation does not move with the value, and `len` bytes are initialized.
unsafe impl IoBuf for Aligned {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.wrapping_add(self.shift)
    }
    fn bytes_init(&self) -> usize {
        self.len - self.shift
    }
}

// SAFETY: as above; `cap` bytes are writable.
unsafe impl IoBufMut for Aligned {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.wrapping_add(self.shift)
    }
    fn bytes_total(&mut self) -> usize {
        self.cap - self.shift
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `(st_dev, st_ino)` of `fd`.
pub fn ident(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// A small tmpfs mounted on a fresh directory, unmounted (and the directory removed)
/// on drop. `None`, with the reason, when this process may not mount (not root, or a
/// container without `CAP_SYS_ADMIN`).
pub struct TmpfsMount {
    pub dir: PathBuf,
}

impl TmpfsMount {
    pub fn new(tag: &str, size: &str) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".to_owned());
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aioctx-mnt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {dir:?}: {e}"))?;
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(dir.to_str().unwrap());
        let data = c(&format!("size={size},mode=0700"));
        // SAFETY: all strings are NUL-terminated and outlive the call.
        let res = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if res != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("mount tmpfs: {e}"));
        }
        Ok(Self { dir })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: the path is NUL-terminated; MNT_DETACH never blocks on busy files.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Installs a canary file (`path`, created) on `fd`'s number — which must be free: a
/// `File`'s, already closed — and returns the canary's identity, so that a later,
/// wrong `close` of that number is seen.
pub fn install_canary(fd: RawFd, path: &Path) -> (u64, u64) {
    assert!(!is_open(fd), "the number {fd} is still open");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; the new descriptor is this function's.
    let n = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    assert!(n >= 0, "open canary: {}", std::io::Error::last_os_error());
    if n != fd {
        // SAFETY: dup2 onto the free number `fd` (checked above, under the test's
        // descriptor lock), then the temporary number is closed.
        unsafe {
            assert_eq!(
                libc::dup2(n, fd),
                fd,
                "dup2: {}",
                std::io::Error::last_os_error()
            );
            libc::close(n);
        }
    }
    ident(fd).expect("the canary is open")
}

/// Checks that the canary on `fd` is still there (nobody closed the number twice) and
/// closes it.
pub fn remove_canary(fd: RawFd, id: (u64, u64)) {
    assert_eq!(
        ident(fd),
        Some(id),
        "descriptor {fd} was closed a second time (the canary on its number is gone)"
    );
    // SAFETY: the canary is ours (installed by `install_canary`).
    unsafe { libc::close(fd) };
}

/// An O_DIRECT file in a scratch dir under /var/tmp, or `None` (with a printed line)
/// where O_DIRECT is refused there.
pub fn direct_file(test: &str, ctx: &AioContext) -> Option<(Scratch, File)> {
    let base = Path::new("/var/tmp");
    if !base.is_dir() {
        aioctx_testkit::say_skipped(&format!("skipped {test}: no /var/tmp"));
        return None;
    }
    let scratch = Scratch::under(base, "dio");
    let open = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true)
        .open(ctx, scratch.path("f"));
    match ctx.block_on(open) {
        Ok(file) => Some((scratch, file)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            aioctx_testkit::say_skipped(&format!(
                "skipped {test}: /var/tmp refuses O_DIRECT ({e})"
            ));
            None
        }
        Err(e) => panic!("{test}: open O_DIRECT: {e}"),
    }
}

/// Starts a future inside a bottom half of `ctx` — `make` runs there, and the future
/// is polled once there (it must be pending) — and hands it back, for the caller to
/// finish outside the callback.
pub fn started_in_bh<F>(ctx: &AioContext, make: impl FnOnce() -> F + Send + 'static) -> F
where
    F: std::future::Future + Unpin + Send + 'static,
{
    use std::sync::{Arc, Mutex};
    let stash = Arc::new(Mutex::new(None));
    let s = stash.clone();
    ctx.schedule_oneshot(move || {
        let mut fut = make();
        assert!(aioctx_testkit::poll_once(&mut fut).is_pending());
        *s.lock().unwrap() = Some(fut);
    });
    loop {
        if let Some(fut) = stash.lock().unwrap().take() {
            return fut;
        }
        ctx.poll(true);
    }
}

/// A buffer that counts itself in a per-test counter while it lives.
pub struct Counted {
    v: Vec<u8>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counted {
    pub fn new(len: usize, live: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self {
            v: Vec::with_capacity(len),
            live: std::sync::Arc::clone(live),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

// SAFETY: delegates to the `Vec`, whose heap memory does not move with the value.
unsafe impl IoBuf for Counted {
    fn stable_ptr(&self) -> *const u8 {
        self.v.stable_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.v.bytes_init()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Counted {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.v.stable_mut_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.v.bytes_total()
    }
    unsafe fn set_init(&mut self, n: usize) {
        // SAFETY: the caller's obligation, passed on.
        unsafe { self.v.set_init(n) }
    }
}
