//! The stream table of the epoll back end: typed reads and writes on descriptors that
//! can block indefinitely (pipes, sockets, ttys), driven by readiness on the loop. The
//! rules it keeps are `io/stream.rs`'s (numbered there): one FIFO of reads and one of
//! writes per open file on a duplicate of its descriptor ([ST2] and [ST6]), syscalls run
//! only when they cannot block ([ST3]), dropped operations taken out unrun ([ST4]),
//! and finished results never lost ([ST5]). The operations are the op layer's,
//! behind [`StreamIo`]; the table knows nothing else about them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys;

/// How many ready descriptors one look at the table's epoll set takes.
const EVENTS: usize = 64;

/// A typed operation that owns its buffers, with its type erased ([ST2]).
pub(crate) trait StreamIo: Send {
    /// For a read or write that may target a stream: its descriptor and whether it
    /// reads (`OpCode::stream`); `None` runs it on the pool.
    fn target(&self) -> Option<(RawFd, bool)>;
    /// Its blocking syscall, on a pool worker (`OpCode::run_blocking`).
    fn run_blocking(&mut self) -> i32;
    /// Its syscall on `file` at the current position with `flags`
    /// (`OpCode::run_stream`).
    fn run_stream(&mut self, file: RawFd, flags: libc::c_int) -> io::Result<usize>;
    /// Whether its future was dropped ([ST4]).
    fn abandoned(&self) -> bool;
    /// Records the table entry it waits in, which its future's drop prunes; returns
    /// whether the future was dropped already (the caller prunes then; [ST4]).
    fn set_entry(&self, key: u64) -> bool;
    /// Completes it with a CQE-style result (byte count or `-errno`).
    fn finish(self: Box<Self>, res: i32);
}

/// An operation whose syscall returned `res`: running or dropping it delivers `res`
/// ([ST5]).
pub(crate) struct Finished {
    op: Option<Box<dyn StreamIo>>,
    res: i32,
}

impl Finished {
    /// `op`, finished with `res`.
    pub(crate) fn new(op: Box<dyn StreamIo>, res: i32) -> Self {
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

/// What [`StreamTable::add`] did with an operation.
pub(crate) enum Added {
    /// Waits for its descriptor.
    Queued,
    /// Its syscall ran at once.
    Done(Finished),
    /// Its descriptor cannot be polled ([ST1]): run it on the pool.
    NotPollable(Box<dyn StreamIo>),
}

/// The waiting operations of one open file ([ST2]).
struct Queues {
    /// The duplicate the syscalls use and the table's epoll set names.
    file: OwnedFd,
    /// The descriptor number the operations named when they were submitted.
    fd: RawFd,
    reads: VecDeque<Box<dyn StreamIo>>,
    writes: VecDeque<Box<dyn StreamIo>>,
    /// The events registered for `file` (0: not registered).
    events: u32,
}

/// The stream operations of one epoll context (home thread only; [ST2]).
pub(crate) struct StreamTable {
    epfd: OwnedFd,
    /// Entries by key (the key is what the table's epoll set reports, and what a
    /// dropped future prunes by); a key is never reused.
    queues: HashMap<u64, Queues>,
    /// The entry each descriptor number named last ([ST6]).
    by_fd: HashMap<RawFd, u64>,
    next_key: u64,
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
            by_fd: HashMap::new(),
            next_key: 0,
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
    /// and a finished one with its real result ([ST5]). The caller drops them with no
    /// borrow of the home state held: completing wakes tasks.
    pub(crate) fn take_all(&mut self) -> Vec<Finished> {
        let mut all: Vec<Finished> = self.done.drain(..).collect();
        self.by_fd.clear();
        for (_, q) in self.queues.drain() {
            // The table's epoll set is never looked at again; `q.file` closes here.
            for op in q.reads.into_iter().chain(q.writes) {
                all.push(Finished::new(op, -libc::ECANCELED));
            }
        }
        all
    }

    /// Takes `op` ([ST2]), running its syscall at once if nothing waits ahead of it
    /// and it cannot block ([ST3]).
    pub(crate) fn add(&mut self, mut op: Box<dyn StreamIo>) -> Added {
        if op.abandoned() {
            // [ST4]: its future is gone; nothing ran.
            return Added::Done(Finished::new(op, -libc::ECANCELED));
        }
        let (fd, read) = target(op.as_ref());
        let key = match self.entry(fd) {
            Ok(key) => key,
            Err(e) => return Added::Done(Finished::new(op, errno(&e))),
        };
        let q = self.queues.get_mut(&key).expect("entry returned it");
        let file = q.file.as_raw_fd();
        let queue = if read { &mut q.reads } else { &mut q.writes };
        take_abandoned(queue, &mut self.done); // [ST4]
        let now = if queue.is_empty() {
            try_io(file, op.as_mut())
        } else {
            None
        };
        if let Some(res) = now {
            self.forget_if_idle(key);
            return Added::Done(Finished::new(op, res));
        }
        if op.set_entry(key) {
            // [ST4]: dropped while it was being added (on another thread); not run.
            self.forget_if_idle(key);
            return Added::Done(Finished::new(op, -libc::ECANCELED));
        }
        queue.push_back(op);
        match self.rearm(key) {
            Ok(()) => Added::Queued,
            Err(e) => {
                let q = self.queues.get_mut(&key).expect("added above");
                let queue = if read { &mut q.reads } else { &mut q.writes };
                let op = queue.pop_back().expect("pushed above");
                self.forget_if_idle(key);
                if e.raw_os_error() == Some(libc::EPERM) {
                    Added::NotPollable(op)
                } else {
                    Added::Done(Finished::new(op, errno(&e)))
                }
            }
        }
    }

    /// The entry for the file `fd` names now ([ST6]): the one `fd` named last if `fd`
    /// still names the same file, else a new one on a duplicate of `fd`. An entry whose
    /// number now names another file (the user closed it while operations waited, and
    /// the number was reused) keeps serving those operations on its own duplicate, as
    /// io_uring's in-flight operations keep their file, but is no longer found by number.
    fn entry(&mut self, fd: RawFd) -> io::Result<u64> {
        if let Some(&key) = self.by_fd.get(&fd) {
            let q = &self.queues[&key];
            // Where `kcmp` is refused, every operation gets an entry of its own: never
            // the wrong file, at the price of an fd's operations not sharing a queue.
            if sys::same_open_file(fd, q.file.as_raw_fd()) == Some(true) {
                return Ok(key);
            }
            self.by_fd.remove(&fd);
        }
        let file = sys::dup(fd)?;
        let key = self.next_key;
        self.next_key += 1;
        // Not registered yet: `rearm` adds it.
        self.queues.insert(
            key,
            Queues {
                file,
                fd,
                reads: VecDeque::new(),
                writes: VecDeque::new(),
                events: 0,
            },
        );
        self.by_fd.insert(fd, key);
        Ok(key)
    }

    /// Takes the operations whose futures were dropped out of entry `key` (a dropped
    /// future calls this, [ST4]), unrun, and removes the entry (closing its duplicate
    /// of the descriptor) once nothing waits in it. Nothing for an unknown key.
    pub(crate) fn prune(&mut self, key: u64) {
        let Some(q) = self.queues.get_mut(&key) else {
            return;
        };
        take_abandoned(&mut q.reads, &mut self.done);
        take_abandoned(&mut q.writes, &mut self.done);
        self.rearm_or_fail(key);
    }

    /// `rearm`, finishing what waits in the entry with the error if the registration
    /// cannot change.
    fn rearm_or_fail(&mut self, key: u64) {
        if let Err(e) = self.rearm(key) {
            let q = self.remove(key).expect("rearm failed on a known entry");
            for op in q.reads.into_iter().chain(q.writes) {
                self.done.push_back(Finished::new(op, errno(&e)));
            }
        }
    }

    /// Removes entry `key`, and its number's mapping if the number still maps to it,
    /// and deletes its duplicate's interest from the table's epoll set ([SM1]).
    ///
    /// [SM1] The `DEL` must come before the duplicate closes: epoll drops an interest
    /// only when the open file's *last* descriptor closes, and the user's descriptor
    /// keeps it open; a stale interest would refuse the next duplicate, which gets the
    /// same number, with `EEXIST`, and keep reporting readiness for a key nobody has.
    fn remove(&mut self, key: u64) -> Option<Queues> {
        let q = self.queues.remove(&key)?;
        if q.events != 0 {
            // Cannot fail: the duplicate is open and registered (`events != 0`).
            let _ = sys::epoll_ctl(
                self.epfd.as_fd(),
                libc::EPOLL_CTL_DEL,
                q.file.as_raw_fd(),
                0,
                0,
            );
        }
        if self.by_fd.get(&q.fd) == Some(&key) {
            self.by_fd.remove(&q.fd);
        }
        Some(q)
    }

    /// Looks at the table's epoll set without sleeping and runs the syscalls of every
    /// operation whose descriptor is ready, in FIFO order per queue ([ST3]); their
    /// results go to the done queue.
    pub(crate) fn service(&mut self) {
        let n = match sys::epoll_wait(self.epfd.as_fd(), &mut self.buf, Some(Duration::ZERO)) {
            Ok(n) => n,
            Err(e) => panic!("epoll_wait on the stream set failed unexpectedly: {e}"),
        };
        let ready: Vec<(u64, u32)> = self.buf[..n].iter().map(|ev| (ev.u64, ev.events)).collect();
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        for (key, revents) in ready {
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            let file = q.file.as_raw_fd();
            if revents & (libc::EPOLLIN as u32 | err) != 0 {
                run_queue(file, &mut q.reads, &mut self.done);
            }
            if revents & (libc::EPOLLOUT as u32 | err) != 0 {
                run_queue(file, &mut q.writes, &mut self.done);
            }
            take_abandoned(&mut q.reads, &mut self.done); // [ST4]
            take_abandoned(&mut q.writes, &mut self.done);
            self.rearm_or_fail(key);
        }
    }

    /// Registers entry `key`'s duplicate for the events its queues wait for, or
    /// removes the entry when none wait (deleting its interest, [SM1], then closing the
    /// duplicate).
    fn rearm(&mut self, key: u64) -> io::Result<()> {
        let q = self.queues.get_mut(&key).expect("rearm of a known entry");
        let mut want = 0;
        if !q.reads.is_empty() {
            want |= libc::EPOLLIN as u32;
        }
        if !q.writes.is_empty() {
            want |= libc::EPOLLOUT as u32;
        }
        if want == 0 {
            self.remove(key);
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
        sys::epoll_ctl(self.epfd.as_fd(), op, q.file.as_raw_fd(), want, key)?;
        q.events = want;
        Ok(())
    }

    /// Removes entry `key` when nothing waits in it.
    fn forget_if_idle(&mut self, key: u64) {
        if let Some(q) = self.queues.get(&key)
            && q.reads.is_empty()
            && q.writes.is_empty()
        {
            let _ = self.rearm(key);
        }
    }
}

/// Moves the operations of `queue` whose futures were dropped to `done`, unrun
/// ([ST4]). Never dropped here: the table lives in the home state, which is borrowed while it
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

/// Runs the syscalls of `queue`'s operations in order until one would block ([ST3]).
fn run_queue(file: RawFd, queue: &mut VecDeque<Box<dyn StreamIo>>, done: &mut VecDeque<Finished>) {
    while let Some(op) = queue.front_mut() {
        if op.abandoned() {
            // [ST4]: unrun; freed by the loop with no borrow held.
            let op = queue.pop_front().expect("looked at above");
            done.push_back(Finished::new(op, -libc::ECANCELED));
            continue;
        }
        let Some(res) = try_io(file, op.as_mut()) else {
            return;
        };
        let op = queue.pop_front().expect("looked at above");
        done.push_back(Finished::new(op, res));
    }
}

/// The descriptor an operation names and whether it reads.
fn target(op: &dyn StreamIo) -> (RawFd, bool) {
    op.target()
        .expect("only reads and writes on streams reach the table ([ST1])")
}

fn errno(e: &io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// Runs `op`'s syscall on `file` if it cannot block ([ST3]): the CQE-style result, or
/// `None` when it would block.
fn try_io(file: RawFd, op: &mut dyn StreamIo) -> Option<i32> {
    let (_, read) = target(op);
    let res = match op.run_stream(file, libc::RWF_NOWAIT) {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return None,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            // No RWF_NOWAIT for this file (a tty): only when poll says it is ready.
            let events = if read { libc::POLLIN } else { libc::POLLOUT };
            match sys::poll_now(file, events) {
                Ok(false) => return None,
                Ok(true) => op.run_stream(file, 0),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    Some(res.map_or_else(|e| errno(&e), |n| n.min(i32::MAX as usize) as i32))
}
