//! Ring setup: the queue sizes and `IORING_SETUP_*` flags an [`AioContextBuilder`] asks
//! for, checked against what this loop needs, lowered to `io_uring_setup`, and the
//! kernel's answer.
//!
//! The loop keeps a `READ` of its notify eventfd and one `POLL_ADD` per fd handler armed
//! on its ring, sleeps in `io_uring_enter`, and submits only from its home thread (other
//! threads hand work over through `Remote` and a bottom half; `submit_raw` from another
//! thread queues the entry for the home thread). Rules:
//! - [S1] A flag the caller asked for is required: if the kernel refuses the setup, the
//!   build fails with a [`RingSetupError`] that names the flags asked for and carries the
//!   kernel's errno (and `Auto` does not fall back to epoll for it: the caller asked).
//!   A flag that is on by default ([`RingFeatures::DEFAULT`]) is a wish: if the kernel
//!   refuses it (`EINVAL` on an older kernel), the ring is set up without the defaults.
//!   [`AioContext::ring_features`] says what is on.
//! - [S2] `DEFER_TASKRUN` and `COOP_TASKRUN` post completions only when the home thread
//!   enters the kernel (`DEFER_TASKRUN`: only an enter with `GETEVENTS`). A non-blocking
//!   poll therefore looks at `IORING_SQ_TASKRUN` (`TASKRUN_FLAG`, implied by both unless
//!   turned off) and enters with `GETEVENTS` when it is set; without `TASKRUN_FLAG` every
//!   non-blocking poll enters. Otherwise a completion would wait for the next sleep: a
//!   lost wake-up for a loop that polls without sleeping.
//! - [S3] `SINGLE_ISSUER` rings are created disabled (`IORING_SETUP_R_DISABLED`) and
//!   enabled by the first `io_uring_enter`, which the kernel then binds to that thread:
//!   the home thread, since only it enters (`UringDriver` is home-only), or the thread
//!   that drops a context nobody polled. A context dropped on another thread than its
//!   issuer cannot reap its ring: operations still in flight then are leaked on purpose
//!   (buffers and callbacks), never freed under the kernel.
//! - [S4] `IOPOLL` is refused: a polled ring cannot complete the eventfd read and the fd
//!   handlers' polls this loop keeps armed, so the loop would never wake.
//! - [S5] `SQPOLL` takes the idle time after which the kernel's submission thread sleeps
//!   (and optionally its CPU); the interrupt-related flags (`COOP_TASKRUN`,
//!   `TASKRUN_FLAG`, `DEFER_TASKRUN`) mean nothing with it and are not implied then.
//!
//! [`AioContextBuilder`]: crate::AioContextBuilder
//! [`AioContext::ring_features`]: crate::AioContext::ring_features

use std::fmt;
use std::io;
use std::time::Duration;

use io_uring::IoUring;

use super::{MAX_RING_ENTRIES, Ring};

/// The default ring size (SQ entries).
pub const DEFAULT_RING_ENTRIES: u32 = 128;

/// The environment variable that sets up every ring of the process with the flags it
/// names (the names [`RingFeatures`] parses, e.g. `single_issuer+defer_taskrun`, or
/// `none`) instead of [`RingFeatures::DEFAULT`]: each flag in it is required as if the
/// builder had turned it on, and each default not in it is off, unless the builder set
/// that flag itself (the builder wins). `none` is a plain ring. `sqpoll` and `iopoll`
/// are refused there (`sqpoll` needs an idle time: use [`AioContextBuilder::sqpoll`]).
/// It lets a whole program, a test suite or a benchmark run under a setup without
/// changing its code.
///
/// [`AioContextBuilder::sqpoll`]: crate::AioContextBuilder::sqpoll
pub const RING_SETUP_ENV: &str = "AIOCTX_RING_SETUP";

/// `IORING_ENTER_GETEVENTS` (the io_uring crate keeps its `sys` module private).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The io_uring setup flags a ring runs with, as [`AioContext::ring_features`] reports
/// them and as [`RingSetupError`] names those asked for. Displayed as the flags' names
/// joined by `+` (`coop_taskrun+taskrun_flag`), or `none`.
///
/// [`AioContext::ring_features`]: crate::AioContext::ring_features
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RingFeatures(u32);

impl RingFeatures {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// `IORING_SETUP_SQPOLL`: a kernel thread polls the submission queue.
    pub const SQPOLL: Self = Self(1);
    /// `IORING_SETUP_IOPOLL`: busy-polled completions (refused by this loop, see
    /// [`AioContextBuilder::iopoll`](crate::AioContextBuilder::iopoll)).
    pub const IOPOLL: Self = Self(1 << 1);
    /// `IORING_SETUP_SINGLE_ISSUER`: one thread submits.
    pub const SINGLE_ISSUER: Self = Self(1 << 2);
    /// `IORING_SETUP_DEFER_TASKRUN`: completions are posted when the issuer waits.
    pub const DEFER_TASKRUN: Self = Self(1 << 3);
    /// `IORING_SETUP_COOP_TASKRUN`: no interrupt to post a completion.
    pub const COOP_TASKRUN: Self = Self(1 << 4);
    /// `IORING_SETUP_TASKRUN_FLAG`: the kernel flags pending completion work in the SQ ring.
    pub const TASKRUN_FLAG: Self = Self(1 << 5);
    /// What a builder asks for unless told otherwise (each flag dropped again where the
    /// kernel refuses it): `COOP_TASKRUN` and `TASKRUN_FLAG`. Measured on this loop
    /// (`benches/setup.rs` and BENCHMARKS.md's "ring setup flags" table; `benches/dio.sh`),
    /// they cost nothing on NOPs, a task-work pipe read or a sleeping ping-pong, and
    /// O_DIRECT reads at depth 32 on a block device whose reads go through io-wq
    /// workers ran about 1.3× faster with them: the workers' completions no longer
    /// interrupt the loop's thread, which takes them at its next enter, flagged by
    /// `IORING_SQ_TASKRUN` (setup rule S2). The kick's syscalls do not change. `SINGLE_ISSUER`/
    /// `DEFER_TASKRUN` bind the ring to one thread (setup rule S3: a context dropped
    /// elsewhere leaks what it has in flight), so they stay opt-in.
    pub const DEFAULT: Self = Self(Self::COOP_TASKRUN.0 | Self::TASKRUN_FLAG.0);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::SQPOLL, "sqpoll"),
        (Self::IOPOLL, "iopoll"),
        (Self::SINGLE_ISSUER, "single_issuer"),
        (Self::DEFER_TASKRUN, "defer_taskrun"),
        (Self::COOP_TASKRUN, "coop_taskrun"),
        (Self::TASKRUN_FLAG, "taskrun_flag"),
    ];

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags of both.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags of `self` that are not in `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    fn with(self, other: Self, on: bool) -> Self {
        if on {
            self.union(other)
        } else {
            self.difference(other)
        }
    }
}

impl std::ops::BitOr for RingFeatures {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// Parses the [`Display`](fmt::Display) form: flag names joined by `+`
/// (`coop_taskrun+taskrun_flag`), or `none`. Case and spaces around names do not matter.
///
/// ```
/// use aioctx_aio::RingFeatures;
/// let f: RingFeatures = "single_issuer + DEFER_TASKRUN".parse()?;
/// assert_eq!(f, RingFeatures::SINGLE_ISSUER | RingFeatures::DEFER_TASKRUN);
/// assert_eq!(f.to_string().parse::<RingFeatures>()?, f);
/// assert!("single_issuer+fast".parse::<RingFeatures>().is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
impl std::str::FromStr for RingFeatures {
    type Err = io::Error;

    /// # Errors
    /// `InvalidInput` naming the unknown or empty name and listing the valid ones.
    fn from_str(s: &str) -> io::Result<Self> {
        let names = || {
            Self::NAMES
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Self::NONE);
        }
        let mut f = Self::NONE;
        for part in s.split('+') {
            let part = part.trim();
            let flag = Self::NAMES
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(part))
                .map(|(flag, _)| *flag)
                .ok_or_else(|| {
                    invalid(format!(
                        "unknown io_uring setup flag {part:?} in {s:?}: expected `none` or \
                         names joined by `+` from: {}",
                        names()
                    ))
                })?;
            f = f.union(flag);
        }
        Ok(f)
    }
}

impl fmt::Display for RingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("+")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The kernel refused a ring setup the caller asked for (rule S1 of the ring setup): the
/// flags and sizes asked for, and the `io_uring_setup` errno. Found in the `io::Error`
/// that [`AioContextBuilder::build`](crate::AioContextBuilder::build) returns, through
/// `get_ref()` and `downcast_ref`; the error's kind is the errno's.
#[derive(Debug)]
pub struct RingSetupError {
    requested: RingFeatures,
    sq: u32,
    cq: u32,
    source: io::Error,
}

impl RingSetupError {
    /// The flags the refused setup carried.
    pub fn requested(&self) -> RingFeatures {
        self.requested
    }

    /// The kernel's errno (e.g. `EINVAL` for a combination it rejects, `EPERM` for
    /// `SQPOLL` without the privilege an older kernel wants).
    pub fn errno(&self) -> i32 {
        self.source.raw_os_error().unwrap_or(0)
    }
}

impl fmt::Display for RingSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.errno() {
            libc::EINVAL => " (this kernel rejects the combination, or a flag is too new for it)",
            libc::EPERM => {
                " (not permitted to this process: SQPOLL needs CAP_SYS_NICE before Linux 5.11)"
            }
            _ => "",
        };
        write!(
            f,
            "io_uring_setup refused a ring with flags {} (sq {}, cq {}): {}{why}",
            self.requested, self.sq, self.cq, self.source
        )
    }
}

impl std::error::Error for RingSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What the builder asks of the ring (see `AioContextBuilder`).
#[derive(Debug, Clone)]
pub(crate) struct RingSetup {
    pub(crate) sq: u32,
    /// `None`: the kernel's default (twice `sq`).
    pub(crate) cq: Option<u32>,
    /// Idle time of the SQ thread; `Some` turns `SQPOLL` on.
    pub(crate) sqpoll_idle: Option<Duration>,
    pub(crate) sqpoll_cpu: Option<u32>,
    /// Flags turned on by the caller ([S1]: required).
    pub(crate) on: RingFeatures,
    /// Flags turned off by the caller.
    pub(crate) off: RingFeatures,
}

impl Default for RingSetup {
    fn default() -> Self {
        Self {
            sq: DEFAULT_RING_ENTRIES,
            cq: None,
            sqpoll_idle: None,
            sqpoll_cpu: None,
            on: RingFeatures::NONE,
            off: RingFeatures::NONE,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl RingSetup {
    /// Applies [`RING_SETUP_ENV`] to the flags the builder left alone: its flags
    /// required (with what they imply), the defaults it does not name off.
    ///
    /// # Errors
    /// An invalid value, or `sqpoll`/`iopoll` in it (`InvalidInput`, naming the variable).
    pub(crate) fn with_env(mut self) -> io::Result<Self> {
        let value = match std::env::var(RING_SETUP_ENV) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => return Ok(self),
            Err(e) => return Err(invalid(format!("{RING_SETUP_ENV} is invalid: {e}"))),
        };
        let flags: RingFeatures = value
            .parse()
            .map_err(|e| invalid(format!("{RING_SETUP_ENV}={value:?} is invalid: {e}")))?;
        for (flag, why) in [
            (
                RingFeatures::SQPOLL,
                "it needs an idle time: use AioContextBuilder::sqpoll",
            ),
            (RingFeatures::IOPOLL, "this loop refuses IOPOLL"),
        ] {
            if flags.contains(flag) {
                return Err(invalid(format!(
                    "{RING_SETUP_ENV}={value:?} is invalid: {flag} cannot be set there ({why})"
                )));
            }
        }
        let untouched = |f: RingFeatures| f.difference(self.on).difference(self.off);
        // `TASKRUN_FLAG` is not turned off by name: it goes with the task-run flags,
        // implied by a named one ([S2]) or dropped with `COOP_TASKRUN` by `wished`.
        let unnamed = RingFeatures::DEFAULT
            .difference(flags)
            .difference(RingFeatures::TASKRUN_FLAG);
        let (on, off) = (untouched(flags), untouched(unnamed));
        self.on = self.on.union(on);
        self.off = self.off.union(off);
        Ok(self)
    }

    /// Turns `flag` on (required) or off.
    pub(crate) fn set(&mut self, flag: RingFeatures, on: bool) {
        self.on = self.on.with(flag, on);
        self.off = self.off.with(flag, !on);
    }

    /// What the caller asked for explicitly, with `SQPOLL` from the idle time.
    fn asked(&self) -> RingFeatures {
        self.on
            .with(RingFeatures::SQPOLL, self.sqpoll_idle.is_some())
    }

    /// The caller's flags plus what they imply ([S2], [S5]).
    fn required(&self) -> RingFeatures {
        let mut f = self.asked();
        let imply = |f: RingFeatures, flag: RingFeatures, off: RingFeatures| {
            if off.contains(flag) { f } else { f.union(flag) }
        };
        if f.contains(RingFeatures::DEFER_TASKRUN) {
            f = imply(f, RingFeatures::SINGLE_ISSUER, self.off);
            f = imply(f, RingFeatures::TASKRUN_FLAG, self.off);
        }
        if f.contains(RingFeatures::COOP_TASKRUN) {
            f = imply(f, RingFeatures::TASKRUN_FLAG, self.off);
        }
        f
    }

    /// The required flags plus the defaults that fit them ([S1], [S5]).
    fn wished(&self) -> RingFeatures {
        let required = self.required();
        if required.contains(RingFeatures::SQPOLL) {
            return required;
        }
        let mut defaults = RingFeatures::DEFAULT.difference(self.off);
        // A default that needs a flag turned off is dropped with it.
        if !defaults.contains(RingFeatures::COOP_TASKRUN)
            && !required.contains(RingFeatures::DEFER_TASKRUN)
            && !required.contains(RingFeatures::COOP_TASKRUN)
        {
            defaults = defaults.difference(RingFeatures::TASKRUN_FLAG);
        }
        if defaults.contains(RingFeatures::DEFER_TASKRUN)
            && !required
                .union(defaults)
                .contains(RingFeatures::SINGLE_ISSUER)
        {
            defaults = defaults.difference(RingFeatures::DEFER_TASKRUN);
        }
        required.union(defaults)
    }

    /// Checks the sizes and the flags this loop cannot run with, before any kernel call
    /// (done for every back end, so a configuration error does not depend on which one
    /// runs).
    pub(crate) fn check(&self) -> io::Result<()> {
        super::check_entries(self.sq)?;
        if let Some(cq) = self.cq {
            let max = 2 * MAX_RING_ENTRIES;
            if cq < self.sq || cq > max {
                return Err(invalid(format!(
                    "CQ size {cq} is out of range: io_uring takes the SQ size ({})..={max} \
                     completion entries",
                    self.sq
                )));
            }
        }
        if self.on.contains(RingFeatures::IOPOLL) {
            return Err(invalid(
                "IORING_SETUP_IOPOLL is not supported: this loop keeps its notify eventfd \
                 read and its fd handlers' polls on the ring, which a polled ring cannot \
                 complete (it would never wake); use O_DIRECT reads on the default ring"
                    .to_owned(),
            ));
        }
        if self.sqpoll_cpu.is_some() && self.sqpoll_idle.is_none() {
            return Err(invalid(
                "an SQ thread CPU was given without SQPOLL: call sqpoll(idle) too".to_owned(),
            ));
        }
        if let Some(idle) = self.sqpoll_idle {
            u32::try_from(idle.as_millis()).map_err(|_| {
                invalid(format!(
                    "SQPOLL idle time {idle:?} is too long (u32 milliseconds)"
                ))
            })?;
        }
        Ok(())
    }

    fn build(&self, flags: RingFeatures) -> io::Result<IoUring> {
        let mut b = IoUring::builder();
        b.setup_clamp();
        if let Some(cq) = self.cq {
            b.setup_cqsize(cq);
        }
        if flags.contains(RingFeatures::SQPOLL) {
            let idle = self.sqpoll_idle.unwrap_or(Duration::from_millis(1000));
            b.setup_sqpoll(idle.as_millis() as u32);
            if let Some(cpu) = self.sqpoll_cpu {
                b.setup_sqpoll_cpu(cpu);
            }
        }
        if flags.contains(RingFeatures::SINGLE_ISSUER) {
            b.setup_single_issuer();
            b.setup_r_disabled(); // [S3]
        }
        if flags.contains(RingFeatures::DEFER_TASKRUN) {
            b.setup_defer_taskrun();
        }
        if flags.contains(RingFeatures::COOP_TASKRUN) {
            b.setup_coop_taskrun();
        }
        if flags.contains(RingFeatures::TASKRUN_FLAG) {
            b.setup_taskrun_flag();
        }
        b.build(self.sq)
    }

    /// Sets the ring up ([S1]): with the wished flags, else without the defaults; a
    /// refusal of the required flags is a `RingSetupError` unless a plain ring fails
    /// too (then the plain ring's error says io_uring itself is unavailable).
    pub(crate) fn open(&self) -> io::Result<(IoUring, RingFeatures)> {
        let wished = self.wished();
        let required = self.required();
        let first = match self.build(wished) {
            Ok(ring) => return Ok((ring, wished)),
            Err(e) => e,
        };
        let err = if wished != required {
            log::debug!(
                "io_uring_setup refused the default flags {}: {first}; setting up without them",
                wished.difference(required)
            );
            match self.build(required) {
                Ok(ring) => return Ok((ring, required)),
                Err(e) => e,
            }
        } else {
            first
        };
        if required.is_empty() {
            return Err(err);
        }
        // Is it the flags, or io_uring itself?
        self.build(RingFeatures::NONE)?;
        Err(io::Error::new(
            err.kind(),
            RingSetupError {
                requested: required,
                sq: self.sq,
                cq: self.cq.unwrap_or(2 * self.sq),
                source: err,
            },
        ))
    }
}

/// Whether `e` is a refusal of flags the caller asked for ([S1]): never a reason to
/// fall back to another back end.
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<RingSetupError>())
}

impl Ring {
    /// The flags the ring runs with.
    pub(crate) fn features(&self) -> RingFeatures {
        self.features
    }

    /// Whether the kernel may hold completion work it posts only when the home thread
    /// enters ([S2]): `IORING_SQ_TASKRUN` is set.
    pub(crate) fn taskrun_pending(&mut self) -> bool {
        self.features.contains(RingFeatures::TASKRUN_FLAG) && self.ring.submission().taskrun()
    }

    /// A non-blocking look ([S2]): submits what is queued, and enters with `GETEVENTS`
    /// when the kernel may hold completions it posts only then.
    pub(crate) fn look(&mut self) {
        let deferred = self.features.contains(RingFeatures::DEFER_TASKRUN)
            || self.features.contains(RingFeatures::COOP_TASKRUN);
        if deferred && !self.features.contains(RingFeatures::TASKRUN_FLAG) {
            // No flag tells us: always look in the kernel.
            self.enter_getevents();
        } else if self.taskrun_pending() || self.has_unsubmitted() {
            // The io_uring crate adds GETEVENTS when IORING_SQ_TASKRUN is set.
            self.submit();
        }
    }

    fn enter_getevents(&mut self) {
        self.enable();
        self.enters += 1;
        let len = self.ring.submission().len() as u32;
        let submitter = self.ring.submitter();
        // SAFETY: a plain io_uring_enter without an argument; the SQEs it submits name
        // memory their operations' slots own until their CQEs (`Sqe`'s invariant).
        let res =
            unsafe { submitter.enter::<libc::sigset_t>(len, 0, IORING_ENTER_GETEVENTS, None) };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => panic!("io_uring_enter failed unexpectedly: {e}"),
            }
        }
    }

    /// Enables a ring created disabled ([S3]) on its first enter, binding the calling
    /// thread as its issuer.
    pub(crate) fn enable(&mut self) {
        if self.issuer.is_some() || !self.features.contains(RingFeatures::SINGLE_ISSUER) {
            return;
        }
        if let Err(e) = self.ring.submitter().register_enable_rings() {
            panic!("io_uring: enabling a single-issuer ring failed: {e}");
        }
        // SAFETY: gettid has no preconditions.
        self.issuer = Some(unsafe { libc::gettid() });
    }

    /// Whether the calling thread may enter the ring ([S3]).
    pub(crate) fn can_enter_here(&self) -> bool {
        // SAFETY: gettid has no preconditions.
        self.issuer
            .is_none_or(|tid| tid == unsafe { libc::gettid() })
    }
}
