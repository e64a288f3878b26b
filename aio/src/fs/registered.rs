//! Registered files (`IORING_REGISTER_FILES`; QEMU has none, compio's and tokio-uring's
//! fixed files): a [`FixedFileTable`] is the ring's file table, and a [`File`]
//! registered in it has its operations name the table's entry (`IOSQE_FIXED_FILE`)
//! instead of its descriptor, which spares the kernel a descriptor lookup per operation.
//!
//! Rules:
//! [RF1] One table per ring: registered with empty entries when it is made, and kept
//!    until the ring is gone (a second table on the same context is refused, even after
//!    the first handle was dropped).
//! [RF2] A registered `File`'s operations carry a share of its entry (`op::Target::Fixed`)
//!    until their final completion, as they carry a share of its descriptor ([FL2]
//!    (`fs/file.rs`)). The entry is emptied (`IORING_REGISTER_FILES_UPDATE` with `-1`)
//!    and given back to the table's free list only when the last share is dropped —
//!    the `File` unregistered or dropped, and each of its operations completed — so an
//!    entry never names another file while an operation issued on it may still run.
//! [RF3] Registration calls are made on the context's home thread (the ring's submitter,
//!    which `SINGLE_ISSUER` requires): an entry let go of elsewhere, or inside one of
//!    the context's completions, is emptied by a bottom half. With the context gone or
//!    shut down nothing is done: the table goes with its ring.
//! [RF4] On epoll a table has no entries: registering a `File` there does nothing, and its
//!    operations use its descriptor, with the same results.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Weak;

use super::File;
use crate::backend::Driver;
use crate::context::AioContext;
use crate::sync::{Arc, Mutex, lock};

/// The most entries a file table has (io_uring's `IORING_MAX_FIXED_FILES`).
pub const MAX_FIXED_FILES: u32 = 1 << 20;

struct TableInner {
    /// The context whose ring has the table; `None` on epoll ([RF4]).
    ring: Option<Weak<AioContext>>,
    free: Mutex<Vec<u32>>,
    slots: u32,
}

/// The io_uring file table of a context (\[RF1\] in `fs/registered.rs`): [`File`]s
/// registered in it ([`File::register`]) have their operations name their entry instead
/// of their descriptor (`IOSQE_FIXED_FILE`). On epoll a table has no entries and
/// registering does nothing (\[RF4\]). Cloning shares the table.
///
/// ```
/// use aioctx_aio::{AioContext, FixedFileTable, OpenOptions};
/// let path = std::env::temp_dir().join(format!("aioctx-doc-fixedfile-{}", std::process::id()));
/// let ctx = AioContext::new()?;
/// let table = FixedFileTable::new(&ctx, 8)?;
/// let c = ctx.clone();
/// let p = path.clone();
/// let mut file = ctx.block_on(
///     OpenOptions::new().read(true).write(true).create(true).open(&c, &p),
/// )?;
/// file.register(&table)?;
/// assert_eq!(file.fixed_index().is_some(), table.is_registered());
/// let (res, _) = ctx.block_on(file.write_at(b"fixed file".to_vec(), 0));
/// assert_eq!(res?, 10);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct FixedFileTable {
    inner: Arc<TableInner>,
}

impl FixedFileTable {
    /// A table of `slots` empty entries, registered on `ctx`'s ring when it runs
    /// io_uring (`IORING_REGISTER_FILES`).
    ///
    /// # Errors
    /// `InvalidInput` when `slots` is not in `1..=MAX_FIXED_FILES`; `AlreadyExists`
    /// when the ring has a file table already (\[RF1\]); the kernel's error otherwise,
    /// with a message naming the cause: `EMFILE` when `slots` exceeds `RLIMIT_NOFILE`
    /// (the message names the limit), `ENOMEM`.
    ///
    /// # Panics
    /// Off `ctx`'s home thread (the calling thread becomes home if none is yet), or
    /// from inside one of `ctx`'s completions on io_uring.
    pub fn new(ctx: &AioContext, slots: u32) -> io::Result<Self> {
        if !(1..=MAX_FIXED_FILES).contains(&slots) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a registered file table of {slots} entries: io_uring takes \
                     1..={MAX_FIXED_FILES}"
                ),
            ));
        }
        ctx.check_home("FixedFileTable::new");
        let mut ring = None;
        if ctx.backend() == crate::Backend::IoUring {
            let mut home = ctx
                .try_home()
                .expect("FixedFileTable::new from inside a completion of its context");
            let Driver::Uring(driver) = &mut home.driver else {
                unreachable!("an io_uring context without a ring");
            };
            driver
                .register_files(slots)
                .map_err(|e| registration_error(e, slots))?;
            ring = Some(ctx.weak());
        }
        Ok(Self {
            inner: Arc::new(TableInner {
                ring,
                free: Mutex::new((0..slots).rev().collect()),
                slots,
            }),
        })
    }

    /// Whether the table is its context's ring's file table (io_uring), rather than
    /// the epoll back end's stand-in (\[RF4\]).
    pub fn is_registered(&self) -> bool {
        self.inner.ring.is_some()
    }

    /// How many entries the table has.
    pub fn slots(&self) -> u32 {
        self.inner.slots
    }

    /// How many entries are free now (an entry let go of comes back once the
    /// operations issued on it completed, \[RF2\]).
    pub fn available(&self) -> usize {
        lock(&self.inner.free).len()
    }
}

impl fmt::Debug for FixedFileTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedFileTable")
            .field("slots", &self.inner.slots)
            .field("registered", &self.is_registered())
            .finish()
    }
}

/// The kernel's refusal of a table, with its cause named.
fn registration_error(e: io::Error, slots: u32) -> io::Error {
    let (kind, why) = match e.raw_os_error() {
        Some(libc::EBUSY) => (
            io::ErrorKind::AlreadyExists,
            "this context's ring has a registered file table already (io_uring takes one \
             per ring)"
                .to_owned(),
        ),
        Some(libc::EMFILE) => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
            let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
                lim.rlim_cur.to_string()
            } else {
                "unknown".to_owned()
            };
            (
                e.kind(),
                format!(
                    "{slots} entries exceed RLIMIT_NOFILE ({limit}); raise it (ulimit -n) or \
                     ask for fewer"
                ),
            )
        }
        Some(libc::ENOMEM) => (
            io::ErrorKind::OutOfMemory,
            format!("the kernel cannot allocate a table of {slots} entries"),
        ),
        _ => (e.kind(), "the kernel refused it".to_owned()),
    };
    io::Error::new(kind, format!("IORING_REGISTER_FILES failed: {e}: {why}"))
}

/// One entry of a table, taken by a registered `File` and shared by its operations
/// ([RF2]); emptied and given back when the last share is dropped.
pub(crate) struct FileSlot {
    table: Arc<TableInner>,
    pub(crate) index: u32,
}

impl Drop for FileSlot {
    /// [RF2], [RF3].
    fn drop(&mut self) {
        release(Arc::clone(&self.table), self.index);
    }
}

/// Empties entry `index` and gives it back, on the home thread ([RF3]).
fn release(table: Arc<TableInner>, index: u32) {
    let Some(ctx) = table.ring.as_ref().and_then(Weak::upgrade) else {
        return; // the ring is gone, and its table with it
    };
    // Relaxed: set on the home thread by the shutdown; read there only (or stale
    // elsewhere, which the bottom half below checks again).
    if ctx
        .remote
        .closed
        .load(crate::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    if ctx.is_home_thread()
        && let Some(mut home) = ctx.try_home()
    {
        if let Driver::Uring(driver) = &mut home.driver
            && driver.update_file(index, -1).is_ok()
        {
            lock(&table.free).push(index);
        }
        // A failed update leaves the entry taken: it is never reused with a stale file.
        return;
    }
    ctx.schedule_oneshot(move || release(table, index));
}

impl File {
    /// Registers the file in `table` (its context's ring's file table): its operations
    /// from now on name the table's entry instead of the descriptor (`IOSQE_FIXED_FILE`).
    /// On epoll it does nothing (\[RF4\]); registering again in the same table does
    /// nothing.
    ///
    /// # Errors
    /// `InvalidInput` when `table` belongs to another context than the file, or the
    /// file is registered in another table; `BrokenPipe` when the context is gone; an
    /// error naming the table's size when every entry is taken; the kernel's error for
    /// the update.
    ///
    /// # Panics
    /// Off the context's home thread, or from inside one of its completions, on io_uring.
    pub fn register(&mut self, table: &FixedFileTable) -> io::Result<()> {
        let bad = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned()));
        if let Some(slot) = &self.slot {
            if Arc::ptr_eq(&slot.table, &table.inner) {
                return Ok(());
            }
            return bad("File::register: the file is registered in another table");
        }
        let ctx = self.context()?;
        let Some(ring) = &table.inner.ring else {
            return Ok(()); // [RF4]
        };
        if !Weak::ptr_eq(ring, &ctx.weak()) {
            return bad("File::register: the table belongs to another context than the file");
        }
        ctx.check_home("File::register");
        let index = lock(&table.inner.free).pop().ok_or_else(|| {
            io::Error::other(format!(
                "File::register: all {} entries of the file table are taken",
                table.inner.slots
            ))
        })?;
        let res = {
            let mut home = ctx
                .try_home()
                .expect("File::register from inside a completion of its context");
            let Driver::Uring(driver) = &mut home.driver else {
                unreachable!("an io_uring context without a ring");
            };
            driver.update_file(index, self.as_raw_fd())
        };
        if let Err(e) = res {
            lock(&table.inner.free).push(index);
            return Err(io::Error::new(
                e.kind(),
                format!("File::register: IORING_REGISTER_FILES_UPDATE failed: {e}"),
            ));
        }
        self.slot = Some(Arc::new(FileSlot {
            table: Arc::clone(&table.inner),
            index,
        }));
        Ok(())
    }

    /// Unregisters the file: its operations from now on use its descriptor. The entry
    /// is emptied and freed once the operations issued on it completed (\[RF2\]).
    pub fn unregister(&mut self) {
        self.slot = None;
    }

    /// The file's entry in its context's ring's file table, if it is registered.
    pub fn fixed_index(&self) -> Option<u32> {
        self.slot.as_ref().map(|s| s.index)
    }
}

/// An entry the table does not have, or a ring with no table: the kernel's `EBADF`, as
/// a plain `io::Error` (the public API only names entries it took; this checks the
/// lowering itself).
#[cfg(all(test, not(loom)))]
mod tests {
    use std::os::fd::OwnedFd;

    use super::FixedFileTable;
    use crate::context::AioContext;
    use crate::io::RingOp;
    use crate::op::{Fsync, Target};
    use crate::sync::Arc;

    fn fsync_on_entry(ctx: &AioContext, fd: &Arc<OwnedFd>, index: u32) -> Option<i32> {
        let target = Target::Fixed {
            fd: Arc::clone(fd),
            index,
            _entry: Arc::new(()),
        };
        let op = Fsync {
            fd: target,
            data_only: false,
        };
        let (res, ()) = ctx.block_on(RingOp::new(ctx, op));
        res.unwrap_err().raw_os_error()
    }

    #[test]
    fn an_entry_out_of_range_or_without_a_table_is_ebadf() {
        let ctx = AioContext::new().unwrap();
        if ctx.backend() != crate::Backend::IoUring {
            // Straight to stderr (the harness captures `eprintln!` of passing tests).
            let line =
                "skipped an_entry_out_of_range_or_without_a_table_is_ebadf: needs io_uring\n";
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            return;
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = Arc::new(OwnedFd::from(file));
        assert_eq!(fsync_on_entry(&ctx, &fd, 0), Some(libc::EBADF), "no table");
        let _table = FixedFileTable::new(&ctx, 2).unwrap();
        assert_eq!(
            fsync_on_entry(&ctx, &fd, 7),
            Some(libc::EBADF),
            "out of range"
        );
        assert_eq!(
            fsync_on_entry(&ctx, &fd, 1),
            Some(libc::EBADF),
            "an empty entry"
        );
    }
}
