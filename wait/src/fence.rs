//! The fence mode: who pays for the full barrier of a Dekker pair whose one side runs on
//! every operation (hot) and whose other side runs rarely.
//!
//! The pairs it serves — the hot side first:
//! - `kick`'s [K1] against a `wait_while` registration's [W1] (`protocol.rs`);
//! - the graph read lock's [R1] against the writer's [W1], and `rdunlock`'s [U1] (the
//!   kick's [K1]) against the writer's `wait_while` registration (aioctx-graph
//!   `state.rs`).
//!
//! Each is a store, a fence, then a load of the other side's variable, on both sides.
//! With a SeqCst fence on both sides ([`FenceMode::Symmetric`]) the proof is the C++/Rust
//! one: the two fences are ordered in the single total order of SeqCst operations, and
//! whichever comes second sees the other side's store.
//!
//! [`FenceMode::Asymmetric`] moves the cost to the rare side. The hot side issues only a
//! compiler fence ([`light_fence`]): the compiler keeps its store before its load, but
//! the CPU may still let the load pass the store (a store buffer). The rare side issues
//! [`heavy_fence`]: a SeqCst fence of its own and `membarrier(2)` with
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, registered once with
//! `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` when the mode is chosen. The kernel's
//! documentation of that command (membarrier(2); kernel/sched/membarrier.c) guarantees
//! that when the call returns, every running thread of the calling process has passed
//! through a state where its memory accesses match program order — in effect, each
//! executed a full barrier somewhere between the call's entry and its return — and that
//! threads not running are in that state already (the scheduler issues full barriers
//! around a switch, and a thread runs user code again only after one). So for any hot
//! thread, the membarrier acts as a full fence placed at some point of that thread's
//! program order between two of its instructions, and at a point in time between the
//! rare side's store and its load:
//! - if that point is after the hot side's store, the store is visible to all before
//!   membarrier returns, and the rare side's load (after it) sees it;
//! - if it is before the hot side's store, then it is also before the hot side's load
//!   (the compiler fence kept program order), and the barrier the hot thread ran after
//!   the rare side's store ordered that store before the hot side's load, which sees it.
//!
//! Both cannot miss: the same conclusion as with two SeqCst fences, which is why the loom
//! models, which cannot model `membarrier` (an inter-processor interrupt is outside
//! loom's memory model), run [`light_fence`] and [`heavy_fence`] as SeqCst fences: the
//! symmetric protocol the asymmetric one reduces to. This is the technique of liburcu's
//! `urcu-memb` flavour and of QEMU's RCU (`smp_mb_placeholder()` in `rcu_read_lock` and
//! `rcu_read_unlock`, include/qemu/rcu.h, against `smp_mb_global()` in the grace
//! period's `wait_for_readers`, util/rcu.c; include/qemu/sys_membarrier.h and
//! util/sys_membarrier.c — QEMU uses the older, slower `MEMBARRIER_CMD_SHARED`), and the
//! `asymmetric_thread_fence_light`/`_heavy` pair proposed for C++ (P1202), whose names
//! these functions borrow.
//!
//! # Which mode
//!
//! The mode is process-wide and chosen once, before the first hot- or rare-side fence,
//! by whichever comes first: [`set_fence_mode`], or the first fence (or
//! [`fence_mode`]/[`try_fence_mode`]), which reads `AIOCTX_FENCES` ([`FENCES_ENV`]):
//! `asymmetric`, `symmetric`, or `auto` (the default: asymmetric where the kernel
//! grants `membarrier`, symmetric otherwise — a kernel before 4.14, seccomp, or a
//! sandbox without the call). It can never change afterwards: a hot side that ran with a
//! compiler fence only relies on every later rare side calling `membarrier`, so a switch
//! would break pairs in flight; [`set_fence_mode`] with another mode panics.
//!
//! Choose **asymmetric** (the default where available) when the hot sides dominate —
//! many kicks or read locks per `wait_while` or `wrlock`: a kick with no waiter and a
//! read-lock pair lose their full fences. A rare side then costs a syscall, about 0.3 µs
//! when no other thread of the process runs and several µs when it must interrupt
//! running threads (it interrupts every CPU that runs one; see `aioctx kickstat`'s rare
//! side rows). Choose **symmetric** when rare sides are frequent (a writer that takes
//! the graph lock in a tight loop while iothreads spin), when a syscall on the waiting
//! side is unwelcome (latency-critical `wait_while` loops), or when the process runs many
//! busy threads that the interrupts would disturb.
//!
//! The event loop's own notify protocol (aioctx-aio `notify.rs`, [P2]/[C2]) stays
//! symmetric: its "rare" side is the loop going to sleep, which a loop that waits for
//! I/O does on nearly every iteration, so a `membarrier` there would cost a syscall per
//! sleep (on top of the sleep's own `io_uring_enter`) to save one fence per notify — and
//! a notify to a busy loop is already coalesced to one fence per poll by its
//! `notified` swap.

use std::fmt;
use std::io;
use std::str::FromStr;
// The mode and the call count are process-wide settings and statistics chosen and
// read outside the protocols (never protocol state), so they stay `std` under loom too;
// under loom only the fences themselves change (see `light_fence`).
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

// The fences themselves come through the crate's shim: loom's under the models.
use crate::sync::atomic as sync;

/// The environment variable that picks the fence mode when nothing chose it before:
/// `auto`, `symmetric` or `asymmetric`.
pub const FENCES_ENV: &str = "AIOCTX_FENCES";

/// Who pays for the full barrier of the kick and graph-lock protocols; the proof is in
/// `fence.rs` (see the [crate docs](crate)). [`fence_mode`] says which one runs (never
/// `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FenceMode {
    /// Asymmetric when the kernel grants `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
    /// symmetric otherwise. `AIOCTX_FENCES` overrides it.
    #[default]
    Auto,
    /// A SeqCst fence on both sides.
    Symmetric,
    /// A compiler fence on the hot side, `membarrier` on the rare side.
    Asymmetric,
}

impl fmt::Display for FenceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FenceMode::Auto => "auto",
            FenceMode::Symmetric => "symmetric",
            FenceMode::Asymmetric => "asymmetric",
        })
    }
}

impl FromStr for FenceMode {
    type Err = io::Error;

    /// Parses `auto`, `symmetric` or `asymmetric`.
    fn from_str(s: &str) -> io::Result<Self> {
        match s.trim() {
            "auto" => Ok(FenceMode::Auto),
            "symmetric" => Ok(FenceMode::Symmetric),
            "asymmetric" => Ok(FenceMode::Asymmetric),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{other}` is not a fence mode: use symmetric, asymmetric or auto"),
            )),
        }
    }
}

const UNSET: u8 = 0;
const SYMMETRIC: u8 = 1;
const ASYMMETRIC: u8 = 2;

/// The chosen mode: `UNSET` until chosen, then one of the two modes forever.
static MODE: AtomicU8 = AtomicU8::new(UNSET);
/// Serialises the choice (and the membarrier registration that precedes it).
static CHOOSING: Mutex<()> = Mutex::new(());
/// `membarrier` calls made by [`heavy_fence`] so far.
static MEMBARRIERS: AtomicU64 = AtomicU64::new(0);

// From include/uapi/linux/membarrier.h (not in the libc crate).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn decode(v: u8) -> Option<FenceMode> {
    match v {
        SYMMETRIC => Some(FenceMode::Symmetric),
        ASYMMETRIC => Some(FenceMode::Asymmetric),
        _ => None,
    }
}

/// The mode, if chosen. Acquire: pairs with the Release store in `choose`, so a caller
/// that sees `Asymmetric` also sees the registration made before it.
fn chosen() -> Option<FenceMode> {
    decode(MODE.load(Ordering::Acquire))
}

/// The process's fence mode (`Symmetric` or `Asymmetric`), choosing it from
/// `AIOCTX_FENCES` (or by probing `membarrier`, when unset or `auto`) if nothing has
/// chosen it yet.
///
/// ```
/// let mode = aioctx_wait::fence_mode();
/// assert_ne!(mode, aioctx_wait::FenceMode::Auto);
/// assert_eq!(aioctx_wait::fence_mode(), mode); // chosen once
/// ```
///
/// # Panics
/// When `AIOCTX_FENCES` is invalid, or is `asymmetric` where the kernel refuses
/// `membarrier` (see [`try_fence_mode`], which returns that error instead).
pub fn fence_mode() -> FenceMode {
    try_fence_mode().unwrap_or_else(|e| panic!("aioctx: cannot choose the fence mode: {e}"))
}

/// Like [`fence_mode`], returning the error instead of panicking: a program checks this
/// at start-up (as the `aioctx` binary does) to turn a bad `AIOCTX_FENCES` into a
/// one-line message.
///
/// # Errors
/// `InvalidInput` for an invalid `AIOCTX_FENCES`; for `AIOCTX_FENCES=asymmetric`, the
/// kernel's refusal of `membarrier` (`Unsupported`, `PermissionDenied`, ...) with what to
/// set instead. The mode stays unchosen after an error.
pub fn try_fence_mode() -> io::Result<FenceMode> {
    match chosen() {
        Some(mode) => Ok(mode),
        None => choose(None),
    }
}

/// Chooses the process's fence mode explicitly (QEMU: `smp_mb_global_init`, which only
/// checks that the call exists), before any kick, `wait_while` or graph lock ran (`Auto` chooses as [`fence_mode`] would, from `AIOCTX_FENCES`); returns the
/// mode chosen. Calling it again with the mode already chosen, or with `Auto`, is
/// harmless.
///
/// ```
/// use aioctx_wait::{FenceMode, set_fence_mode};
/// let mode = set_fence_mode(FenceMode::Auto)?;
/// assert_eq!(set_fence_mode(mode)?, mode);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// For `Asymmetric`, the kernel's refusal of `membarrier`; for `Auto`, what
/// [`try_fence_mode`] returns. The mode stays unchosen after an error.
///
/// # Panics
/// When a different mode was chosen already — by an earlier call, or by the first
/// fence of a kick, `wait_while` or graph lock: the hot sides that ran are paired with
/// the rare sides of that mode, and switching would break the pairing.
pub fn set_fence_mode(mode: FenceMode) -> io::Result<FenceMode> {
    choose(Some(mode))
}

/// How many `membarrier` calls the rare sides made so far (0 in symmetric mode). The
/// kick-cost report counts them apart from a kick's syscalls.
pub fn membarrier_calls() -> u64 {
    MEMBARRIERS.load(Ordering::Relaxed)
}

fn choose(explicit: Option<FenceMode>) -> io::Result<FenceMode> {
    let _choosing = CHOOSING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(now) = chosen() {
        if let Some(want @ (FenceMode::Symmetric | FenceMode::Asymmetric)) = explicit
            && want != now
        {
            panic!(
                "aioctx_wait::set_fence_mode({want}) called after the fence mode was chosen \
                 as {now} (by an earlier set_fence_mode, {FENCES_ENV}, or the first kick, \
                 wait_while or graph lock): the mode is process-wide and chosen once, because \
                 the hot sides that ran are paired with {now} rare sides. Choose the mode \
                 before anything kicks, waits or locks the graph"
            );
        }
        return Ok(now);
    }
    let (requested, from_env) = match explicit {
        Some(FenceMode::Auto) | None => from_env()?,
        Some(mode) => (mode, false),
    };
    let mode = match requested {
        FenceMode::Symmetric => FenceMode::Symmetric,
        FenceMode::Asymmetric => {
            register_membarrier().map_err(|e| {
                let how = if from_env {
                    format!(
                        "{FENCES_ENV}=asymmetric forces asymmetric fences; unset it or set \
                         {FENCES_ENV}=symmetric"
                    )
                } else {
                    "FenceMode::Asymmetric forces asymmetric fences; use FenceMode::Auto or \
                     FenceMode::Symmetric"
                        .to_owned()
                };
                io::Error::new(e.kind(), format!("{e}; {how} to run with symmetric fences"))
            })?;
            FenceMode::Asymmetric
        }
        FenceMode::Auto => match register_membarrier() {
            Ok(()) => FenceMode::Asymmetric,
            Err(_) => FenceMode::Symmetric,
        },
    };
    let v = match mode {
        FenceMode::Asymmetric => ASYMMETRIC,
        _ => SYMMETRIC,
    };
    // Release: pairs with the Acquire load in `chosen`: whoever sees `Asymmetric` sees
    // the registration done above.
    MODE.store(v, Ordering::Release);
    Ok(mode)
}

/// What `AIOCTX_FENCES` asks for, and whether it was set.
fn from_env() -> io::Result<(FenceMode, bool)> {
    match std::env::var(FENCES_ENV) {
        Ok(v) => {
            let mode = v.parse::<FenceMode>().map_err(|e| {
                io::Error::new(e.kind(), format!("{FENCES_ENV}={v:?} is invalid: {e}"))
            })?;
            Ok((mode, true))
        }
        Err(std::env::VarError::NotPresent) => Ok((FenceMode::Auto, false)),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{FENCES_ENV} is invalid: {e}"),
        )),
    }
}

/// `membarrier(cmd, 0, 0)`.
fn membarrier(cmd: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: membarrier(2) takes three integers (cmd, flags, cpu_id) and no pointer;
    // any values are safe to pass (the kernel rejects bad ones with EINVAL).
    let res = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    };
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and makes one call, so
/// that a kernel or filter that would refuse the rare side's call refuses it now.
fn register_membarrier() -> io::Result<()> {
    let what = |cmd: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("membarrier({cmd}) is unavailable: {e} (Linux 4.14 or later needed)"),
        )
    };
    let supported =
        membarrier(MEMBARRIER_CMD_QUERY).map_err(|e| what("MEMBARRIER_CMD_QUERY", e))?;
    let needed = libc::c_long::from(
        MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
    );
    if supported & needed != needed {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) is unavailable: the kernel \
                 supports commands {supported:#x}, not {needed:#x} (Linux 4.14 or later needed)"
            ),
        ));
    }
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
        .map_err(|e| what("MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED", e))?;
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
        .map_err(|e| what("MEMBARRIER_CMD_PRIVATE_EXPEDITED", e))?;
    Ok(())
}

/// The hot side's fence of an asymmetric pair: a compiler fence in asymmetric mode, a
/// SeqCst fence in symmetric mode (QEMU: `smp_mb_placeholder`). Pairs only with
/// [`heavy_fence`] (see the module docs); chooses the mode on the first call.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// static MINE: AtomicBool = AtomicBool::new(false);
/// static THEIRS: AtomicBool = AtomicBool::new(false);
/// // Hot side: store, light fence, load (the rare side does store, heavy fence, load).
/// MINE.store(true, Ordering::Relaxed);
/// aioctx_wait::light_fence();
/// let _ = THEIRS.load(Ordering::Relaxed);
/// ```
///
/// Under loom it is a SeqCst fence of the model (loom cannot model `membarrier`).
#[inline(always)]
pub fn light_fence() {
    // The model's SeqCst fence: what the asymmetric pair reduces to (module docs).
    // Pairs with the one in `heavy_fence`.
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    sync::fence(Ordering::SeqCst);
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    {
        // Relaxed: the mode is written once; a thread that still sees `UNSET` takes
        // the slow path, which chooses under the mutex.
        match MODE.load(Ordering::Relaxed) {
            // Pairs with the membarrier in `heavy_fence`, this side's real barrier.
            ASYMMETRIC => sync::compiler_fence(Ordering::SeqCst),
            // Pairs with the SeqCst fence in `heavy_fence`.
            SYMMETRIC => sync::fence(Ordering::SeqCst),
            _ => light_fence_first(),
        }
    }
}

/// The hot side's fence, as `light_fence`, returning whether the process runs
/// asymmetric fences (never under loom, whose fences are symmetric).
#[inline(always)]
pub(crate) fn light_fence_is_asymmetric() -> bool {
    light_fence();
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    return false;
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    return MODE.load(Ordering::Relaxed) == ASYMMETRIC;
}

/// A compiler fence: the whole hot side in asymmetric mode, for a caller that knows the
/// mode is asymmetric only after its load (`AioWait::must_kick`). Nothing under loom,
/// whose fences are SeqCst (the caller then fences after all).
#[inline(always)]
pub(crate) fn compiler_fence() {
    // Pairs with the membarrier in `heavy_fence`, in asymmetric mode.
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    sync::compiler_fence(Ordering::SeqCst);
}

/// The first hot-side fence of the process: choose the mode, then fence fully (right
/// in either mode).
#[cfg(not(all(loom, any(test, feature = "loom-model"))))]
#[cold]
#[inline(never)]
fn light_fence_first() {
    fence_mode();
    // Pairs with `heavy_fence`: a full fence is a valid hot side in both modes.
    sync::fence(Ordering::SeqCst);
}

/// The rare side's fence of an asymmetric pair: a SeqCst fence, then, in asymmetric
/// mode, `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running
/// thread of the process execute a full barrier (QEMU: `smp_mb_global`). Pairs with
/// [`light_fence`]; chooses the mode on the first call.
///
/// Under loom it is a SeqCst fence of the model.
///
/// # Panics
/// When the mode cannot be chosen (see [`fence_mode`]), or when the kernel refuses the
/// `membarrier` call after granting its registration (it never does: the call's
/// errors are `EINVAL` and `EPERM` for an unsupported or unregistered command).
pub fn heavy_fence() {
    // The model's SeqCst fence; pairs with the one in `light_fence`.
    #[cfg(all(loom, any(test, feature = "loom-model")))]
    sync::fence(Ordering::SeqCst);
    #[cfg(not(all(loom, any(test, feature = "loom-model"))))]
    {
        // Pairs with `light_fence`'s SeqCst fence in symmetric mode; in asymmetric mode
        // it orders this thread's own accesses around the membarrier in the language's
        // model too (the syscall's entry and exit are full barriers as well).
        sync::fence(Ordering::SeqCst);
        if fence_mode() == FenceMode::Asymmetric {
            if let Err(e) = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
                panic!(
                    "aioctx: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after its \
                     registration succeeded: {e}; the asymmetric fences cannot be honoured"
                );
            }
            MEMBARRIERS.fetch_add(1, Ordering::Relaxed);
        }
    }
}
