//! Files and descriptors for tests.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A file in the temp dir, removed on drop.
#[derive(Debug)]
pub struct TempFile {
    /// Where it is.
    pub path: PathBuf,
    /// It, open for reading and writing.
    pub file: std::fs::File,
}

/// A new, empty file in the temp dir whose name holds `tag`, removed on drop.
///
/// # Panics
/// When the file cannot be created.
pub fn tempfile(tag: &str) -> TempFile {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("aioctx-{tag}-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temp file");
    TempFile { path, file }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A new pipe, `(read end, write end)`, both close-on-exec.
///
/// # Panics
/// When `pipe2` fails.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let res = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(res, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Writes all of `data` to `fd` in one `write(2)`.
///
/// # Panics
/// When the write fails or is short.
pub fn write_fd(fd: RawFd, data: &[u8]) {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
}
