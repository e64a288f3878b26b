//! [`OpenOptions`]: how [`File`](super::File)s are opened (`openat` flags and mode).

use std::future::Future;
use std::io;
use std::path::Path;

use super::file::File;
use crate::context::AioContext;

/// Options for opening a [`File`] through the ring, as `std::fs::OpenOptions`, plus
/// `O_DIRECT` and `O_DSYNC`. Every file is opened `O_CLOEXEC`.
///
/// ```
/// use aioctx_aio::{AioContext, OpenOptions};
/// let path = std::env::temp_dir().join(format!("aioctx-doc-open-{}", std::process::id()));
/// let ctx = AioContext::new()?;
/// let file = ctx.block_on(OpenOptions::new().write(true).create(true).mode(0o600).open(&ctx, &path))?;
/// let (res, _) = ctx.block_on(file.write_all_at(b"hi".to_vec(), 0));
/// res?;
/// ctx.block_on(file.close())?;
/// assert_eq!(std::fs::read(&path)?, b"hi");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    mode: u32,
    custom: i32,
    direct: bool,
    dsync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// No access, mode `0o666` (less the umask).
    pub fn new() -> Self {
        Self {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            mode: 0o666,
            custom: 0,
            direct: false,
            dsync: false,
        }
    }

    /// Read access.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }

    /// Write access.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }

    /// Append mode (`O_APPEND`; implies write access). Offsets of writes are ignored.
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.append = on;
        self
    }

    /// Truncate to length 0 (`O_TRUNC`; needs write access).
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }

    /// Create the file if missing (`O_CREAT`; needs write access).
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }

    /// Create the file, failing if it exists (`O_CREAT | O_EXCL`).
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }

    /// Permission bits of a created file (default `0o666`, less the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Extra `open(2)` flags, or-ed in (the access mode bits are ignored).
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom = flags;
        self
    }

    /// Direct I/O (`O_DIRECT`): reads and writes bypass the page cache, and their
    /// buffer address, length and offset must be aligned to the file's O_DIRECT
    /// alignment, which the [`File`] checks before anything reaches the kernel.
    pub fn direct(&mut self, on: bool) -> &mut Self {
        self.direct = on;
        self
    }

    /// Synchronous data writes (`O_DSYNC`): each write returns once its data is stable.
    pub fn dsync(&mut self, on: bool) -> &mut Self {
        self.dsync = on;
        self
    }

    /// The `open(2)` flags these options make.
    pub(crate) fn flags(&self) -> io::Result<i32> {
        let write = self.write || self.append;
        let access = match (self.read, write) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => {
                return Err(invalid(
                    "neither read, write nor append access was asked for",
                ));
            }
        };
        if !write && (self.truncate || self.create || self.create_new) {
            return Err(invalid("truncate, create and create_new need write access"));
        }
        let mut flags = access | (self.custom & !libc::O_ACCMODE);
        for (on, bit) in [
            (self.append, libc::O_APPEND),
            (self.truncate, libc::O_TRUNC),
            (self.create, libc::O_CREAT),
            (self.create_new, libc::O_CREAT | libc::O_EXCL),
            (self.direct, libc::O_DIRECT),
            (self.dsync, libc::O_DSYNC),
        ] {
            if on {
                flags |= bit;
            }
        }
        Ok(flags)
    }

    /// Opens `path` with these options through the ring (`openat` relative to the
    /// working directory). The `File` belongs to `ctx`: its operations run there. With
    /// [`direct`](Self::direct) (or `O_DIRECT` among the custom flags) the file's O_DIRECT
    /// alignment is read with `statx` once it is open.
    ///
    /// # Errors
    /// `InvalidInput` for options that ask for no access, or create/truncate without
    /// write access, and for a path with a NUL byte; the kernel's error otherwise
    /// (`NotFound`, `PermissionDenied`, `EINVAL` for flags it refuses — e.g. `O_DIRECT`
    /// on a file system without it, …).
    pub fn open<P: AsRef<Path>>(
        &self,
        ctx: &AioContext,
        path: P,
    ) -> impl Future<Output = io::Result<File>> + Send + 'static + use<P> {
        let args = self
            .flags()
            .and_then(|flags| Ok((flags, super::c_path("open", path.as_ref())?)));
        File::open_with(ctx, args, self.mode)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("OpenOptions: {what}"))
}

/// What [`File::fallocate`](super::File::fallocate) does to the range (`fallocate(2)`'s modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallocateMode {
    /// Allocates blocks for the range; with `keep_size` the file's size does not grow
    /// (`FALLOC_FL_KEEP_SIZE`).
    Allocate {
        /// Do not change the file's size.
        keep_size: bool,
    },
    /// Deallocates the range, which then reads as zeros; the size stays
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    PunchHole,
    /// Makes the range read as zeros, allocated (`FALLOC_FL_ZERO_RANGE`); with
    /// `keep_size` the size does not grow.
    ZeroRange {
        /// Do not change the file's size.
        keep_size: bool,
    },
}

impl FallocateMode {
    pub(crate) fn bits(self) -> libc::c_int {
        let keep = |k: bool| if k { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
        match self {
            FallocateMode::Allocate { keep_size } => keep(keep_size),
            FallocateMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            FallocateMode::ZeroRange { keep_size } => libc::FALLOC_FL_ZERO_RANGE | keep(keep_size),
        }
    }
}
