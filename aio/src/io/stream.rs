//! Typed I/O on the epoll back end: regular files and block devices on the worker pool,
//! everything that can block indefinitely (pipes, sockets, ttys — anything `poll`-able)
//! by readiness on the loop (QEMU: `thread_pool_submit_co` for the former; the latter is
//! how QEMU's char and socket back ends drive non-blocking descriptors from fd
//! handlers). No thread is ever parked on a stream, so no number of pending stream reads
//! can starve file I/O or cancellation.
//!
//! Rules:
//! 1. The route is chosen by `fstat` at submission: `S_ISREG`/`S_ISBLK` (and `fsync`,
//!    and a descriptor `fstat` refuses, whose syscall reports the error) go to the pool;
//!    everything else is a stream. A stream epoll refuses (`EPERM`: no `poll` method)
//!    goes to the pool after all: its syscalls cannot wait for readiness either.
//! 2. A stream operation reaches the home thread as a oneshot bottom half, which hands
//!    it to the context's [`StreamTable`]: one FIFO of reads and one of writes per
//!    descriptor number, on a duplicate of the descriptor (so the open file outlives a
//!    user's `close` while operations wait, as with io_uring), registered in the
//!    table's own epoll set, which sits in the loop's set as one level-triggered entry
//!    (so stream operations never collide with an fd handler on the same descriptor).
//! 3. An operation's syscall runs on the home thread only when it cannot block: first
//!    at once if nothing is queued ahead of it, then each time its descriptor is
//!    reported ready, in FIFO order, until one would block. The syscall is `preadv2`/
//!    `pwritev2` with `RWF_NOWAIT` at the current position (the offset is ignored, as
//!    io_uring does on streams); where a file has no `RWF_NOWAIT` (ttys), a zero-timeout
//!    `poll` must report it ready right before a plain syscall. (A tty write larger than
//!    the room in its output buffer can still block the loop until the terminal drains:
//!    the kernel gives no way to write part of it without `O_NONBLOCK`.)
//! 4. An operation whose future was dropped is taken out, unrun, the next time its
//!    queue is looked at (its descriptor was reported ready, or an operation was added
//!    behind it): it never consumes data that nobody will read. It goes to the done
//!    queue, so that its buffer (a user's value) is dropped by the loop with no borrow
//!    of the home state held.
//! 5. A finished syscall's result is never lost: it waits in the table's done queue (or
//!    in the pool's completion bottom half) inside a [`Finished`], whose drop delivers
//!    the real result if the context goes away before the loop runs it. Only an
//!    operation whose syscall never ran completes with `ECANCELED` (a dropped context
//!    drops its table and its queued bottom halves).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{InFlight, IoKind, Slot};
use crate::backend::Driver;
use crate::context::AioContext;
use crate::pool;
use crate::sync::{Arc, lock};
use crate::sys;

/// How many ready descriptors one look at the table's epoll set takes.
const EVENTS: usize = 64;

/// A typed operation whose buffers it owns, with its type erased (rule 2).
pub(crate) trait StreamIo: Send {
    /// The operation, as pointers into the buffers it owns.
    fn kind(&self) -> IoKind;
    /// Whether its future was dropped (rule 4).
    fn abandoned(&self) -> bool;
    /// Completes it with a CQE-style result (byte count or `-errno`).
    fn finish(self: Box<Self>, res: i32);
}

impl<T: Send + 'static> StreamIo for InFlight<T> {
    fn kind(&self) -> IoKind {
        self.kind
    }

    fn abandoned(&self) -> bool {
        matches!(*lock(&self.slot), Slot::Abandoned)
    }

    fn finish(self: Box<Self>, res: i32) {
        (*self).complete(res);
    }
}

/// An operation whose syscall returned `res`: running or dropping it delivers `res`
/// (rule 5).
pub(crate) struct Finished {
    op: Option<Box<dyn StreamIo>>,
    res: i32,
}

impl Finished {
    fn new(op: Box<dyn StreamIo>, res: i32) -> Self {
        Self { op: Some(op), res }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            op.finish(self.res);
        }
    }
}

/// Submits `op` on the epoll back end (rule 1); `owner` is the context's pool share.
pub(super) fn submit<T: Send + 'static>(
    op: InFlight<T>,
    ctx: &AioContext,
    owner: &Arc<pool::Owner>,
) {
    if goes_to_pool(op.kind) {
        to_pool(Box::new(op), ctx, owner);
        return;
    }
    let weak = ctx.weak();
    let op: Box<dyn StreamIo> = Box::new(op);
    // Rule 2. If the context goes away first, the BH is dropped unrun and `op` with it:
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

/// Whether `kind` runs on the pool (rule 1).
fn goes_to_pool(kind: IoKind) -> bool {
    let fd = match kind {
        IoKind::Fsync { .. } => return true,
        IoKind::Read { fd, .. }
        | IoKind::Write { fd, .. }
        | IoKind::Readv { fd, .. }
        | IoKind::Writev { fd, .. } => fd,
    };
    match sys::fstat(fd) {
        Ok((fmt, ..)) => fmt == libc::S_IFREG || fmt == libc::S_IFBLK,
        Err(_) => true,
    }
}

/// Runs `op` on a pool worker; its completion comes back as a oneshot BH that delivers
/// the real result whether it runs or is dropped with the context (rule 5).
fn to_pool(op: Box<dyn StreamIo>, ctx: &AioContext, owner: &Arc<pool::Owner>) {
    let remote = Arc::clone(&ctx.remote);
    let job = move |_: &pool::Owner| {
        let res = op.kind().run_blocking();
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

/// What [`StreamTable::add`] did with an operation.
pub(crate) enum Added {
    /// Waits for its descriptor.
    Queued,
    /// Its syscall ran at once.
    Done(Finished),
    /// Its descriptor cannot be polled (rule 1): run it on the pool.
    NotPollable(Box<dyn StreamIo>),
}

/// The waiting operations of one descriptor number (rule 2).
struct Queues {
    /// The duplicate the syscalls use and the table's epoll set names.
    file: OwnedFd,
    reads: VecDeque<Box<dyn StreamIo>>,
    writes: VecDeque<Box<dyn StreamIo>>,
    /// The events registered for `file` (0: not registered).
    events: u32,
}

/// The stream operations of one epoll context (home thread only; rule 2).
pub(crate) struct StreamTable {
    epfd: OwnedFd,
    queues: HashMap<RawFd, Queues>,
    done: VecDeque<Finished>,
    buf: Vec<libc::epoll_event>,
}

impl StreamTable {
    /// A table with its own epoll set, to be registered in the loop's set.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            epfd: sys::epoll_create()
                .map_err(|e| io::Error::new(e.kind(), format!("epoll_create1 failed: {e}")))?,
            queues: HashMap::new(),
            done: VecDeque::new(),
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        })
    }

    /// The table's epoll set: readable while a waiting descriptor is ready.
    pub(crate) fn fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }

    /// Whether operations wait for readiness (the loop then looks at its epoll set).
    pub(crate) fn has_waiting(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Whether finished operations wait for the loop to deliver them.
    pub(crate) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// The next finished operation to deliver.
    pub(crate) fn next_done(&mut self) -> Option<Finished> {
        self.done.pop_front()
    }

    /// Takes every operation out of the table, for the context's shutdown: dropping
    /// what it returns completes each one, a waiting one with `ECANCELED` (nothing ran)
    /// and a finished one with its real result (rule 5). The caller drops them with no
    /// borrow of the home state held: completing wakes tasks.
    pub(crate) fn take_all(&mut self) -> Vec<Finished> {
        let mut all: Vec<Finished> = self.done.drain(..).collect();
        for (_, q) in self.queues.drain() {
            // The table's epoll set is never looked at again; `q.file` closes here.
            for op in q.reads.into_iter().chain(q.writes) {
                all.push(Finished::new(op, -libc::ECANCELED));
            }
        }
        all
    }

    /// Takes `op` (rule 2), running its syscall at once if nothing waits ahead of it
    /// and it cannot block (rule 3).
    pub(crate) fn add(&mut self, op: Box<dyn StreamIo>) -> Added {
        if op.abandoned() {
            // Rule 4: its future is gone; nothing ran.
            return Added::Done(Finished::new(op, -libc::ECANCELED));
        }
        let (fd, read) = target(op.kind());
        let q = match self.queues.get_mut(&fd) {
            Some(q) => q,
            None => {
                let file = match sys::dup(fd) {
                    Ok(file) => file,
                    Err(e) => return Added::Done(Finished::new(op, errno(&e))),
                };
                // Not registered yet: `rearm` below adds it.
                self.queues.entry(fd).or_insert(Queues {
                    file,
                    reads: VecDeque::new(),
                    writes: VecDeque::new(),
                    events: 0,
                })
            }
        };
        let file = q.file.as_raw_fd();
        let queue = if read { &mut q.reads } else { &mut q.writes };
        take_abandoned(queue, &mut self.done); // rule 4
        let now = if queue.is_empty() {
            try_io(file, op.kind())
        } else {
            None
        };
        if let Some(res) = now {
            self.forget_if_idle(fd);
            return Added::Done(Finished::new(op, res));
        }
        queue.push_back(op);
        match self.rearm(fd) {
            Ok(()) => Added::Queued,
            Err(e) => {
                let q = self.queues.get_mut(&fd).expect("added above");
                let queue = if read { &mut q.reads } else { &mut q.writes };
                let op = queue.pop_back().expect("pushed above");
                self.forget_if_idle(fd);
                if e.raw_os_error() == Some(libc::EPERM) {
                    Added::NotPollable(op)
                } else {
                    Added::Done(Finished::new(op, errno(&e)))
                }
            }
        }
    }

    /// Looks at the table's epoll set without sleeping and runs the syscalls of every
    /// operation whose descriptor is ready, in FIFO order per queue (rule 3); their
    /// results go to the done queue.
    pub(crate) fn service(&mut self) {
        let n = match sys::epoll_wait(self.epfd.as_fd(), &mut self.buf, Some(Duration::ZERO)) {
            Ok(n) => n,
            Err(e) => panic!("epoll_wait on the stream set failed unexpectedly: {e}"),
        };
        let ready: Vec<(RawFd, u32)> = self.buf[..n]
            .iter()
            .map(|ev| (ev.u64 as RawFd, ev.events))
            .collect();
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        for (fd, revents) in ready {
            let Some(q) = self.queues.get_mut(&fd) else {
                continue;
            };
            let file = q.file.as_raw_fd();
            if revents & (libc::EPOLLIN as u32 | err) != 0 {
                run_queue(file, &mut q.reads, &mut self.done);
            }
            if revents & (libc::EPOLLOUT as u32 | err) != 0 {
                run_queue(file, &mut q.writes, &mut self.done);
            }
            take_abandoned(&mut q.reads, &mut self.done); // rule 4
            take_abandoned(&mut q.writes, &mut self.done);
            if let Err(e) = self.rearm(fd) {
                // The registration cannot change: finish what waits with the error.
                let q = self.queues.remove(&fd).expect("looked up above");
                for op in q.reads.into_iter().chain(q.writes) {
                    self.done.push_back(Finished::new(op, errno(&e)));
                }
            }
        }
    }

    /// Registers `fd`'s duplicate for the events its queues wait for, or removes the
    /// entry when none wait (closing the duplicate drops any interest left, so that
    /// cannot fail).
    fn rearm(&mut self, fd: RawFd) -> io::Result<()> {
        let q = self
            .queues
            .get_mut(&fd)
            .expect("rearm of a known descriptor");
        let mut want = 0;
        if !q.reads.is_empty() {
            want |= libc::EPOLLIN as u32;
        }
        if !q.writes.is_empty() {
            want |= libc::EPOLLOUT as u32;
        }
        if want == 0 {
            self.queues.remove(&fd);
            return Ok(());
        }
        if want == q.events {
            return Ok(());
        }
        let op = if q.events == 0 {
            libc::EPOLL_CTL_ADD
        } else {
            libc::EPOLL_CTL_MOD
        };
        sys::epoll_ctl(self.epfd.as_fd(), op, q.file.as_raw_fd(), want, fd as u64)?;
        q.events = want;
        Ok(())
    }

    /// Removes `fd`'s entry when nothing waits on it.
    fn forget_if_idle(&mut self, fd: RawFd) {
        if let Some(q) = self.queues.get(&fd)
            && q.reads.is_empty()
            && q.writes.is_empty()
        {
            let _ = self.rearm(fd);
        }
    }
}

/// Moves the operations of `queue` whose futures were dropped to `done`, unrun (rule
/// 4). Never dropped here: the table lives in the home state, which is borrowed while it
/// is looked at, and an operation owns the user's buffer, whose `Drop` may call back
/// into the context (`poll`, `block_on`, `submit_raw`); the loop drops what it takes
/// from `done` with no borrow held.
fn take_abandoned(queue: &mut VecDeque<Box<dyn StreamIo>>, done: &mut VecDeque<Finished>) {
    let mut i = 0;
    while i < queue.len() {
        if queue[i].abandoned() {
            let op = queue.remove(i).expect("index in range");
            done.push_back(Finished::new(op, -libc::ECANCELED));
        } else {
            i += 1;
        }
    }
}

/// Runs the syscalls of `queue`'s operations in order until one would block (rule 3).
fn run_queue(file: RawFd, queue: &mut VecDeque<Box<dyn StreamIo>>, done: &mut VecDeque<Finished>) {
    while let Some(op) = queue.front() {
        if op.abandoned() {
            // Rule 4: unrun; freed by the loop with no borrow held.
            let op = queue.pop_front().expect("looked at above");
            done.push_back(Finished::new(op, -libc::ECANCELED));
            continue;
        }
        let Some(res) = try_io(file, op.kind()) else {
            return;
        };
        let op = queue.pop_front().expect("looked at above");
        done.push_back(Finished::new(op, res));
    }
}

/// The descriptor an operation names and whether it reads.
fn target(kind: IoKind) -> (RawFd, bool) {
    match kind {
        IoKind::Read { fd, .. } | IoKind::Readv { fd, .. } => (fd, true),
        IoKind::Write { fd, .. } | IoKind::Writev { fd, .. } => (fd, false),
        IoKind::Fsync { .. } => unreachable!("fsync runs on the pool (rule 1)"),
    }
}

fn errno(e: &io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// Runs `kind`'s syscall on `file` if it cannot block (rule 3): the CQE-style result, or
/// `None` when it would block.
fn try_io(file: RawFd, kind: IoKind) -> Option<i32> {
    let one = |ptr: *const u8, len: u32| libc::iovec {
        iov_base: ptr.cast_mut().cast(),
        iov_len: len as usize,
    };
    let (iov_one, iov_many, read) = match kind {
        IoKind::Read { ptr, len, .. } => (Some(one(ptr, len)), None, true),
        IoKind::Write { ptr, len, .. } => (Some(one(ptr, len)), None, false),
        IoKind::Readv { iov, cnt, .. } => (None, Some((iov, cnt)), true),
        IoKind::Writev { iov, cnt, .. } => (None, Some((iov, cnt)), false),
        IoKind::Fsync { .. } => unreachable!("fsync runs on the pool (rule 1)"),
    };
    let iov: &[libc::iovec] = match (&iov_one, iov_many) {
        (Some(one), _) => std::slice::from_ref(one),
        // SAFETY: `iov` points at `cnt` iovecs owned by the operation's `InFlight`, which
        // the caller holds for the whole call.
        (None, Some((iov, cnt))) => unsafe { std::slice::from_raw_parts(iov, cnt as usize) },
        (None, None) => unreachable!(),
    };
    let call = |flags: libc::c_int| {
        let res = if read {
            // SAFETY: the iovecs point into buffers owned by the operation's `InFlight`,
            // valid for writes, which the caller holds for the whole call.
            unsafe { sys::preadv2(file, iov, -1, flags) }
        } else {
            // SAFETY: as above, valid for reads.
            unsafe { sys::pwritev2(file, iov, -1, flags) }
        };
        res.map(|n| n.min(i32::MAX as usize) as i32)
    };
    let res = match call(libc::RWF_NOWAIT) {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return None,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            // No RWF_NOWAIT for this file (a tty): only when poll says it is ready.
            let events = if read { libc::POLLIN } else { libc::POLLOUT };
            match sys::poll_now(file, events) {
                Ok(false) => return None,
                Ok(true) => call(0),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    Some(res.unwrap_or_else(|e| errno(&e)))
}
