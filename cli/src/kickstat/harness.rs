//! How the kick-cost scenarios measure: the window that counts syscalls and context
//! switches, the helper thread that lives outside it, and the sleep/wake cycle of the
//! sleeping scenarios and their peer.
//!
//! Every multi-threaded scenario spawns its helper thread *before* the measured window
//! and lets it exit only *after* the window (`Helper`), and all hand-shakes inside the
//! window are spins on atomics: thread creation, thread exit and futex waits would
//! otherwise land in the syscall count. The one exception is the check that a sleeper
//! is blocked in the kernel before it is woken: a `pread(2)` of its procfs state per
//! look, outside the timed part, counted by the probe and taken out of the window's
//! syscall count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aioctx::aio::AioContext;
use aioctx::wait::membarrier_calls;

use super::Env;
use crate::sys;
use crate::thread_probe::ThreadProbe;

/// What a window saw.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closed {
    pub(super) elapsed: Duration,
    /// Syscall entries counted by the kernel, when it counts.
    kernel: Option<u64>,
    /// Syscalls the main context's `stats()` counted: eventfd writes + kernel waits
    /// (io_uring_enter or epoll_wait) + eventfd reads (epoll only).
    pub(super) library: u64,
    /// Voluntary context switches of the main thread: how often it blocked.
    pub(super) switches: u64,
    /// `pread(2)` calls of the main thread's probe during the window.
    probe_reads: u64,
    /// `membarrier` calls of the asymmetric fences' rare sides during the window.
    pub(super) membarriers: u64,
}

impl Closed {
    /// Syscalls of the scenario, less the procfs reads that only checked that the
    /// sleeper was asleep (each one `pread(2)`, counted exactly by the probe) and less
    /// the rare sides' `membarrier` calls (counted exactly by aioctx-wait), which the
    /// report shows in a column of their own: a `wait_while` registration is not a kick.
    pub(super) fn kernel(&self) -> Option<u64> {
        self.kernel
            .map(|k| k.saturating_sub(self.probe_reads + self.membarriers))
    }
}

/// A measured stretch: syscall counts and time between `open` and `close`.
pub(super) struct Window<'a> {
    env: &'a Env,
    count: Option<u64>,
    library: u64,
    switches: u64,
    probe_reads: u64,
    membarriers: u64,
    start: Instant,
}

fn library_syscalls(ctx: &AioContext) -> u64 {
    let s = ctx.stats();
    s.eventfd_writes + s.enters + s.eventfd_reads
}

fn main_switches(env: &Env) -> u64 {
    env.main_probe
        .voluntary_switches()
        .expect("reading the main thread's voluntary context switches")
}

impl<'a> Window<'a> {
    pub(super) fn open(env: &'a Env) -> Self {
        // Settle the main loop first: an SQE it re-armed after its last wake-up (the
        // notify read) would otherwise be submitted inside the window.
        env.main.poll(false);
        // Before the counter is read: reading procfs makes syscalls of its own.
        let switches = main_switches(env);
        let probe_reads = env.main_probe.reads();
        let library = library_syscalls(env.main);
        let membarriers = membarrier_calls();
        let count = env
            .counter
            .as_ref()
            .map(|c| c.read().expect("reading the syscall counter"));
        Self {
            env,
            count,
            library,
            switches,
            probe_reads,
            membarriers,
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
        let library = library_syscalls(self.env.main) - self.library;
        // After the counter was read, for the same reason as in `open`.
        let switches = main_switches(self.env) - self.switches;
        // The waker made its reads before its last wake-up, which the main thread saw
        // before it closed the window: all of them are in.
        let probe_reads = self.env.main_probe.reads() - self.probe_reads;
        let membarriers = membarrier_calls() - self.membarriers;
        Closed {
            elapsed,
            kernel,
            library,
            switches,
            probe_reads,
            membarriers,
        }
    }
}

pub(super) struct Measured {
    pub(super) ops: u64,
    pub(super) timed: Duration,
    pub(super) window: Closed,
    /// Syscalls a peer makes by construction (for `self` mode; `None`: unknown).
    pub(super) explicit: Option<u64>,
}

pub(super) fn single(window: Closed, ops: u64, explicit: Option<u64>) -> Measured {
    Measured {
        ops,
        timed: window.elapsed,
        window,
        explicit,
    }
}

/// A helper thread that starts its work on `go` and exits only after `finish`, so that
/// neither its creation nor its exit falls inside a window. Waits are spins: no futex.
pub(super) struct Helper<T> {
    gate: Arc<AtomicU32>,
    pub(super) handle: JoinHandle<T>,
}

const GATE_STARTING: u32 = 0;
const GATE_READY: u32 = 1;
const GATE_GO: u32 = 2;
const GATE_EXIT: u32 = 3;

/// How long any hand-shake may take before the report gives up instead of hanging.
pub(super) const STUCK: Duration = Duration::from_secs(30);

/// Spins until `cond()`; after [`STUCK`], ends the process with a message naming what
/// did not happen (a stuck helper would otherwise leave the main loop asleep forever).
/// Reading the clock is a vDSO call, not a syscall.
pub(super) fn spin_until(what: &str, mut cond: impl FnMut() -> bool) {
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
    pub(super) fn spawn_pinned(
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

    pub(super) fn go(&self) {
        // Release: pairs with the helper's Acquire spin; publishes the setup.
        self.gate.store(GATE_GO, Ordering::Release);
    }

    pub(super) fn finish(self) -> T {
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
pub(super) struct Pinned {
    saved: Option<Vec<usize>>,
}

impl Pinned {
    /// Pins the caller to its first allowed CPU; `pin_helper` (run by the helper
    /// thread) pins it to the last.
    pub(super) fn main_side() -> (Self, impl Fn() + Send + Clone + 'static) {
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

/// The kicker's side of the sleeping scenarios, one cycle at a time: wait until the
/// sleeper has seen the previous wake-up (`seen`), then until it is blocked in the
/// kernel — its thread state is `S`, read from procfs, and for the loop its `sleeps`
/// counter moved too — and only then, with the clock running, release the next cycle
/// (`count`), wake it, and wait until it signals back through `seen`.
///
/// Returns the time of the timed parts: from the wake-up to the sleeper's signal (the
/// hand-off latency). The procfs reads stay outside it; the window takes their
/// syscalls out of its count ([`Window`]).
fn wake_each_sleep(
    sleeper: &ThreadProbe,
    committed: impl Fn(u64) -> bool,
    count: &AtomicU64,
    seen: &AtomicU64,
    n: u64,
    wake: impl Fn(),
) -> Duration {
    let mut timed = Duration::ZERO;
    for i in 0..n {
        // Acquire: pairs with the sleeper's Release store of `seen`.
        spin_until("the sleeper to see the last wake-up", || {
            seen.load(Ordering::Acquire) == i
        });
        spin_until("the main loop to commit to sleep", || committed(i));
        if let Err(e) = sleeper.wait_asleep("the sleeping thread", STUCK) {
            eprintln!("aioctx kickstat: {e}; giving up");
            std::process::exit(1);
        }
        let start = Instant::now();
        // Release: pairs with the Acquire load of the sleeper's condition.
        count.store(i + 1, Ordering::Release);
        wake();
        // Acquire: pairs with the sleeper's Release store of `seen`.
        spin_until("the sleeper to wake", || seen.load(Ordering::Acquire) > i);
        timed += start.elapsed();
    }
    timed
}

/// The sleeper's side: reads the cycle the kicker released and says it saw it.
fn see_cycle(count: &AtomicU64, seen: &AtomicU64) -> u64 {
    // Acquire: pairs with the Release store in `wake_each_sleep`.
    let c = count.load(Ordering::Acquire);
    // Release: pairs with the kicker's Acquire spins on `seen`.
    seen.store(c, Ordering::Release);
    c
}

/// The state a sleeping scenario's two sides share.
pub(super) struct Cycles {
    count: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
}

impl Cycles {
    pub(super) fn new() -> Self {
        Self {
            count: Arc::new(AtomicU64::new(0)),
            seen: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Spawns the waker: it wakes the main thread `n` times with `wake`, each time once
    /// the main thread is asleep and `committed(cycle)` holds.
    pub(super) fn spawn_waker(
        &self,
        env: &Env,
        n: u64,
        committed: impl Fn(u64) -> bool + Send + 'static,
        wake: impl Fn() + Send + 'static,
    ) -> (Pinned, Helper<Duration>) {
        let (count, seen) = (Arc::clone(&self.count), Arc::clone(&self.seen));
        let probe = Arc::clone(&env.main_probe);
        let (pinned, pin_helper) = Pinned::main_side();
        let waker = Helper::spawn_pinned("waker", pin_helper, move || {
            wake_each_sleep(&probe, committed, &count, &seen, n, wake)
        });
        (pinned, waker)
    }

    pub(super) fn see(&self) -> u64 {
        see_cycle(&self.count, &self.seen)
    }
}
