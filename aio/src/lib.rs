//! A per-thread, io_uring-driven event loop with the semantics of QEMU's `AioContext`:
//! bottom halves, timers, fd handlers and raw ring operations, on a loop whose wake-ups
//! are never lost and cost a syscall only when the loop really sleeps.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use aioctx_aio::{AioContext, EventNotifier};
//!
//! let ctx = AioContext::new()?;
//! // A bottom half scheduled from another thread wakes the loop with one eventfd write.
//! let ran = Arc::new(AtomicUsize::new(0));
//! let r = ran.clone();
//! let bh = ctx.bh_new(move || { r.fetch_add(1, Ordering::Relaxed); });
//! std::thread::scope(|s| { s.spawn(|| bh.schedule()); });
//! while ran.load(Ordering::Relaxed) == 0 {
//!     ctx.poll(true);
//! }
//! // An fd handler is level-triggered: it runs while the fd is readable.
//! let e = Arc::new(EventNotifier::new()?);
//! let e2 = e.clone();
//! ctx.set_fd_handler(e.fd(), Some(Box::new(move || { e2.test_and_clear().unwrap(); })), None)?;
//! e.set()?;
//! assert!(ctx.poll(true));
//! ctx.set_fd_handler(e.fd(), None, None)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Tasks (QEMU's coroutines) run on a context too: [`AioContext::spawn`],
//! [`AioContext::block_on`], [`reschedule_to`], with [`CoQueue`] and [`CoMutex`] to
//! coordinate them, and file I/O on owned buffers goes through the ring:
//!
//! ```
//! use std::os::fd::AsRawFd;
//! let path = std::env::temp_dir().join(format!("aioctx-lib-doc-{}", std::process::id()));
//! let file = std::fs::File::create_new(&path)?;
//! let ctx = aioctx_aio::AioContext::new()?;
//! let c = ctx.clone();
//! let fd = file.as_raw_fd();
//! let task = ctx.spawn(async move {
//!     let (res, buf) = c.write_at(fd, b"hello".to_vec(), 0).await;
//!     res?;
//!     c.fsync(fd).await?;
//!     Ok::<_, std::io::Error>(buf.len())
//! });
//! assert_eq!(ctx.block_on(task)??, 5); // the JoinError converts into io::Error
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Files opened through the ring are [`File`]s ([`OpenOptions`], with `O_DIRECT`
//! alignment checked before anything reaches the kernel); they own their descriptor and
//! close it exactly once, never while one of their operations is in flight. Paths are
//! removed, renamed and created with [`AioContext::unlink`], [`AioContext::rename`] and
//! [`AioContext::mkdir`]. [`AioContext::write_at_then_fsync`] (and
//! [`File::write_at_then_fsync`]) links a write and its flush in the kernel
//! (`IOSQE_IO_LINK`), [`AioContext::read_at_then_write_at`] a read and a write of the
//! same buffer, each with a result per step; [`RingOp::with_deadline`] gives one
//! operation a deadline (`IORING_OP_LINK_TIMEOUT`; a timer and a cancel on epoll), and
//! [`RingOp::cancel_handle`] a [`CancelHandle`] that cancels it from any thread while
//! its future stays alive; a [`File`]'s operations return a [`FileOp`] with the same
//! two. A [`FixedBufPool`] registers its buffers as the ring's buffer table for
//! [`AioContext::read_fixed_at`]/[`AioContext::write_fixed_at`] and
//! [`File::read_fixed_at`]/[`File::write_fixed_at`] (`READ_FIXED`/`WRITE_FIXED`; plain
//! reads and writes on epoll), and a [`FixedFileTable`] registers files
//! ([`File::register`]: their operations name a table entry, `IOSQE_FIXED_FILE`).
//!
//! # A storage program
//!
//! End to end, on a scratch file: open it with `O_DIRECT` (where the file system refuses
//! it, without), read and write [`AlignedBuf`]s at offsets, each with a deadline
//! ([`FileOp::with_deadline`]), a registered file and a registered buffer
//! ([`FixedFileTable`], [`FixedBufPool`]), a linked `write → fsync`, a read cancelled by
//! its deadline, and an explicit close.
//!
//! ```
//! use std::io::ErrorKind;
//! use std::time::Duration;
//! use aioctx_aio::{AioContext, AlignedBuf, File, FixedBufPool, FixedFileTable, OpenOptions};
//!
//! let path = std::env::temp_dir().join(format!("aioctx-storage-doc-{}", std::process::id()));
//! let ctx = AioContext::new()?;
//! let table = FixedFileTable::new(&ctx, 4)?; // IORING_REGISTER_FILES (nothing on epoll)
//! let pool = FixedBufPool::new(&ctx, 2, 4096)?; // IORING_REGISTER_BUFFERS, page-aligned
//! let c = ctx.clone();
//! let p = path.clone();
//! ctx.block_on(async move {
//!     let deadline = Duration::from_secs(10);
//!     let mut opts = OpenOptions::new();
//!     opts.read(true).write(true).create(true).truncate(true);
//!     let mut file = match opts.clone().direct(true).open(&c, &p).await {
//!         // tmpfs before Linux 6.6 refuses O_DIRECT: say so, and go on without.
//!         Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
//!             eprintln!("{} refuses O_DIRECT ({e}): buffered I/O", p.display());
//!             opts.open(&c, &p).await?
//!         }
//!         res => res?,
//!     };
//!     file.register(&table)?; // its operations now name the table's entry
//!
//!     // A buffer at the file's O_DIRECT alignment; a misaligned one would be refused
//!     // (InvalidInput) before it reached the kernel.
//!     let mut buf = AlignedBuf::for_file(&file, 8192)?;
//!     buf.fill(b'a');
//!     let (res, buf) = file.write_at(buf, 0).with_deadline(deadline).await;
//!     assert_eq!(res?, 8192);
//!
//!     // A registered buffer, written with WRITE_FIXED, then write → fsync linked in
//!     // the kernel: one submission, the flush runs only after the whole write.
//!     let mut fixed = pool.try_get().expect("a free buffer");
//!     fixed.set_len(4096);
//!     fixed.fill(b'b');
//!     let (res, _fixed) = file.write_fixed_at(fixed, 8192).with_deadline(deadline).await;
//!     assert_eq!(res?, 4096);
//!     let (written, flushed, buf) = file.write_at_then_fsync(buf, 12288, false).await;
//!     assert_eq!(written?, 8192);
//!     flushed?;
//!
//!     // Read back at an offset, the same buffer reused.
//!     let (res, buf) = file.read_at(buf, 4096).with_deadline(deadline).await;
//!     assert_eq!(res?, 8192);
//!     assert!(buf[..4096].iter().all(|&b| b == b'a') && buf[4096..].iter().all(|&b| b == b'b'));
//!     assert_eq!(file.metadata().await?.len(), 20480);
//!
//!     // A read nobody answers (a pipe nobody writes to) is cancelled by its deadline:
//!     // TimedOut, and the buffer comes back (the kernel is done with it).
//!     let (r, _w) = std::io::pipe()?;
//!     let stalled = File::from_owned_fd(&c, r.into());
//!     let (res, _buf) = stalled.read_at(buf, 0).with_deadline(Duration::from_millis(20)).await;
//!     assert_eq!(res.unwrap_err().kind(), ErrorKind::TimedOut);
//!
//!     file.close().await // close(2)'s own error, through the ring
//! })?;
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! What a user can rely on — where callbacks and tasks run, bottom-half, timer and
//! fd-handler ordering, buffer ownership and cancel-on-drop, `File`'s close, shutdown,
//! what panics — is gathered in [`guide`], each point with the label of the rule that
//! guarantees it (`[BH7]`, `[IO6]`, …).
//!
//! Each protocol module opens with its rules and their proof: [`notify`](crate#notify-protocol) (`notify.rs`), bottom halves
//! (`bh.rs`), fd handlers (`fd.rs`), timers (`timer.rs`), the ring (`backend/uring.rs`),
//! tasks (`task.rs`), `CoQueue`/`CoMutex` (`co_lock.rs`), owned-buffer I/O (`io.rs`),
//! ring setup flags (`backend/uring/setup.rs`), [`timeout`] (`timeout.rs`) and the
//! O_DIRECT buffer [`AlignedBuf`] (`aligned.rs`).
//!
//! # Layers
//! The modules form layers, and imports run one way, from the bottom up (a unit test,
//! `layering.rs`, reads every `crate::…` path and fails on one that points up):
//!
//! 0. **Leaves**, which know nothing of contexts: the `sync` shim, `sys` (raw
//!    syscalls), `completion` ([`RawCallback`] and the driver-side `Callback`), `fd`
//!    (handler nodes), `io_buf` ([`IoBuf`], [`IoBufMut`]), `notify`, `stats`, `join`,
//!    [`EventNotifier`].
//! 1. **Operations** (`op/`): one type per kernel operation (`ReadAt`, `WriteAt`,
//!    `Fsync`, …), each in its own file, implementing `OpCode`: its io_uring entry
//!    (behind the one unsafe boundary, `Sqe`), its blocking syscall for the epoll
//!    back end's worker pool, and what the readiness path needs on streams.
//! 2. **Back ends** (`backend/`, `pool.rs`): io_uring and epoll drivers, the stream
//!    table and the worker pool; they see operations only as `OpCode`s, `Sqe`s and
//!    `Callback`s.
//! 3. **Core**: [`AioContext`] and what runs on it — bottom halves, timers, `poll`,
//!    tasks, shutdown, [`IoThread`], [`AioContext::submit_raw`].
//! 4. **User-facing I/O** (`io.rs`, `io/`, `fs/`): the futures ([`RingOp`]) and the
//!    `AioContext` methods that build operations and hand them to a back end.
//!
//! Adding an operation is one file in `op/` (a type that owns what the kernel touches
//! and implements `OpCode`) plus its `mod` line, and a method in the user-facing layer
//! that builds it.
//!
//! # Notify protocol
//! See `notify.rs`: a notify to an awake loop costs no syscall; one to a sleeping loop
//! costs one eventfd write, consumed by the loop through a ring read it keeps armed.
//!
//! # Backends
//! io_uring by default; where it is denied or missing (seccomp, Docker's default
//! profile, `kernel.io_uring_disabled`, old kernels) [`Backend::Auto`] falls back to
//! epoll with one log line that says why. There the typed I/O operations on regular
//! files and block devices run on a small worker pool whose completions return as
//! bottom halves, and those on pipes, sockets and ttys are driven by readiness on the
//! loop, so no thread waits on a stream (`backend/epoll.rs`, `pool.rs`,
//! `io/stream.rs`). [`AioContextBuilder::backend`] or `AIOCTX_BACKEND=io_uring|epoll` choose
//! explicitly; [`AioContext::backend`] says which runs. Everything but
//! [`AioContext::submit_raw`] (raw SQEs: `Unsupported` on epoll) behaves the same; on
//! epoll a wake-up costs the woken loop one `read(2)` of the eventfd more.
//!
//! The layers, the protocols and where their proofs live, the invariants every change
//! keeps and how the tests, loom models, fuzz targets and sanitizers are organised:
//! [`ARCHITECTURE.md`](https://github.com/aioctx/aioctx/blob/main/ARCHITECTURE.md) in
//! the repository.
//!
//! # Testing
//! The main context belongs to the first thread that polls it, and libtest runs each
//! test on a thread of its own: [`testing`] gives the pattern every test of the main
//! loop needs (`wait_while(None)`, `bh_oneshot`, the graph writer).
#![deny(missing_docs)]

mod aligned;
mod backend;
mod bh;
mod callback;
mod co_lock;
mod completion;
mod context;
mod current;
mod event_notifier;
mod fd;
mod fs;
mod io;
mod io_buf;
mod iothread;
mod join;
#[cfg(all(test, not(loom)))]
mod layering;
mod local;
mod notify;
mod op;
mod poll;
mod poll_params;
mod pool;
#[cfg(all(test, not(loom)))]
mod rule_labels;
mod run_queue;
mod seccomp;
mod shutdown;
mod stats;
mod submit;
mod sync;
mod sys;
mod task;
mod timeout;
mod timer;

pub mod guide;
pub mod testing;

#[cfg(all(loom, test))]
mod loom_loop;
#[cfg(all(loom, test))]
mod loom_tasks;
#[cfg(all(loom, test))]
mod loom_tests;
#[cfg(all(loom, test))]
mod loom_timer;

pub use aligned::{AlignedBuf, FALLBACK_DIO_ALIGN, dio_alignment};
pub use backend::uring::MAX_RING_ENTRIES;
pub use backend::uring::setup::{RING_SETUP_ENV, RingFeatures, RingSetupError};
pub use backend::{BACKEND_ENV, Backend};
pub use bh::{Bh, BhRef, ContextGone};
pub use co_lock::{CoMutex, CoMutexGuard, CoQueue, Lock};
pub use completion::{CompletionHandler, RawCallback};
pub use context::{AioContext, AioContextBuilder, DEFAULT_RING_ENTRIES};
pub use current::{current, main_context, try_current, with_current};
pub use event_notifier::EventNotifier;
pub use fd::FdCallback;
pub use fs::{
    FallocateMode, File, FileOp, FileType, FileUnitOp, FixedFileTable, MAX_FIXED_FILES, Metadata,
    OpenOptions,
};
pub use io::{
    CancelHandle, FixedBuf, FixedBufPool, MAX_FIXED_BUF_SIZE, MAX_FIXED_BUFS, MAX_RETRIES, RingOp,
};
pub use io_buf::{IoBuf, IoBufMut};
pub use iothread::{IOTHREAD_POLL_MAX_NS, IoThread};
pub use join::{JoinError, JoinHandle};
pub use local::{ContextLocal, MAX_CONTEXT_LOCALS};
pub use poll_params::PollParams;
pub use run_queue::{DRAIN_BUDGET, RescheduleTo, YieldNow, reschedule_to, yield_now};
pub use stats::Stats;
pub use submit::RawOp;
pub use task::in_task;
pub use timeout::{Elapsed, Timeout, timeout};
pub use timer::{ClockType, Sleep, Timer, TimerRef, sleep};

/// The io_uring crate this crate builds on, for [`AioContext::submit_raw`] entries.
pub use io_uring;

/// Helpers the workspace's CLI and tests share with the loop (thread affinity, a
/// seccomp filter); not part of the API.
#[doc(hidden)]
pub mod __sys {
    pub use crate::seccomp::deny_syscalls;
    pub use crate::sys::{allowed_cpus, set_cpus};
}
