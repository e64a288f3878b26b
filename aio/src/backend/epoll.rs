//! The epoll back end: the fallback where io_uring cannot be set up (QEMU:
//! util/fdmon-epoll.c for the handlers, util/thread-pool.c for file I/O).
//!
//! Rules:
//! [EP1] fd handlers are level-triggered and one-shot, exactly as on io_uring: each
//!    registration is an `EPOLLONESHOT` interest re-armed (`EPOLL_CTL_MOD`) after every
//!    dispatch, so a descriptor that stays readable keeps firing and a nested `poll`
//!    never runs a handler that is already running.
//! [EP2] The driver keeps a duplicate of every registered descriptor, so the open file
//!    outlives a `close` by the user while it is registered — as an armed `POLL_ADD`
//!    does. The interest is on the user's descriptor number, so the re-arm after the
//!    next event fails (`EBADF` closed, `ENOENT` number reused) and the handler is
//!    removed with a log line: the loop never spins on a dead descriptor and never
//!    loses track of a closed one. Removal deletes the interest and closes the
//!    duplicate, which drops any interest the `DEL` could not reach.
//! [EP3] Event data is `generation << 32 | fd`; an event whose generation does not match
//!    the current registration (a stale one-shot of a replaced handler) is ignored.
//! [EP4] The notify eventfd is registered level-triggered and consumed with `read(2)` when
//!    it is reported; `poll`'s notify protocol is the same as on io_uring, the
//!    `epoll_wait` is just another sleep.
//! [EP5] Events taken by one wait are queued and dispatched one at a time, so a nested
//!    `poll` or a panicking handler loses none of them.
//! [EP6] Raw io_uring operations are unsupported. Typed I/O on regular files and block
//!    devices runs on the worker pool (`pool.rs`), whose completions come back as
//!    bottom halves; on streams it is driven by readiness from the driver's
//!    [`StreamTable`] (`backend/streams.rs`, rules in `io/stream.rs`), whose own epoll set is one level-triggered entry
//!    of this one. Its finished operations are dispatched like completions.
//! [EP7] A descriptor epoll refuses with `EPERM` (a regular file, a directory, `/dev/null`:
//!    no `poll` method, so `poll(2)` calls it always ready) is kept on an "always
//!    ready" list instead (QEMU's fdmon-epoll falls back to ppoll for these): each
//!    wait queues its armed handlers with the events they wait for, as io_uring's
//!    `POLL_ADD` completes at once on such a file, and a blocking wait does not sleep
//!    while one is armed. The one-shot [EP1] holds: queued disarms it, the re-arm
//!    after its dispatch arms it again. [EP2] holds through `fstat`: the re-arm fails
//!    with `EBADF` once the number no longer names the registered file.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::Ready;
use super::streams::StreamTable;
use crate::completion::Callback;
use crate::fd::FdNode;
use crate::sync::Arc;
use crate::sys;

/// The event data of the notify eventfd ([EP4]); no registration uses it ([EP3]).
const NOTIFY: u64 = u64::MAX;

/// The event data of the stream table's epoll set ([EP6]); no registration uses it.
const STREAMS: u64 = u64::MAX - 1;

/// How many events one `epoll_wait` takes.
const EVENTS: usize = 64;

struct Registration {
    node: Arc<FdNode>,
    generation: u32,
    /// Keeps the open file alive while registered ([EP2]).
    _keep: OwnedFd,
    /// On the always-ready list ([EP7]): the file's `(st_dev, st_ino)`, and whether it
    /// is armed.
    always: Option<AlwaysReady>,
}

/// An always-ready registration's state ([EP7]).
struct AlwaysReady {
    file: (u64, u64),
    armed: bool,
}

/// The epoll driver of one context (home thread only).
pub(crate) struct EpollDriver {
    epfd: OwnedFd,
    /// A duplicate of the context's notify eventfd.
    event: OwnedFd,
    fds: HashMap<RawFd, Registration>,
    /// The descriptors of `fds` on the always-ready list ([EP7]).
    always: Vec<RawFd>,
    next_gen: u32,
    buf: Vec<libc::epoll_event>,
    ready: VecDeque<(u64, u32)>,
    /// Typed I/O on streams ([EP6]).
    pub(crate) streams: StreamTable,
    /// `epoll_wait` calls made.
    pub(crate) enters: u64,
    /// `read(2)` calls on the notify eventfd.
    pub(crate) eventfd_reads: u64,
    /// Events returned by `epoll_wait`.
    pub(crate) cqes: u64,
}

fn data(fd: RawFd, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(fd as u32)
}

impl EpollDriver {
    /// A driver whose epoll set holds the notify eventfd `event`.
    pub(crate) fn new(event: RawFd) -> io::Result<Self> {
        let epfd = sys::epoll_create()
            .map_err(|e| io::Error::new(e.kind(), format!("epoll_create1 failed: {e}")))?;
        let event = sys::dup(event)?;
        let raw = event.as_raw_fd();
        sys::epoll_ctl(
            epfd.as_fd(),
            libc::EPOLL_CTL_ADD,
            raw,
            libc::EPOLLIN as u32,
            NOTIFY,
        )?;
        let streams = StreamTable::new()?;
        sys::epoll_ctl(
            epfd.as_fd(),
            libc::EPOLL_CTL_ADD,
            streams.fd(),
            libc::EPOLLIN as u32,
            STREAMS,
        )?;
        Ok(Self {
            epfd,
            event,
            fds: HashMap::new(),
            always: Vec::new(),
            next_gen: 0,
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            ready: VecDeque::new(),
            streams,
            enters: 0,
            eventfd_reads: 0,
            cqes: 0,
        })
    }

    fn arm(&self, op: libc::c_int, fd: RawFd, reg: &Registration) -> io::Result<()> {
        let events = reg.node.events() | libc::EPOLLONESHOT as u32;
        sys::epoll_ctl(self.epfd.as_fd(), op, fd, events, data(fd, reg.generation))
    }

    fn remove(&mut self, fd: RawFd) {
        if let Some(reg) = self.fds.remove(&fd) {
            if reg.always.is_some() {
                self.always.retain(|&f| f != fd);
                return;
            }
            // Fails when `fd` was closed or reused; closing the duplicate (the drop
            // above) removes the interest then ([EP2]).
            let _ = sys::epoll_ctl(self.epfd.as_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
    }

    /// Applies a handler change for `fd`; returns the handler and the error when the
    /// descriptor cannot be registered (closed; a file epoll refuses with `EPERM` goes
    /// on the always-ready list instead, [EP7]).
    pub(crate) fn set_fd(
        &mut self,
        fd: RawFd,
        want: Option<Arc<FdNode>>,
    ) -> Option<(Arc<FdNode>, io::Error)> {
        let same = match (self.fds.get(&fd), &want) {
            (Some(r), Some(node)) => Arc::ptr_eq(&r.node, node),
            (None, None) => true,
            _ => false,
        };
        if same {
            return None;
        }
        self.remove(fd);
        let node = want?;
        if node.is_dead() {
            return None;
        }
        let keep = match sys::dup(fd) {
            Ok(keep) => keep,
            Err(e) => return Some((node, e)),
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let mut reg = Registration {
            node: Arc::clone(&node),
            generation: self.next_gen,
            _keep: keep,
            always: None,
        };
        match self.arm(libc::EPOLL_CTL_ADD, fd, &reg) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // [EP7]: poll(2) calls this file always ready.
                let file = match sys::fstat(fd) {
                    Ok((_, dev, ino)) => (dev, ino),
                    Err(e) => return Some((node, e)),
                };
                reg.always = Some(AlwaysReady { file, armed: true });
                self.always.push(fd);
            }
            Err(e) => return Some((node, e)),
        }
        self.fds.insert(fd, reg);
        None
    }

    /// Re-arms `fd` after its handler ran ([EP1]); the error means the descriptor was
    /// closed or reused ([EP2]).
    pub(crate) fn rearm(&mut self, fd: RawFd, node: &Arc<FdNode>) -> Option<io::Error> {
        let reg = self.fds.get_mut(&fd)?;
        if !Arc::ptr_eq(&reg.node, node) || node.is_dead() {
            return None;
        }
        if let Some(always) = &mut reg.always {
            // [EP7] (and [EP2]): still the registered file under this number?
            return match sys::fstat(fd) {
                Ok((_, dev, ino)) if (dev, ino) == always.file => {
                    always.armed = true;
                    None
                }
                Ok(_) => Some(io::Error::from_raw_os_error(libc::EBADF)),
                Err(e) => Some(e),
            };
        }
        let reg = self.fds.get(&fd)?;
        self.arm(libc::EPOLL_CTL_MOD, fd, reg).err()
    }

    /// Whether an always-ready handler is armed ([EP7]).
    fn always_armed(&self) -> bool {
        self.always.iter().any(|fd| {
            self.fds
                .get(fd)
                .and_then(|r| r.always.as_ref())
                .is_some_and(|a| a.armed)
        })
    }

    /// Queues every armed always-ready handler and disarms it ([EP7]).
    fn queue_always(&mut self) {
        for fd in &self.always {
            let Some(reg) = self.fds.get_mut(fd) else {
                continue;
            };
            if let Some(always) = &mut reg.always
                && always.armed
            {
                always.armed = false;
                self.ready
                    .push_back((data(*fd, reg.generation), reg.node.events()));
            }
        }
    }

    /// Forgets `fd` after its handler was removed for an error.
    pub(crate) fn forget_fd(&mut self, fd: RawFd, node: &Arc<FdNode>) {
        if self
            .fds
            .get(&fd)
            .is_some_and(|r| Arc::ptr_eq(&r.node, node))
        {
            self.remove(fd);
        }
    }

    /// One `epoll_wait` for at most `timeout`; queues what it returns ([EP5]).
    pub(crate) fn wait(&mut self, mut timeout: Option<Duration>) {
        if self.always_armed() || self.streams.has_done() || !self.ready.is_empty() {
            // [EP7], or work already taken ([EP5]): do not sleep on it.
            timeout = Some(Duration::ZERO);
        }
        self.enters += 1;
        match sys::epoll_wait(self.epfd.as_fd(), &mut self.buf, timeout) {
            Ok(n) => {
                self.cqes += n as u64;
                for ev in &self.buf[..n] {
                    self.ready.push_back((ev.u64, ev.events));
                }
            }
            Err(e) => panic!("epoll_wait failed unexpectedly: {e}"),
        }
        self.queue_always();
    }

    /// A non-blocking look for ready handlers; no syscall when none is registered (a
    /// notify to a busy loop stays free).
    pub(crate) fn poll_nowait(&mut self) {
        if self.fds.len() > self.always.len() || self.streams.has_waiting() {
            self.wait(Some(Duration::ZERO));
        } else {
            self.queue_always();
        }
    }

    /// Whether events wait for dispatch (a hint for busy polling).
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty() || self.always_armed() || self.streams.has_done()
    }

    /// The next handler to run, consuming the notify eventfd in place ([EP4]).
    pub(crate) fn next_ready(&mut self, name: &str) -> Option<Ready> {
        loop {
            if let Some(done) = self.streams.next_done() {
                // Running or dropping the callback delivers the result ([EP6]).
                return Some(Ready::Raw(
                    Callback::Raw(Box::new(move |_, _| drop(done))),
                    0,
                    0,
                ));
            }
            let (data, revents) = self.ready.pop_front()?;
            if data == STREAMS {
                self.streams.service();
                continue;
            }
            if data == NOTIFY {
                self.eventfd_reads += 1;
                if let Err(e) = sys::eventfd_read(self.event.as_fd()) {
                    log::warn!("{name}: notify eventfd read failed: {e}");
                }
                continue;
            }
            let fd = data as u32 as RawFd;
            let generation = (data >> 32) as u32;
            match self.fds.get(&fd) {
                Some(r) if r.generation == generation => {
                    return Some(Ready::Fd(Arc::clone(&r.node), revents));
                }
                _ => {} // stale ([EP3])
            }
        }
    }
}
