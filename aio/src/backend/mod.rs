//! Kernel back ends and the choice between them: io_uring (`uring.rs`, the
//! default) and epoll (`epoll.rs`, the fallback where io_uring is denied or missing).
//!
//! The loop in `poll.rs` talks to a [`Driver`]: apply an fd-handler change, sleep or
//! look without sleeping, then take [`Ready`] items one at a time and run them with no
//! borrow held (so callbacks may nest `poll`). Bottom halves, timers, tasks and the
//! notify protocol sit above the driver and are the same on both back ends. The back
//! ends know operations only through the op layer's `OpCode` (`op/`) and the leaf
//! types `Sqe` and `Callback`: they import nothing from the core or the user-facing
//! modules.

pub(crate) mod epoll;
mod ops;
pub(crate) mod raw;
pub(crate) mod streams;
pub(crate) mod uring;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use self::epoll::EpollDriver;
use self::uring::setup::RingSetup;
use self::uring::{Ring, UringDriver};
use crate::completion::Callback;
use crate::fd::FdNode;
use crate::op::Sqe;
use crate::sync::Arc;

/// The environment variable that picks the back end when the builder says
/// [`Backend::Auto`]: `io_uring` or `epoll`.
pub const BACKEND_ENV: &str = "AIOCTX_BACKEND";

/// Which kernel interface a context runs on. [`AioContext::backend`] says which one
/// runs (never `Auto`).
///
/// [`AioContext::backend`]: crate::AioContext::backend
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring, falling back to epoll when `io_uring_setup` fails with `EPERM`,
    /// `ENOSYS` or `EINVAL` (seccomp, `kernel.io_uring_disabled`, an old kernel), with
    /// one log line that says why. `AIOCTX_BACKEND=io_uring|epoll` overrides it.
    #[default]
    Auto,
    /// io_uring only: a context that cannot set up its ring is an error.
    IoUring,
    /// epoll with a worker pool for file I/O; raw ring operations are unsupported.
    Epoll,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        })
    }
}

impl FromStr for Backend {
    type Err = io::Error;

    /// Parses `auto`, `io_uring` (or `io-uring`, `uring`) or `epoll`.
    fn from_str(s: &str) -> io::Result<Self> {
        match s.trim() {
            "auto" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Backend::IoUring),
            "epoll" => Ok(Backend::Epoll),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{other}` is not an aioctx backend: use io_uring, epoll or auto"),
            )),
        }
    }
}

/// One thing the loop must run, taken from the driver while the home state is
/// borrowed and run after the borrow ends.
pub(crate) enum Ready {
    /// A raw operation completed: `(callback, res, flags)`.
    Raw(Callback, i32, u32),
    /// A handler's descriptor is ready with these `poll(2)` events; re-arm after.
    Fd(Arc<FdNode>, u32),
    /// A handler's descriptor is bad (closed, reused): remove the handler.
    FdFailed(Arc<FdNode>, io::Error),
}

/// The running back end of one context (home thread only). One per context, built
/// once and never moved afterwards, so the size difference of the variants is moot.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver {
    Uring(UringDriver),
    Epoll(EpollDriver),
}

/// Why `Auto` fell back, said once per process.
static FALLBACK_LOGGED: Once = Once::new();

/// Opens the back end `requested` asks for (see [`Backend`]), with `event` as the
/// notify eventfd. Returns the driver and, when `Auto` fell back to epoll, why.
pub(crate) fn open(
    requested: Backend,
    setup: &RingSetup,
    event: RawFd,
) -> io::Result<(Driver, Option<String>)> {
    setup.check()?;
    let (choice, from_env) = match requested {
        Backend::Auto => match std::env::var(BACKEND_ENV) {
            Ok(v) => (
                v.parse::<Backend>().map_err(|e| {
                    io::Error::new(e.kind(), format!("{BACKEND_ENV}={v:?} is invalid: {e}"))
                })?,
                true,
            ),
            Err(std::env::VarError::NotPresent) => (Backend::Auto, false),
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{BACKEND_ENV} is invalid: {e}"),
                ));
            }
        },
        other => (other, false),
    };
    match choice {
        Backend::Epoll => Ok((Driver::Epoll(EpollDriver::new(event)?), None)),
        Backend::IoUring => match Ring::with_setup(setup) {
            Ok(ring) => Ok((Driver::Uring(UringDriver::new(ring, event)), None)),
            Err(e) if uring::setup::is_refusal(&e) => Err(e), // the caller's flags
            Err(e) => {
                let how = if from_env {
                    format!(
                        "{BACKEND_ENV}=io_uring forces io_uring; unset it or set {BACKEND_ENV}=epoll"
                    )
                } else {
                    "Backend::IoUring forces io_uring; use Backend::Auto or Backend::Epoll"
                        .to_owned()
                };
                Err(io::Error::new(
                    e.kind(),
                    format!("{e}; {how} to run on the epoll fallback"),
                ))
            }
        },
        Backend::Auto => match Ring::with_setup(setup) {
            Ok(ring) => Ok((Driver::Uring(UringDriver::new(ring, event)), None)),
            Err(e) if falls_back(&e) => {
                let reason = e.to_string();
                FALLBACK_LOGGED.call_once(|| log_fallback(&reason));
                Ok((Driver::Epoll(EpollDriver::new(event)?), Some(reason)))
            }
            Err(e) => Err(e),
        },
    }
}

/// Whether an io_uring setup error means "not here" rather than "not now": `EPERM`
/// (denied), `ENOSYS` or missing features (`Unsupported`), `EINVAL` (a kernel that
/// rejects our setup). `Ring::new` keeps the errno's kind in its message-carrying
/// error, and has already ruled out an out-of-range size (also `InvalidInput`).
fn falls_back(e: &io::Error) -> bool {
    !uring::setup::is_refusal(e) // flags the caller asked for: no fallback
        && matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported | io::ErrorKind::InvalidInput
    )
}

fn log_fallback(reason: &str) {
    let line = format!(
        "aioctx: io_uring is unavailable ({reason}); using the epoll backend. Set \
         {BACKEND_ENV}=epoll to choose epoll without trying io_uring, or {BACKEND_ENV}=io_uring \
         to make this an error"
    );
    log::warn!("{line}");
    if log::max_level() < log::LevelFilter::Warn {
        // No logger takes warnings: say it once on stderr instead.
        eprintln!("{line}");
    }
}

impl Driver {
    /// Which back end this is.
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::IoUring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// Kernel waits/enters made so far.
    pub(crate) fn enters(&self) -> u64 {
        match self {
            Driver::Uring(d) => d.ring().enters,
            Driver::Epoll(d) => d.enters,
        }
    }

    /// `read(2)` calls on the notify eventfd so far (epoll only).
    pub(crate) fn eventfd_reads(&self) -> u64 {
        match self {
            Driver::Uring(_) => 0,
            Driver::Epoll(d) => d.eventfd_reads,
        }
    }

    /// The ring's SQ and CQ sizes; `(0, 0)` on epoll.
    pub(crate) fn ring_entries(&self) -> (u32, u32) {
        match self {
            Driver::Uring(d) => (d.ring().sq_entries(), d.ring().cq_entries()),
            Driver::Epoll(_) => (0, 0),
        }
    }

    /// Applies a handler change; returns the handler and the error when the descriptor
    /// was refused at once (epoll; io_uring reports it as a completion).
    pub(crate) fn set_fd(
        &mut self,
        fd: RawFd,
        want: Option<Arc<FdNode>>,
    ) -> Option<(Arc<FdNode>, io::Error)> {
        match self {
            Driver::Uring(d) => {
                d.set_fd(fd, want);
                None
            }
            Driver::Epoll(d) => d.set_fd(fd, want),
        }
    }

    /// Re-arms `fd` after its handler ran; an error means the descriptor is bad.
    pub(crate) fn rearm(&mut self, fd: RawFd, node: &Arc<FdNode>) -> Option<io::Error> {
        match self {
            Driver::Uring(d) => {
                d.arm_poll(fd);
                None
            }
            Driver::Epoll(d) => d.rearm(fd, node),
        }
    }

    /// Forgets `fd` after its handler was removed for an error.
    pub(crate) fn forget_fd(&mut self, fd: RawFd, node: &Arc<FdNode>) {
        match self {
            Driver::Uring(d) => d.forget_fd(fd, node),
            Driver::Epoll(d) => d.forget_fd(fd, node),
        }
    }

    /// Queues a raw io_uring operation; returns its `user_data` (never in the loop's
    /// reserved tag space).
    #[inline]
    pub(crate) fn push_raw(&mut self, sqe: Sqe, cb: impl Into<Callback>) -> u64 {
        match self {
            Driver::Uring(d) => d.push_raw(sqe, cb.into()),
            Driver::Epoll(_) => unreachable!("submit_raw refuses raw operations on epoll"),
        }
    }

    /// Makes room for `n` entries in the submission queue (submitting what is queued
    /// if needed), so that the next `n` pushes go in back to back (a linked chain);
    /// false when `n` exceeds the queue (or on epoll, which has none).
    pub(crate) fn reserve(&mut self, n: usize) -> bool {
        match self {
            Driver::Uring(d) => d.ring_mut().reserve(n),
            Driver::Epoll(_) => false,
        }
    }

    /// Whether the ring runs `opcode` (the kernel's probe, taken once per ring); always
    /// true on epoll, whose operations run their blocking lowering anyway.
    pub(crate) fn supports(&mut self, opcode: u8) -> bool {
        match self {
            Driver::Uring(d) => d.supports(opcode),
            Driver::Epoll(_) => true,
        }
    }

    /// Cancels what a dropped I/O future left behind, named by `id` ([IO6] (`io.rs`)):
    /// io_uring: the user operation `id` (its `user_data`) if it is still in flight,
    /// submitted at once; epoll: the dropped operations waiting in stream table entry
    /// `id`, whose duplicate of the descriptor is closed once nothing waits on it.
    pub(crate) fn cancel(&mut self, id: u64) {
        match self {
            Driver::Uring(d) => d.cancel_user(id),
            Driver::Epoll(d) => d.streams.prune(id),
        }
    }

    /// Cancels the raw operation `user_data` names if it is still in flight (a user's
    /// `cancel_raw`); nothing on epoll, which runs no raw operations.
    pub(crate) fn cancel_raw(&mut self, user_data: u64) {
        match self {
            Driver::Uring(d) => d.cancel_user(user_data),
            Driver::Epoll(_) => {}
        }
    }

    /// Sleeps for at most `timeout` (`None`: no limit), submitting queued operations.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) {
        match self {
            Driver::Uring(d) => d.ring_mut().wait(timeout),
            Driver::Epoll(d) => d.wait(timeout),
        }
    }

    /// Submits queued operations / looks for ready descriptors without sleeping.
    pub(crate) fn poll_nowait(&mut self) {
        match self {
            Driver::Uring(d) => d.ring_mut().look(), // setup rule [S2]
            Driver::Epoll(d) => d.poll_nowait(),
        }
    }

    /// Whether something taken from the kernel waits for dispatch (io_uring: queued
    /// completions, or CQEs on the ring; epoll: queued events). A blocking poll must
    /// not sleep then: the kernel does not know about what the loop already took.
    pub(crate) fn has_ready(&mut self) -> bool {
        match self {
            Driver::Uring(d) => d.has_ready(),
            Driver::Epoll(d) => d.has_ready(),
        }
    }

    /// Collects what the kernel reported for dispatch.
    pub(crate) fn collect(&mut self, name: &str) {
        match self {
            Driver::Uring(d) => d.collect(name),
            Driver::Epoll(_) => {} // `wait` queued the events already
        }
    }

    /// Completions (io_uring) or events (epoll, including the notify eventfd's) taken
    /// from the kernel so far.
    pub(crate) fn cqes(&self) -> u64 {
        match self {
            Driver::Uring(d) => d.cqes,
            Driver::Epoll(d) => d.cqes,
        }
    }

    /// The next collected item to run.
    pub(crate) fn next_ready(&mut self, name: &str) -> Option<Ready> {
        match self {
            Driver::Uring(d) => d.next_ready(),
            Driver::Epoll(d) => d.next_ready(name),
        }
    }

    /// Shuts the back end down when its context shuts down (see `UringDriver::shutdown`;
    /// safe to repeat); returns the user callbacks whose CQEs were reaped, to run once
    /// the ring is quiet, and on epoll the stream operations still waiting, which
    /// complete with `ECANCELED` when run.
    pub(crate) fn shutdown(&mut self, name: &str, limit: Duration) -> Vec<(Callback, i32, u32)> {
        match self {
            Driver::Uring(d) => d.shutdown(name, limit),
            // Stream operations waiting for readiness would wait forever: nobody polls
            // a context that shuts down. Completed when the caller runs these.
            Driver::Epoll(d) => d
                .streams
                .take_all()
                .into_iter()
                .map(|done| (Callback::Raw(Box::new(move |_, _| drop(done))), 0, 0))
                .collect(),
        }
    }
}
