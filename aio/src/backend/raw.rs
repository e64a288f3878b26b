//! Raw io_uring entries from users (QEMU: `aio_add_sqe`): what the loop can track, and
//! the one unsafe boundary through which an entry reaches the ring.
//!
//! Rules:
//! 1. The loop can only keep the promise "a CQE reaches the operation that submitted it,
//!    and what an operation owns is freed only after its last CQE" for entries that post
//!    exactly one CQE, that do not hand the kernel memory beyond that CQE, and that
//!    cannot act on the loop's own operations by `user_data`. [`check`] refuses every
//!    other entry at submit with an `InvalidInput` error that names the reason.
//! 2. Refused outright: `IOSQE_IO_LINK`/`IO_HARDLINK` (the loop pushes its own entries
//!    between the user's, so a chain would swallow them), `IOSQE_IO_DRAIN` (the drain
//!    waits for the loop's always-armed eventfd read too, and holds back every entry
//!    after it, the read's re-arm included: wake-ups would be lost), `IOSQE_CQE_SKIP_SUCCESS` (no
//!    CQE: the operation would never leave the table), `IOSQE_BUFFER_SELECT`, unknown
//!    SQE flags; multishot forms (`POLL_ADD` with `IORING_POLL_ADD_MULTI`, multishot
//!    `ACCEPT`/`RECV`/`RECVMSG`/`TIMEOUT`, `READ_MULTISHOT`); `SEND_ZC`/`SENDMSG_ZC` (a
//!    second, notification CQE); `PROVIDE_BUFFERS` (memory owned by the kernel after
//!    the CQE); `MSG_RING` (posts a CQE with a `user_data` of its choice); `URING_CMD`,
//!    `LINK_TIMEOUT` and opcodes this crate does not know; `POLL_REMOVE` with update
//!    flags; a cancel or removal (`ASYNC_CANCEL`, `POLL_REMOVE`, `TIMEOUT_REMOVE`) whose
//!    target `user_data` lies in the loop's reserved tag space.
//! 3. A cancel that reaches the loop's own operations by another route (any, by fd) is
//!    harmless: an internal operation that completes with `ECANCELED` while the context
//!    lives is armed again (`uring.rs`).
//! 4. [`Sqe`] is the only way an entry reaches the ring. Building one is `unsafe`: the
//!    builder promises that what the entry names outlives the operation. For users that
//!    promise is `submit_raw`'s `# Safety`; the rest of the loop passes `Sqe`s around
//!    with safe calls.

use std::io;

use io_uring::squeue;

use super::Backend;
use super::ops::INTERNAL_TAG;
use crate::context::{AioContext, RawCallback, Remote};
use crate::sync::atomic::Ordering;
use crate::sync::lock;

/// An entry whose memory obligations are met (rule 4): every buffer, descriptor array
/// or other memory it names stays valid until the operation's CQE was reaped and the
/// owner that the loop keeps for it (its table slot) was freed.
pub(crate) struct Sqe(squeue::Entry);

impl Sqe {
    /// Wraps `entry`.
    ///
    /// # Safety
    /// Everything `entry` names stays valid (and memory the kernel writes is not
    /// otherwise accessed) until the operation's table slot is freed, which the loop
    /// does only after the operation's final CQE was reaped (or never, when it leaks).
    pub(crate) unsafe fn new(entry: squeue::Entry) -> Self {
        Self(entry)
    }

    /// The entry, with `user_data` set.
    pub(crate) fn with_user_data(&self, user_data: u64) -> squeue::Entry {
        self.0.clone().user_data(user_data)
    }
}

// Kernel ABI: `struct io_uring_sqe` (include/uapi/linux/io_uring.h).
const OFF_FLAGS: usize = 1;
const OFF_IOPRIO: usize = 2;
const OFF_ADDR: usize = 16;
const OFF_LEN: usize = 24;
const OFF_OP_FLAGS: usize = 28;
static_assertions::assert_eq_size!(squeue::Entry, [u8; 64]);

/// The fields [`check`] reads.
struct View {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    addr: u64,
    len: u32,
    op_flags: u32,
}

fn view(e: &squeue::Entry) -> View {
    let p = (e as *const squeue::Entry).cast::<u8>();
    // The entry is the kernel's 64-byte `io_uring_sqe` (size asserted above), built by
    // the io_uring crate from a zeroed SQE, so all 64 bytes are initialized.
    // SAFETY: `squeue::Entry` is `repr(C)` around that SQE; the offsets are the kernel
    // ABI, and the reads are unaligned and stay inside the entry.
    unsafe {
        View {
            opcode: p.read(),
            flags: p.add(OFF_FLAGS).read(),
            ioprio: p.add(OFF_IOPRIO).cast::<u16>().read_unaligned(),
            addr: p.add(OFF_ADDR).cast::<u64>().read_unaligned(),
            len: p.add(OFF_LEN).cast::<u32>().read_unaligned(),
            op_flags: p.add(OFF_OP_FLAGS).cast::<u32>().read_unaligned(),
        }
    }
}

// SQE flags (IOSQE_*).
const FIXED_FILE: u8 = 1 << 0;
const IO_DRAIN: u8 = 1 << 1;
const IO_LINK: u8 = 1 << 2;
const IO_HARDLINK: u8 = 1 << 3;
const ASYNC: u8 = 1 << 4;
const BUFFER_SELECT: u8 = 1 << 5;
const CQE_SKIP_SUCCESS: u8 = 1 << 6;

// Opcodes (enum io_uring_op).
const POLL_ADD: u8 = 6;
const POLL_REMOVE: u8 = 7;
const RECVMSG: u8 = 10;
const TIMEOUT: u8 = 11;
const TIMEOUT_REMOVE: u8 = 12;
const ACCEPT: u8 = 13;
const ASYNC_CANCEL: u8 = 14;
const LINK_TIMEOUT: u8 = 15;
const RECV: u8 = 27;
const PROVIDE_BUFFERS: u8 = 31;
const REMOVE_BUFFERS: u8 = 32;
const MSG_RING: u8 = 40;
const URING_CMD: u8 = 46;
const SEND_ZC: u8 = 47;
const SENDMSG_ZC: u8 = 48;
const READ_MULTISHOT: u8 = 49;

/// Opcodes that post exactly one CQE and hold no memory past it, whatever their
/// flags: NOP..FSYNC, READ/WRITE_FIXED, SYNC_FILE_RANGE, SENDMSG, CONNECT..SPLICE but
/// RECV, TEE..LINKAT, the xattr ops, SOCKET, WAITID, the futex ops, FTRUNCATE, BIND,
/// LISTEN.
fn single_shot(op: u8) -> bool {
    matches!(op, 0..=5 | 8 | 9 | 16..=26 | 28..=30 | 33..=39 | 41..=45 | 50..=53 | 55..=57)
}

fn refuse(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "submit_raw: {what}; the loop tracks only entries that post exactly one CQE \
             and hold no memory past it, and never act on the loop's own operations"
        ),
    )
}

/// Refuses an entry the loop cannot track (rules 1 and 2).
pub(crate) fn check(e: &squeue::Entry) -> io::Result<()> {
    let v = view(e);
    let bad_flags = v.flags & !(FIXED_FILE | ASYNC);
    if bad_flags != 0 {
        let name = if bad_flags & CQE_SKIP_SUCCESS != 0 {
            "IOSQE_CQE_SKIP_SUCCESS (no CQE on success: the operation would never complete)"
        } else if bad_flags & (IO_LINK | IO_HARDLINK) != 0 {
            "IOSQE_IO_LINK/IO_HARDLINK (the loop queues its own entries between yours)"
        } else if bad_flags & IO_DRAIN != 0 {
            "IOSQE_IO_DRAIN (a drained entry waits for every entry before it, among them the \
             loop's own eventfd read, which stays armed until the next wake-up; it and every \
             entry after it would stall, cross-thread wake-ups included)"
        } else if bad_flags & BUFFER_SELECT != 0 {
            "IOSQE_BUFFER_SELECT (provided buffers are not supported)"
        } else {
            "an unknown SQE flag"
        };
        return Err(refuse(format_args!(
            "SQE flags {:#x} include {name}",
            v.flags
        )));
    }
    let targets_internal = v.addr & INTERNAL_TAG != 0;
    let multishot = |name: &str| {
        Err(refuse(format_args!(
            "{name} is multishot (one CQE per event)"
        )))
    };
    match v.opcode {
        op if single_shot(op) => Ok(()),
        POLL_ADD if v.len & 1 != 0 => multishot("POLL_ADD with IORING_POLL_ADD_MULTI"),
        POLL_ADD => Ok(()),
        RECV | RECVMSG if v.ioprio & (1 << 1) != 0 => multishot("a RECV with RECV_MULTISHOT"),
        RECV | RECVMSG => Ok(()),
        ACCEPT if v.ioprio & 1 != 0 => multishot("an ACCEPT with ACCEPT_MULTISHOT"),
        ACCEPT => Ok(()),
        TIMEOUT if v.op_flags & (1 << 6) != 0 => multishot("a TIMEOUT with TIMEOUT_MULTISHOT"),
        TIMEOUT => Ok(()),
        READ_MULTISHOT => multishot("READ_MULTISHOT"),
        POLL_REMOVE if v.len != 0 => Err(refuse(
            "POLL_REMOVE with update flags (it may change a poll's user_data or make it multishot)",
        )),
        POLL_REMOVE | TIMEOUT_REMOVE | ASYNC_CANCEL if targets_internal => {
            Err(refuse(format_args!(
                "opcode {} targets user_data {:#x}, in the loop's reserved tag space",
                v.opcode, v.addr
            )))
        }
        POLL_REMOVE | TIMEOUT_REMOVE | ASYNC_CANCEL => Ok(()),
        SEND_ZC | SENDMSG_ZC => Err(refuse("SEND_ZC/SENDMSG_ZC post a second, notification CQE")),
        PROVIDE_BUFFERS | REMOVE_BUFFERS => Err(refuse(
            "provided buffers are owned by the kernel past the CQE",
        )),
        MSG_RING => Err(refuse(
            "MSG_RING posts a CQE with a user_data of its choice",
        )),
        LINK_TIMEOUT => Err(refuse("LINK_TIMEOUT needs a linked chain")),
        URING_CMD => Err(refuse("URING_CMD's CQEs are defined by the driver")),
        op => Err(refuse(format_args!(
            "opcode {op} is not known to this crate"
        ))),
    }
}

impl AioContext {
    /// Queues a raw io_uring operation; `on_complete` runs with the CQE's `res` and
    /// `flags` (QEMU: `aio_add_sqe`). Callable from any thread: from another thread the
    /// entry is handed over and the loop notified. The entry's `user_data` is replaced
    /// by the loop's own. A full submission queue is submitted and the push retried;
    /// completions that overflow the completion queue are kept by the kernel and flushed
    /// by the loop. The safe typed operations ([`read_at`](Self::read_at) and friends)
    /// are built on this.
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
        check(&entry)?;
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
            self.home().driver.push_raw(sqe, on_complete);
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
pub(crate) fn run_at_drop(name: &str, done: Vec<(RawCallback, i32, u32)>) {
    for (cb, res, flags) in done {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb(res, flags)));
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
