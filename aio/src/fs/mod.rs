//! Files through the ring: [`File`], [`OpenOptions`], [`Metadata`], and path
//! operations on [`AioContext`] (`unlink`, `rename`, `mkdir`). User-facing layer: each
//! method builds an operation of the op layer (`op/`) and awaits its [`RingOp`]; on
//! epoll the same operations run their blocking lowering on the worker pool.
//!
//! Rules:
//! [FS1] A path is copied into a `CString` owned by its operation, which keeps it until
//!    the operation's final completion ([IO1] (`io.rs`)); a path with a NUL byte is
//!    `InvalidInput` before anything reaches the kernel.
//! [FS2] Descriptors: see `file.rs`; the futures of a `File`'s operations: `file_op.rs`.
//!
//! [`RingOp`]: crate::RingOp

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::context::AioContext;
use crate::io::RingOp;
use crate::op::{Mkdir, Rename, Unlink};

mod dio;
#[cfg(all(test, not(loom)))]
mod fallback_tests;
mod file;
mod file_fixed;
mod file_op;
mod meta;
mod options;
mod registered;
mod rest;

pub use self::file::File;
pub use self::file_op::{FileOp, FileUnitOp};
pub use self::meta::{FileType, Metadata};
pub use self::options::{FallocateMode, OpenOptions};
pub use self::registered::{FixedFileTable, MAX_FIXED_FILES};

/// `path` as a C string ([FS1]).
pub(crate) fn c_path(what: &str, path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: path {path:?} contains a NUL byte"),
        )
    })
}

/// Awaits an operation whose output is `()`.
async fn unit(op: io::Result<RingOp<()>>) -> io::Result<()> {
    op?.await.0.map(drop)
}

impl AioContext {
    /// Removes the file `path` through the ring (`unlinkat`; QEMU has none: it calls
    /// `unlink(2)`). The path is copied and kept until the operation completes.
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("aioctx-doc-unlink-{}", std::process::id()));
    /// std::fs::write(&path, b"x")?;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// ctx.block_on(ctx.unlink(&path))?;
    /// assert!(!path.exists());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` for a path with a NUL byte; the kernel's error (`NotFound`,
    /// `EISDIR` for a directory, …).
    pub fn unlink<P: AsRef<Path>>(
        &self,
        path: P,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static + use<P> {
        let op = c_path("unlink", path.as_ref())
            .map(|path| RingOp::new(self, Unlink { path, flags: 0 }));
        unit(op)
    }

    /// Removes the empty directory `path` through the ring (`unlinkat` with
    /// `AT_REMOVEDIR`).
    ///
    /// # Errors
    /// As for [`unlink`](Self::unlink); `ENOTEMPTY` for a directory with entries.
    pub fn remove_dir<P: AsRef<Path>>(
        &self,
        path: P,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static + use<P> {
        let op = c_path("remove_dir", path.as_ref()).map(|path| {
            RingOp::new(
                self,
                Unlink {
                    path,
                    flags: libc::AT_REMOVEDIR,
                },
            )
        });
        unit(op)
    }

    /// Renames `from` to `to` through the ring (`renameat`), replacing `to` if it
    /// exists.
    ///
    /// # Errors
    /// `InvalidInput` for a path with a NUL byte; the kernel's error.
    pub fn rename<P: AsRef<Path>, Q: AsRef<Path>>(
        &self,
        from: P,
        to: Q,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static + use<P, Q> {
        let op = c_path("rename", from.as_ref()).and_then(|from| {
            let to = c_path("rename", to.as_ref())?;
            Ok(RingOp::new(self, Rename { from, to }))
        });
        unit(op)
    }

    /// Creates the directory `path` with permission bits `mode` (less the umask)
    /// through the ring (`mkdirat`; a kernel before 5.15 runs it on the worker pool).
    ///
    /// # Errors
    /// `InvalidInput` for a path with a NUL byte; the kernel's error (`AlreadyExists`,
    /// `NotFound` for a missing parent, …).
    pub fn mkdir<P: AsRef<Path>>(
        &self,
        path: P,
        mode: u32,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static + use<P> {
        let op = c_path("mkdir", path.as_ref()).map(|path| RingOp::new(self, Mkdir { path, mode }));
        unit(op)
    }
}
