//! Typed I/O on the epoll back end: regular files and block devices on the worker pool,
//! everything that can block indefinitely (pipes, sockets, ttys — anything `poll`-able)
//! by readiness on the loop (QEMU: `thread_pool_submit_co` for the former; the latter is
//! how QEMU's char and socket back ends drive non-blocking descriptors from fd
//! handlers). No thread is ever parked on a stream, so no number of pending stream reads
//! can starve file I/O or cancellation.
//!
//! Rules:
//! [ST1] The route is chosen at submission: an operation that is not a read or write
//!    (`OpCode::stream` is `None`: `fsync`, `openat`, `statx`, …) goes to the pool; a
//!    read or write goes there too when `fstat` says `S_ISREG`/`S_ISBLK` (or refuses
//!    the descriptor, whose syscall then reports the error); everything else is a
//!    stream. A stream epoll refuses (`EPERM`: no `poll` method)
//!    goes to the pool after all: its syscalls cannot wait for readiness either.
//! [ST2] A stream operation reaches the home thread as a oneshot bottom half, which hands
//!    it to the context's stream table (`backend/streams.rs`): one FIFO of reads and one of writes per
//!    open file ([ST6]), on a duplicate of the descriptor (so the open file outlives a
//!    user's `close` while operations wait, as with io_uring), registered in the
//!    table's own epoll set, which sits in the loop's set as one level-triggered entry
//!    (so stream operations never collide with an fd handler on the same descriptor).
//! [ST3] An operation's syscall runs on the home thread only when it cannot block: first
//!    at once if nothing is queued ahead of it, then each time its descriptor is
//!    reported ready, in FIFO order, until one would block. The syscall is `preadv2`/
//!    `pwritev2` with `RWF_NOWAIT` at the current position (the offset is ignored, as
//!    io_uring does on streams); where a file has no `RWF_NOWAIT` (ttys), a zero-timeout
//!    `poll` must report it ready right before a plain syscall. (A tty write larger than
//!    the room in its output buffer can still block the loop until the terminal drains:
//!    the kernel gives no way to write part of it without `O_NONBLOCK`.)
//! [ST4] An operation whose future was dropped is taken out, unrun, when the future is
//!    dropped ([IO6] (`io.rs`): the drop names the table entry it waits in; on another
//!    thread, at the loop's next poll), and in any case the next time its queue is
//!    looked at: it never consumes data that nobody will read, and an entry nothing
//!    waits in is removed at once: its interest is deleted from the table's epoll set,
//!    then its duplicate closed (so a socket the user closed is closed, and the next
//!    duplicate, which may get the same number, registers afresh). A worker-pool job whose future was dropped before it started is
//!    not run. A dropped operation goes to the done queue, so that its buffer (a user's
//!    value) is dropped by the loop with no borrow of the home state held.
//! [ST5] A finished syscall's result is never lost: it waits in the table's done queue (or
//!    in the pool's completion bottom half) inside a [`Finished`], whose drop delivers
//!    the real result if the context goes away before the loop runs it. Only an
//!    operation whose syscall never ran completes with `ECANCELED` (a dropped context
//!    drops its table and its queued bottom halves).
//! [ST6] An entry belongs to the file it was opened for, not to a descriptor number: a
//!    number finds its entry only while it names the same open file description as the
//!    entry's duplicate (`kcmp(KCMP_FILE)`; `(st_dev, st_ino)` would not do: every
//!    eventfd, timerfd and pty master shares its pair with others). Once the user closed
//!    the number and it was reused for another file, operations on it get a new entry
//!    (on a duplicate of the new file), while those already waiting keep their own entry
//!    and file, as io_uring's in-flight operations keep theirs. Entries are keyed by a
//!    never-reused number, which is also what the table's epoll set reports.

use crate::backend::Driver;
use crate::backend::streams::{Added, Finished, StreamIo};
use crate::context::AioContext;
use crate::pool;
use crate::sync::Arc;
use crate::sys;

/// Submits `op` on the epoll back end ([ST1]); `owner` is the context's pool share.
pub(super) fn submit(op: Box<dyn StreamIo>, ctx: &AioContext, owner: &Arc<pool::Owner>) {
    if goes_to_pool(op.as_ref()) {
        to_pool(op, ctx, owner);
        return;
    }
    let weak = ctx.weak();
    // [ST2]. If the context goes away first, the BH is dropped unrun and `op` with it:
    // nothing ran, so it completes with ECANCELED.
    ctx.schedule_oneshot(move || {
        let Some(ctx) = weak.upgrade() else { return };
        let added = match &mut ctx.home().driver {
            Driver::Epoll(d) => d.streams.add(op),
            Driver::Uring(_) => unreachable!("stream I/O is submitted on epoll contexts only"),
        };
        match added {
            Added::Queued => {}
            // Completed at once: deliver with no borrow of the home state held.
            Added::Done(done) => drop(done),
            Added::NotPollable(op) => {
                if let Some(owner) = &ctx.remote.pool {
                    to_pool(op, &ctx, owner);
                }
            }
        }
    });
}

/// Whether `op` runs on the pool ([ST1]).
fn goes_to_pool(op: &dyn StreamIo) -> bool {
    let Some((fd, _)) = op.target() else {
        return true;
    };
    match sys::fstat(fd) {
        Ok((fmt, ..)) => fmt == libc::S_IFREG || fmt == libc::S_IFBLK,
        Err(_) => true,
    }
}

/// Runs `op` on a pool worker; its completion comes back as a oneshot BH that delivers
/// the real result whether it runs or is dropped with the context ([ST5]).
pub(super) fn to_pool(mut op: Box<dyn StreamIo>, ctx: &AioContext, owner: &Arc<pool::Owner>) {
    let remote = Arc::clone(&ctx.remote);
    let job = move |_: &pool::Owner| {
        // [ST4]: a job whose future was dropped before it started is not run.
        let res = if op.abandoned() {
            -libc::ECANCELED
        } else {
            op.run_blocking()
        };
        let done = Finished::new(op, res);
        remote.schedule_oneshot(Box::new(move || drop(done)));
    };
    if let Err(e) = pool::submit(owner, Box::new(job)) {
        log::error!(
            "{}: {e}; the operation completes with ECANCELED",
            ctx.name()
        );
    }
}
