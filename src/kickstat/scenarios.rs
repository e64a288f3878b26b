//! The scenarios of the kick-cost report: what one operation is, and how it is timed
//! and counted.
//!
//! Every multi-threaded scenario spawns its helper thread *before* the measured window
//! and lets it exit only *after* the window (`Helper`), and all hand-shakes inside the
//! window are spins on atomics: thread creation, thread exit and futex waits would
//! otherwise land in the syscall count.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aioctx::aio::AioContext;
use aioctx::graph::{UnlockKick, graph_lock};
use aioctx::wait::{kick, num_waiters, wait_while};

use super::Env;
use crate::sys;

/// One scenario of the report. The names are part of the CLI and the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `kick()` with no waiter.
    KickIdle,
    /// `kick()` while a waiter exists and the main loop polls without sleeping.
    KickBusy,
    /// Another thread kicks while the main loop sleeps in `wait_while`; one cycle.
    KickSleeping,
    /// `notify()` while the loop polls without sleeping.
    NotifyBusy,
    /// Another thread notifies while the loop sleeps in `poll(true)`; one cycle.
    NotifySleeping,
    /// SeqCst fence + relaxed load: the floor of `kick-idle`.
    PeerFenceLoad,
    /// One eventfd `write(2)`.
    PeerEventfdWrite,
    /// `FUTEX_WAKE` with no waiter.
    PeerFutexWake,
    /// std `Thread::unpark` of a running thread.
    PeerUnpark,
    /// `tokio::sync::Notify::notify_one` with no waiter.
    PeerTokioNotify,
    /// Two threads handing a token back and forth through two eventfds, each blocked in
    /// `read(2)`: the floor of `kick-sleeping`. One op is one hand-off.
    PeerEventfdPingpong,
    /// Graph `rdlock().await` + drop in a task, no writer, `UnlockKick::Always` (the fix).
    RdlockPairAlways,
    /// The same with `UnlockKick::WhenWriterSeen` (the pre-fix unlock).
    RdlockPairWhenWriterSeen,
    /// `std::sync::RwLock::read` + drop, uncontended.
    PeerStdRwlockRead,
    /// `parking_lot::RwLock::read` + drop, uncontended.
    PeerParkingLotRead,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 15] = [
        Scenario::KickIdle,
        Scenario::KickBusy,
        Scenario::KickSleeping,
        Scenario::NotifyBusy,
        Scenario::NotifySleeping,
        Scenario::PeerFenceLoad,
        Scenario::PeerEventfdWrite,
        Scenario::PeerFutexWake,
        Scenario::PeerUnpark,
        Scenario::PeerTokioNotify,
        Scenario::PeerEventfdPingpong,
        Scenario::RdlockPairAlways,
        Scenario::RdlockPairWhenWriterSeen,
        Scenario::PeerStdRwlockRead,
        Scenario::PeerParkingLotRead,
    ];

    /// The scenario's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KickIdle => "kick-idle",
            Scenario::KickBusy => "kick-busy",
            Scenario::KickSleeping => "kick-sleeping",
            Scenario::NotifyBusy => "notify-busy",
            Scenario::NotifySleeping => "notify-sleeping",
            Scenario::PeerFenceLoad => "peer-fence-load",
            Scenario::PeerEventfdWrite => "peer-eventfd-write",
            Scenario::PeerFutexWake => "peer-futex-wake",
            Scenario::PeerUnpark => "peer-unpark",
            Scenario::PeerTokioNotify => "peer-tokio-notify",
            Scenario::PeerEventfdPingpong => "peer-eventfd-pingpong",
            Scenario::RdlockPairAlways => "rdlock-pair-always",
            Scenario::RdlockPairWhenWriterSeen => "rdlock-pair-when-writer-seen",
            Scenario::PeerStdRwlockRead => "peer-std-rwlock-read",
            Scenario::PeerParkingLotRead => "peer-parking-lot-read",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What one operation is.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::KickSleeping | Scenario::NotifySleeping => "cycle",
            Scenario::PeerEventfdPingpong => "hand-off",
            Scenario::RdlockPairAlways
            | Scenario::RdlockPairWhenWriterSeen
            | Scenario::PeerStdRwlockRead
            | Scenario::PeerParkingLotRead => "pair",
            _ => "op",
        }
    }

    /// Iterations per run when `--iterations` is not given: enough for a stable median,
    /// few enough that the whole default report takes a few seconds.
    pub fn default_iterations(self) -> u64 {
        match self {
            Scenario::KickSleeping | Scenario::NotifySleeping | Scenario::PeerEventfdPingpong => {
                1_000
            }
            Scenario::PeerEventfdWrite | Scenario::PeerFutexWake => 10_000,
            _ => 100_000,
        }
    }

    /// Whether the syscalls are the library's: counted by `stats()` in `self` mode.
    fn is_library(self) -> bool {
        !self.name().starts_with("peer-")
    }

    /// Runs `n` operations once and measures them.
    pub fn run(self, env: &Env, n: u64) -> Sample {
        let m = match self {
            Scenario::KickIdle => kick_idle(env, n),
            Scenario::KickBusy => kick_busy(env, n),
            Scenario::KickSleeping => kick_sleeping(env, n),
            Scenario::NotifyBusy => notify_busy(env, n),
            Scenario::NotifySleeping => notify_sleeping(env, n),
            Scenario::PeerFenceLoad => peer_fence_load(env, n),
            Scenario::PeerEventfdWrite => peer_eventfd_write(env, n),
            Scenario::PeerFutexWake => peer_futex_wake(env, n),
            Scenario::PeerUnpark => peer_unpark(env, n),
            Scenario::PeerTokioNotify => peer_tokio_notify(env, n),
            Scenario::PeerEventfdPingpong => peer_eventfd_pingpong(env, n),
            Scenario::RdlockPairAlways => rdlock_pair(env, n, UnlockKick::Always),
            Scenario::RdlockPairWhenWriterSeen => rdlock_pair(env, n, UnlockKick::WhenWriterSeen),
            Scenario::PeerStdRwlockRead => peer_std_rwlock_read(env, n),
            Scenario::PeerParkingLotRead => peer_parking_lot_read(env, n),
        };
        let syscalls = match (m.window.kernel, self.is_library()) {
            (Some(k), _) => Some(k),
            (None, true) => Some(m.window.library),
            (None, false) => m.explicit,
        };
        Sample {
            ops: m.ops,
            ns: m.timed.as_nanos() as f64,
            syscalls,
        }
    }
}

/// One run of one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Operations performed.
    pub ops: u64,
    /// Nanoseconds the timed part took.
    pub ns: f64,
    /// Syscalls made by the whole process during the window (`None`: not countable).
    pub syscalls: Option<u64>,
}

/// What a window saw.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closed {
    elapsed: Duration,
    /// Syscall entries counted by the kernel, when it counts.
    kernel: Option<u64>,
    /// Syscalls the main context's `stats()` counted: eventfd writes + kernel waits
    /// (io_uring_enter or epoll_wait) + eventfd reads (epoll only).
    library: u64,
}

/// A measured stretch: syscall counts and time between `open` and `close`.
pub(super) struct Window<'a> {
    env: &'a Env,
    count: Option<u64>,
    library: u64,
    start: Instant,
}

fn library_syscalls(ctx: &AioContext) -> u64 {
    let s = ctx.stats();
    s.eventfd_writes + s.enters + s.eventfd_reads
}

impl<'a> Window<'a> {
    pub(super) fn open(env: &'a Env) -> Self {
        // Settle the main loop first: an SQE it re-armed after its last wake-up (the
        // notify read) would otherwise be submitted inside the window.
        env.main.poll(false);
        let library = library_syscalls(env.main);
        let count = env
            .counter
            .as_ref()
            .map(|c| c.read().expect("reading the syscall counter"));
        Self {
            env,
            count,
            library,
            start: Instant::now(),
        }
    }

    pub(super) fn close(self) -> Closed {
        let elapsed = self.start.elapsed();
        let kernel = self
            .env
            .counter
            .as_ref()
            .zip(self.count)
            .map(|(c, start)| c.between(start, c.read().expect("reading the syscall counter")));
        Closed {
            elapsed,
            kernel,
            library: library_syscalls(self.env.main) - self.library,
        }
    }
}

struct Measured {
    ops: u64,
    timed: Duration,
    window: Closed,
    /// Syscalls a peer makes by construction (for `self` mode; `None`: unknown).
    explicit: Option<u64>,
}

fn single(window: Closed, ops: u64, explicit: Option<u64>) -> Measured {
    Measured {
        ops,
        timed: window.elapsed,
        window,
        explicit,
    }
}

/// A helper thread that starts its work on `go` and exits only after `finish`, so that
/// neither its creation nor its exit falls inside a window. Waits are spins: no futex.
struct Helper<T> {
    gate: Arc<AtomicU32>,
    handle: JoinHandle<T>,
}

const GATE_STARTING: u32 = 0;
const GATE_READY: u32 = 1;
const GATE_GO: u32 = 2;
const GATE_EXIT: u32 = 3;

/// How long any hand-shake may take before the report gives up instead of hanging.
const STUCK: Duration = Duration::from_secs(30);

/// Spins until `cond()`; after [`STUCK`], ends the process with a message naming what
/// did not happen (a stuck helper would otherwise leave the main loop asleep forever).
/// Reading the clock is a vDSO call, not a syscall.
fn spin_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !cond() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) && start.elapsed() > STUCK {
            eprintln!("aioctx kickstat: stuck for {STUCK:?} waiting for {what}; giving up");
            std::process::exit(1);
        }
    }
}

impl<T: Send + 'static> Helper<T> {
    /// Spawns the thread, which runs `setup` (CPU pinning) first, and returns once it
    /// runs: its start-up syscalls (stack guard, signal stack, rseq registration, the
    /// pinning) are over before any window opens.
    fn spawn_pinned(
        name: &str,
        setup: impl FnOnce() + Send + 'static,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Self {
        let gate = Arc::new(AtomicU32::new(GATE_STARTING));
        let g = Arc::clone(&gate);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                setup();
                // Relaxed: only says "running"; nothing is published through it.
                g.store(GATE_READY, Ordering::Relaxed);
                // Acquire: pairs with the Release store in `go`.
                spin_until("the go signal", || g.load(Ordering::Acquire) >= GATE_GO);
                let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                    Ok(result) => result,
                    // The main thread may be asleep waiting for this one: do not hang.
                    Err(_) => std::process::exit(1),
                };
                // Acquire: pairs with the Release store in `finish`.
                spin_until("the exit signal", || g.load(Ordering::Acquire) == GATE_EXIT);
                result
            })
            .expect("spawning a kickstat helper thread");
        spin_until("a helper thread to start", || {
            gate.load(Ordering::Relaxed) != GATE_STARTING
        });
        Self { gate, handle }
    }

    fn go(&self) {
        // Release: pairs with the helper's Acquire spin; publishes the setup.
        self.gate.store(GATE_GO, Ordering::Release);
    }

    fn finish(self) -> T {
        // Release: pairs with the helper's Acquire spin before it exits.
        self.gate.store(GATE_EXIT, Ordering::Release);
        self.handle
            .join()
            .expect("a kickstat helper thread panicked")
    }
}

/// Keeps the two sides of a sleep/wake scenario on different CPUs (when there are two):
/// a woken sleeper that lands on the CPU where its partner spins would wait for the
/// scheduler instead of the wake-up. Restores the caller's CPUs on drop.
struct Pinned {
    saved: Option<Vec<usize>>,
}

impl Pinned {
    /// Pins the caller to its first allowed CPU; `pin_helper` (run by the helper
    /// thread) pins it to the last.
    fn main_side() -> (Self, impl Fn() + Send + Clone + 'static) {
        let cpus = sys::allowed_cpus().unwrap_or_default();
        let (first, last) = (cpus.first().copied(), cpus.last().copied());
        let saved = match (first, last) {
            (Some(f), Some(l)) if f != l && sys::set_cpus(&[f]).is_ok() => Some(cpus),
            _ => None,
        };
        let pin = saved.is_some().then_some(last).flatten();
        (Self { saved }, move || {
            if let Some(cpu) = pin {
                let _ = sys::set_cpus(&[cpu]);
            }
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(cpus) = &self.saved {
            let _ = sys::set_cpus(cpus);
        }
    }
}

fn kick_idle(env: &Env, n: u64) -> Measured {
    assert_eq!(num_waiters(), 0, "kick-idle needs no waiter");
    let w = Window::open(env);
    for _ in 0..n {
        kick();
    }
    single(w.close(), n, None)
}

/// The waiter's side of the busy scenarios: a raised waiter count while the main loop
/// polls without sleeping until `done`.
fn poll_busy_until(main: &AioContext, done: &AtomicBool) {
    // Acquire: pairs with the helper's Release store of `done`.
    while !done.load(Ordering::Acquire) {
        main.poll(false);
    }
}

fn kick_busy(env: &Env, n: u64) -> Measured {
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    let (_pinned, pin_helper) = Pinned::main_side();
    let kicker = Helper::spawn_pinned("kicker", pin_helper, move || {
        spin_until("a waiter", || num_waiters() > 0);
        let start = Instant::now();
        for _ in 0..n {
            kick();
        }
        let timed = start.elapsed();
        // Release: pairs with the Acquire load in `poll_busy_until`.
        d.store(true, Ordering::Release);
        timed
    });
    let w = Window::open(env);
    kicker.go();
    // The condition itself polls without blocking until the kicker is done, so the
    // waiter is registered throughout and the loop never sleeps.
    wait_while(None, || {
        poll_busy_until(env.main, &done);
        false
    });
    let window = w.close();
    Measured {
        ops: n,
        timed: kicker.finish(),
        window,
        explicit: None,
    }
}

/// The kicker's side of the sleeping scenarios: before each wake-up, wait until the
/// main loop has committed to sleep (its `sleeps` counter moved), then change the
/// condition and wake it.
///
/// `base` is the `sleeps` count read before the main loop could sleep in this run.
fn wake_each_sleep(
    main: &'static Arc<AioContext>,
    base: u64,
    count: &AtomicU64,
    n: u64,
    wake: impl Fn(),
) {
    for i in 0..n {
        spin_until("the main loop to sleep", || main.stats().sleeps > base + i);
        // Release: pairs with the Acquire load of the waiter's condition.
        count.store(i + 1, Ordering::Release);
        wake();
    }
}

fn kick_sleeping(env: &Env, n: u64) -> Measured {
    let count = Arc::new(AtomicU64::new(0));
    let (c, main) = (Arc::clone(&count), env.main);
    let base = main.stats().sleeps;
    let (_pinned, pin_helper) = Pinned::main_side();
    let kicker = Helper::spawn_pinned("kicker", pin_helper, move || {
        wake_each_sleep(main, base, &c, n, kick)
    });
    let w = Window::open(env);
    kicker.go();
    // Acquire: pairs with the Release store in `wake_each_sleep`.
    wait_while(None, || count.load(Ordering::Acquire) < n);
    let window = w.close();
    kicker.finish();
    single(window, n, None)
}

fn notify_busy(env: &Env, n: u64) -> Measured {
    let done = Arc::new(AtomicBool::new(false));
    let (d, main) = (Arc::clone(&done), env.main);
    let (_pinned, pin_helper) = Pinned::main_side();
    let notifier = Helper::spawn_pinned("notifier", pin_helper, move || {
        let start = Instant::now();
        for _ in 0..n {
            main.notify();
        }
        let timed = start.elapsed();
        // Release: pairs with the Acquire load in `poll_busy_until`.
        d.store(true, Ordering::Release);
        timed
    });
    let w = Window::open(env);
    notifier.go();
    poll_busy_until(env.main, &done);
    let window = w.close();
    Measured {
        ops: n,
        timed: notifier.finish(),
        window,
        explicit: None,
    }
}

fn notify_sleeping(env: &Env, n: u64) -> Measured {
    let count = Arc::new(AtomicU64::new(0));
    let (c, main) = (Arc::clone(&count), env.main);
    let base = main.stats().sleeps;
    let (_pinned, pin_helper) = Pinned::main_side();
    let notifier = Helper::spawn_pinned("notifier", pin_helper, move || {
        wake_each_sleep(main, base, &c, n, || main.notify());
    });
    let w = Window::open(env);
    notifier.go();
    // Acquire: pairs with the Release store in `wake_each_sleep`.
    while count.load(Ordering::Acquire) < n {
        env.main.poll(true);
    }
    let window = w.close();
    notifier.finish();
    single(window, n, None)
}

/// Stands in for `num_waiters` in the floor of `kick-idle`.
static PEER_WAITERS: AtomicU32 = AtomicU32::new(0);

#[cold]
#[inline(never)]
fn peer_never_taken() {
    black_box(());
}

fn peer_fence_load(env: &Env, n: u64) -> Measured {
    // Opaque to the optimizer, like the real count: never provably zero.
    let waiters = black_box(&PEER_WAITERS);
    let w = Window::open(env);
    for _ in 0..n {
        // The floor of `kick`: its [K1] fence and its count load, nothing else.
        fence(Ordering::SeqCst);
        if waiters.load(Ordering::Relaxed) != 0 {
            peer_never_taken();
        }
    }
    single(w.close(), n, Some(0))
}

fn peer_eventfd_write(env: &Env, n: u64) -> Measured {
    let efd = sys::eventfd(true).expect("creating an eventfd");
    let w = Window::open(env);
    for _ in 0..n {
        sys::eventfd_write(&efd);
    }
    let window = w.close();
    sys::eventfd_read(&efd);
    single(window, n, Some(n))
}

fn peer_futex_wake(env: &Env, n: u64) -> Measured {
    let word = AtomicU32::new(0);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(sys::futex_wake(&word));
    }
    single(w.close(), n, Some(n))
}

fn peer_unpark(env: &Env, n: u64) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    // Running, never parked: each unpark only flips the parker's state.
    let (_pinned, pin_helper) = Pinned::main_side();
    let runner = Helper::spawn_pinned("runner", pin_helper, move || {
        // Acquire: pairs with the Release store below.
        // No deadline: it runs as long as the unparks do, however many were asked for.
        while !s.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    });
    let thread = runner.handle.thread().clone();
    runner.go();
    let w = Window::open(env);
    for _ in 0..n {
        thread.unpark();
    }
    let window = w.close();
    // Release: pairs with the runner's Acquire spin.
    stop.store(true, Ordering::Release);
    runner.finish();
    single(window, n, None)
}

fn peer_tokio_notify(env: &Env, n: u64) -> Measured {
    let notify = tokio::sync::Notify::new();
    let w = Window::open(env);
    for _ in 0..n {
        notify.notify_one();
    }
    single(w.close(), n, None)
}

fn peer_eventfd_pingpong(env: &Env, n: u64) -> Measured {
    let rounds = n.div_ceil(2);
    let a = Arc::new(sys::eventfd(false).expect("creating an eventfd"));
    let b = Arc::new(sys::eventfd(false).expect("creating an eventfd"));
    let (a2, b2): (Arc<OwnedFd>, Arc<OwnedFd>) = (Arc::clone(&a), Arc::clone(&b));
    let (_pinned, pin_helper) = Pinned::main_side();
    let ponger = Helper::spawn_pinned("ponger", pin_helper, move || {
        for _ in 0..rounds {
            sys::eventfd_read(&b2);
            sys::eventfd_write(&a2);
        }
    });
    let w = Window::open(env);
    ponger.go();
    for _ in 0..rounds {
        sys::eventfd_write(&b);
        sys::eventfd_read(&a);
    }
    let window = w.close();
    ponger.finish();
    single(window, 2 * rounds, Some(4 * rounds))
}

/// `rdlock().await` + drop, `n` times, in one task on the main context with no writer:
/// what the read side costs, and what the e3082ab3b3 fix (always kick) adds to it.
fn rdlock_pair(env: &Env, n: u64, policy: UnlockKick) -> Measured {
    let lock = graph_lock();
    lock.set_unlock_kick(policy);
    let w = Window::open(env);
    env.main.block_on(async {
        for _ in 0..n {
            let guard = lock.rdlock().await;
            drop(black_box(guard));
        }
    });
    let window = w.close();
    lock.set_unlock_kick(UnlockKick::Always);
    single(window, n, None)
}

fn peer_std_rwlock_read(env: &Env, n: u64) -> Measured {
    let lock = std::sync::RwLock::new(0u64);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(*lock.read().expect("an uncontended RwLock"));
    }
    single(w.close(), n, Some(0))
}

fn peer_parking_lot_read(env: &Env, n: u64) -> Measured {
    let lock = parking_lot::RwLock::new(0u64);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(*lock.read());
    }
    single(w.close(), n, Some(0))
}
