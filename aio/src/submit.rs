//! Raw io_uring operations from users (QEMU: `aio_add_sqe`): [`AioContext::submit_raw`],
//! the hand-over of entries from other threads, and running the callbacks a context's
//! drop reaped. Core layer: which entries are accepted is `backend/raw.rs`'s, the
//! unsafe boundary is `op/sqe.rs`'s `Sqe`.

use std::io;

use io_uring::squeue;

use crate::backend::{Backend, raw};
use crate::completion::{Callback, RawCallback};
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
    /// see `# Errors`.
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
    /// `READ_MULTISHOT`; `SEND_ZC`/`SENDMSG_ZC`; `PROVIDE_BUFFERS`/`REMOVE_BUFFERS`;
    /// `MSG_RING`; `LINK_TIMEOUT`; `URING_CMD`; `POLL_REMOVE` with update flags; an
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
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "submit_raw: context `{}` runs on the {} backend, which cannot run raw \
                     io_uring operations (use the typed I/O operations, or \
                     Backend::IoUring where io_uring is available)",
                    self.name(),
                    self.backend
                ),
            ));
        }
        raw::check(&entry)?;
        // SAFETY: the caller's obligations above are `Sqe`'s invariant; `check` ruled
        // out every entry with more or fewer than one CQE, so the slot (which owns
        // `on_complete`) is freed only after the one CQE.
        let sqe = unsafe { Sqe::new(entry) };
        if self.is_home_thread() {
            // Relaxed: set on this (the home) thread by the shutdown (`shutdown.rs`).
            if self.remote.closed.load(Ordering::Relaxed) {
                drop(on_complete);
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "submit_raw: the AioContext was shut down (dropped, or its IoThread \
                     stopped); nothing will reap the operation",
                ));
            }
            self.home().driver.push_raw(sqe, Callback::Raw(on_complete));
            self.publish_counters();
            Ok(())
        } else {
            self.remote.queue_raw(sqe, on_complete)
        }
    }
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
