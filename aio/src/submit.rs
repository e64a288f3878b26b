//! Raw io_uring operations from users (QEMU: `aio_add_sqe`): [`AioContext::submit_raw`],
//! the hand-over of entries from other threads, and running the callbacks a context's
//! drop reaped. Core layer: which entries are accepted is `backend/raw.rs`'s, the
//! unsafe boundary is `op/sqe.rs`'s `Sqe`.

use std::io;
use std::sync::Arc;

use io_uring::squeue;

use crate::backend::Backend;
use crate::backend::raw::{self, Shots};
use crate::completion::{Callback, CompletionHandler, RawCallback};
use crate::context::{AioContext, Remote};
use crate::op::Sqe;
use crate::sync::atomic::Ordering;
use crate::sync::lock;

impl AioContext {
    /// Queues a raw io_uring operation; `on_complete` runs with the CQE's `res` and
    /// `flags` (QEMU: `aio_add_sqe`). Callable from any thread: from another thread the
    /// entry is handed over and the loop notified. The entry's `user_data` is replaced
    /// by the loop's own. A full submission queue is submitted and the push retried;
    /// completions that overflow the completion queue are kept by the kernel and flushed
    /// by the loop. The safe typed operations ([`read_at`](Self::read_at) and friends)
    /// share its machinery (the op layer hands the driver its own entries).
    ///
    /// `on_complete` runs exactly once, with the operation's CQE: normally on the home
    /// thread inside [`poll`](Self::poll). If the context is dropped first, the drop
    /// cancels the operation, reaps its CQE and runs `on_complete` on the dropping
    /// thread once the ring is quiet: with the real result if the operation completed,
    /// `-ECANCELED` if the cancel won (a panic there is logged, not propagated). If the
    /// kernel does not answer within 5 s, `on_complete` is leaked (never run or
    /// dropped) rather than freed while the kernel may still use what it owns.
    ///
    /// Only entries that post exactly one CQE and hold no memory past it are accepted;
    /// see `# Errors`. Multishot entries, and NOPs that allocate nothing, go through
    /// [`submit_raw_handler`](Self::submit_raw_handler).
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicI32, Ordering}};
    /// use aioctx_aio::io_uring::opcode;
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let res = Arc::new(AtomicI32::new(-1));
    /// let r = Arc::clone(&res);
    /// // SAFETY: a NOP names no memory.
    /// let submitted = unsafe {
    ///     ctx.submit_raw(opcode::Nop::new().build(), Box::new(move |res, _flags| {
    ///         r.store(res, Ordering::Relaxed);
    ///     }))
    /// };
    /// match submitted {
    ///     Ok(()) => {
    ///         while res.load(Ordering::Relaxed) == -1 {
    ///             ctx.poll(true);
    ///         }
    ///         assert_eq!(res.load(Ordering::Relaxed), 0);
    ///     }
    ///     // The epoll fallback has no ring.
    ///     Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported),
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Safety
    /// The caller guarantees, for an entry this call accepts:
    /// 1. Every piece of memory `entry` names — buffers, `iovec` arrays and the buffers
    ///    they point to, paths, `msghdr`s, socket addresses, timespecs, `statx` and
    ///    xattr buffers, futex words — stays valid until `on_complete` runs, or is
    ///    dropped unrun (the call returns an error, or the context shut down before
    ///    the entry reached the ring), and memory the kernel writes is neither read nor
    ///    written by anyone else until then. Moving the owners into `on_complete` meets
    ///    this. The loop never runs or drops `on_complete` before the operation's CQE
    ///    was reaped, and an accepted entry has exactly one CQE.
    /// 2. Every descriptor `entry` names, or closes (`CLOSE`), is one the caller may
    ///    use that way: not one the context or anyone else owns (I/O safety). A
    ///    descriptor closed early is not a memory hazard: the operation fails with
    ///    `EBADF` or acts on whatever file took the number.
    ///
    /// Nothing else is left to the caller: multishot forms, links, skipped CQEs,
    /// provided buffers, zero-copy sends and cancels naming the loop's own operations
    /// are refused (see `# Errors`), and a cancel that reaches the loop's own operations
    /// by fd or "any" only makes the loop arm them again.
    ///
    /// # Errors
    /// `Unsupported` on the epoll back end (see [`backend`](Self::backend)).
    /// `InvalidInput` for an entry the loop cannot track, with the reason: the SQE
    /// flags `IO_LINK`, `IO_HARDLINK`, `CQE_SKIP_SUCCESS`, `BUFFER_SELECT` or unknown
    /// ones; a multishot `POLL_ADD`, `ACCEPT`, `RECV`/`RECVMSG` or `TIMEOUT`, and
    /// `READ_MULTISHOT` (a `FnOnce` runs once: use `submit_raw_handler`);
    /// `SEND_ZC`/`SENDMSG_ZC`; `PROVIDE_BUFFERS`/`REMOVE_BUFFERS`; `MSG_RING`; `LINK_TIMEOUT`; `URING_CMD`; `POLL_REMOVE` with update flags; an
    /// `ASYNC_CANCEL`, `POLL_REMOVE` or `TIMEOUT_REMOVE` whose target `user_data` has
    /// the top bit set (the loop's reserved tag space); an opcode this crate does not
    /// know. `BrokenPipe` when another thread hands an entry to a context that shut
    /// down (its drop began, or its `IoThread` stopped). In every error case the entry
    /// is not submitted and `on_complete` is dropped unrun. An accepted entry still in
    /// flight when the context shuts down is cancelled, and `on_complete` runs with its
    /// CQE (the real result, or `-ECANCELED`) on the thread that shuts it down.
    pub unsafe fn submit_raw(
        &self,
        entry: squeue::Entry,
        on_complete: RawCallback,
    ) -> io::Result<()> {
        if self.backend != Backend::IoUring {
            drop(on_complete);
            return Err(self.no_ring("submit_raw"));
        }
        if raw::check(&entry)? == Shots::Many {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "submit_raw: the entry is multishot (one CQE per event), and a FnOnce \
                 callback runs once: submit it with submit_raw_handler, whose handler runs \
                 for every CQE",
            ));
        }
        // SAFETY: the caller's obligations above are `Sqe`'s invariant; `check` ruled
        // out every entry without a recognisable last CQE and every multishot one, so
        // the slot (which owns `on_complete`) is freed only after the one CQE.
        let sqe = unsafe { Sqe::new(entry) };
        if self.is_home_thread() {
            if let Err(e) = self.check_open("submit_raw") {
                drop(on_complete);
                return Err(e);
            }
            self.push_home(sqe, Callback::Raw(on_complete));
            Ok(())
        } else {
            self.remote.queue_raw(sqe, on_complete)
        }
    }

    /// Queues a raw io_uring operation whose completions go to `handler`, an object the
    /// caller keeps and may submit again and again: the loop holds one reference per
    /// operation in flight, so with a handler that outlives its operations a
    /// submission allocates nothing. Accepts what [`submit_raw`](Self::submit_raw)
    /// accepts, and also multishot entries ([`io_uring::opcode::PollAdd::multi`],
    /// multishot `ACCEPT` and `TIMEOUT`): `handler` then gets every CQE, those with
    /// `IORING_CQE_F_MORE` set ([`io_uring::cqueue::more`]) and the last one without
    /// it. Returns a handle for [`cancel_raw`](Self::cancel_raw).
    ///
    /// Home thread only (the loop's own fast path; from other threads use `submit_raw`
    /// or a bottom half). `handler` runs on the home thread inside
    /// [`poll`](Self::poll), once per CQE. If it panics, the panic propagates out of
    /// `poll` and the operation stays as it is: later CQEs of a multishot operation
    /// still reach `handler`. If the context is dropped first, the drop cancels the
    /// operation, reaps its CQEs and gives them to `handler` on the dropping thread
    /// once the ring is quiet (the last one `-ECANCELED` if the cancel won); if the
    /// kernel does not answer within 5 s the loop's references are leaked.
    ///
    /// Provided buffers (`IOSQE_BUFFER_SELECT`) stay refused, so the multishot
    /// `RECV`/`RECVMSG` and `READ_MULTISHOT`, which the kernel runs only with them,
    /// cannot be submitted.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use aioctx_aio::{CompletionHandler, io_uring::opcode};
    ///
    /// struct Count(AtomicU32);
    /// impl CompletionHandler for Count {
    ///     fn complete(&self, res: i32, _flags: u32) {
    ///         assert_eq!(res, 0);
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// }
    ///
    /// let ctx = aioctx_aio::AioContext::new()?;
    /// let count = Arc::new(Count(AtomicU32::new(0)));
    /// for _ in 0..3 {
    ///     // SAFETY: a NOP names no memory.
    ///     match unsafe { ctx.submit_raw_handler(opcode::Nop::new().build(), Arc::clone(&count)) } {
    ///         Ok(_op) => {}
    ///         // The epoll fallback has no ring.
    ///         Err(e) => {
    ///             assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
    ///             return Ok(());
    ///         }
    ///     }
    /// }
    /// while count.0.load(Ordering::Relaxed) < 3 {
    ///     ctx.poll(true);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Safety
    /// As for [`submit_raw`](Self::submit_raw), with "until `on_complete` runs, or is
    /// dropped unrun" read as "until `handler` received the operation's last CQE (the
    /// one without `IORING_CQE_F_MORE`), or the call returned an error": memory a
    /// multishot entry names (a multishot `TIMEOUT`'s timespec) must stay valid until
    /// that last CQE. Owning it in `handler` meets this: the loop drops its reference
    /// only after the last CQE.
    ///
    /// # Errors
    /// As for `submit_raw`, but multishot entries are accepted; `handler` is then not
    /// kept by the loop.
    ///
    /// # Panics
    /// On a thread other than the context's home thread.
    pub unsafe fn submit_raw_handler<H: CompletionHandler>(
        &self,
        entry: squeue::Entry,
        handler: Arc<H>,
    ) -> io::Result<RawOp> {
        self.check_home("submit_raw_handler");
        if self.backend != Backend::IoUring {
            return Err(self.no_ring("submit_raw_handler"));
        }
        raw::check(&entry)?;
        self.check_open("submit_raw_handler")?;
        // SAFETY: the caller's obligations above are `Sqe`'s invariant; `check` ruled
        // out every entry without a recognisable last CQE, and the slot (which holds
        // the loop's reference to `handler`) is freed only at that CQE ([RW5]).
        let sqe = unsafe { Sqe::new(entry) };
        let user_data = self.push_home(sqe, Callback::Shared(handler));
        Ok(RawOp { user_data })
    }

    /// Cancels the operation `op` names if it is still in flight (an `ASYNC_CANCEL`
    /// aimed at it, submitted at once): its handler then gets a last CQE, `-ECANCELED`
    /// if the cancel won. A no-op when the operation already posted its last CQE (the
    /// handle is stale and names no later operation) or the context shut down.
    ///
    /// # Panics
    /// On a thread other than the context's home thread.
    pub fn cancel_raw(&self, op: RawOp) {
        self.check_home("cancel_raw");
        // Relaxed: set on this (the home) thread by the shutdown (`shutdown.rs`).
        if self.remote.closed.load(Ordering::Relaxed) {
            return;
        }
        self.home().driver.cancel_raw(op.user_data);
        self.publish_counters();
    }

    /// The error of a raw submission on a context without a ring.
    fn no_ring(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{what}: context `{}` runs on the {} backend, which cannot run raw io_uring \
                 operations (use the typed I/O operations, or Backend::IoUring where \
                 io_uring is available)",
                self.name(),
                self.backend
            ),
        )
    }

    /// On the home thread: refuses a submission once the context shut down.
    fn check_open(&self, what: &str) -> io::Result<()> {
        // Relaxed: set on this (the home) thread by the shutdown (`shutdown.rs`).
        if self.remote.closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "{what}: the AioContext was shut down (dropped, or its IoThread \
                     stopped); nothing will reap the operation"
                ),
            ));
        }
        Ok(())
    }

    /// Pushes a checked entry on the home thread; publishes the counters only when the
    /// push had to enter the kernel (a full SQ). Inlined: the entry is not copied once
    /// more on the way (a 64-byte copy of freshly written fields stalls).
    #[inline(always)]
    fn push_home(&self, sqe: Sqe, cb: Callback) -> u64 {
        let (user_data, entered) = {
            let mut home = self.home();
            let before = home.driver.enters();
            let user_data = home.driver.push_raw(sqe, cb);
            (user_data, home.driver.enters() != before)
        };
        if entered {
            self.publish_counters();
        }
        user_data
    }
}

/// A raw operation submitted with [`AioContext::submit_raw_handler`], for
/// [`AioContext::cancel_raw`]. It names that operation only: once the operation posted
/// its last CQE the handle is stale, and a later operation in the same slot is out of
/// its reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawOp {
    user_data: u64,
}

/// Runs the completion callbacks whose CQEs the drop reaped, now that the kernel is
/// done with their memory (`submit_raw`'s docs). A panic is logged: unwinding out of
/// `drop` would skip the callbacks after it.
pub(crate) fn run_at_drop(name: &str, done: Vec<(Callback, i32, u32)>) {
    for (cb, res, flags) in done {
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb.run(res, flags)));
        if let Err(p) = ran {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("{name}: a completion callback panicked while the context dropped: {msg}");
        }
    }
}

impl Remote {
    /// Hands a raw operation to the home thread; refused once the drop has begun.
    pub(crate) fn queue_raw(&self, sqe: Sqe, cb: RawCallback) -> io::Result<()> {
        {
            let mut queue = lock(&self.raw_queue);
            let Some(queue) = queue.as_mut() else {
                drop(queue);
                drop(cb);
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "submit_raw: the AioContext is being dropped",
                ));
            };
            queue.push((sqe, cb));
        }
        self.request();
        Ok(())
    }
}
