//! The scenarios of the kick-cost report: what one operation is, and how it is timed
//! and counted.
//! The measuring machinery is in `harness`, the peers in `peers`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aioctx::aio::AioContext;
use aioctx::graph::{UnlockKick, graph_lock};
use aioctx::wait::{kick, num_waiters, wait_while};

use super::Env;
use super::fences::{rdlock_pair_contexts, wait_while_register, wrlock_pair};
use super::harness::{Cycles, Helper, Measured, Pinned, Window, single, spin_until};
use super::peers::{
    peer_eventfd_pingpong, peer_eventfd_write, peer_fence_load, peer_futex_wake,
    peer_parking_lot_read, peer_std_rwlock_read, peer_tokio_notify, peer_unpark,
};

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
    /// A thread blocked in `read(2)` on an eventfd, woken by a write once it is asleep,
    /// signalling back through an atomic: the floor of `kick-sleeping`, measured the
    /// same way. One op is one wake-up cycle.
    PeerEventfdPingpong,
    /// Graph `rdlock().await` + drop in a task, no writer, `UnlockKick::Always` (the fix).
    RdlockPairAlways,
    /// The same with `UnlockKick::WhenWriterSeen` (the pre-fix unlock).
    RdlockPairWhenWriterSeen,
    /// `std::sync::RwLock::read` + drop, uncontended.
    PeerStdRwlockRead,
    /// `parking_lot::RwLock::read` + drop, uncontended.
    PeerParkingLotRead,
    /// Graph rdlock pairs in a task on one thread running its own context.
    RdlockPair1Context,
    /// The same on two threads with two contexts at once: per-thread time per pair.
    RdlockPair2Contexts,
    /// `wait_while(None, || false)`: the kick's rare side (registration + drop).
    WaitWhileRegister,
    /// `wrlock()` + drop, no reader, no busy iothread: the read lock's rare side.
    WrlockPair0Busy,
    /// The same with one iothread spinning on a CPU.
    WrlockPair1Busy,
    /// The same with three iothreads spinning.
    WrlockPair3Busy,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 21] = [
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
        Scenario::RdlockPair1Context,
        Scenario::RdlockPair2Contexts,
        Scenario::WaitWhileRegister,
        Scenario::WrlockPair0Busy,
        Scenario::WrlockPair1Busy,
        Scenario::WrlockPair3Busy,
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
            Scenario::RdlockPair1Context => "rdlock-pair-1-context",
            Scenario::RdlockPair2Contexts => "rdlock-pair-2-contexts",
            Scenario::WaitWhileRegister => "wait-while-register",
            Scenario::WrlockPair0Busy => "wrlock-pair-0-busy",
            Scenario::WrlockPair1Busy => "wrlock-pair-1-busy",
            Scenario::WrlockPair3Busy => "wrlock-pair-3-busy",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What one operation is.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::KickSleeping | Scenario::NotifySleeping | Scenario::PeerEventfdPingpong => {
                "cycle"
            }
            Scenario::RdlockPairAlways
            | Scenario::RdlockPairWhenWriterSeen
            | Scenario::PeerStdRwlockRead
            | Scenario::PeerParkingLotRead
            | Scenario::RdlockPair1Context
            | Scenario::RdlockPair2Contexts
            | Scenario::WrlockPair0Busy
            | Scenario::WrlockPair1Busy
            | Scenario::WrlockPair3Busy => "pair",
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
            Scenario::PeerEventfdWrite
            | Scenario::PeerFutexWake
            | Scenario::WaitWhileRegister
            | Scenario::WrlockPair0Busy => 10_000,
            Scenario::WrlockPair1Busy | Scenario::WrlockPair3Busy => 2_000,
            _ => 100_000,
        }
    }

    /// Whether the main thread is the one that may sleep — the loop, or the peer's
    /// reader — so that its voluntary context switches per op say how often it slept.
    fn main_thread_waits(self) -> bool {
        matches!(
            self,
            Scenario::KickBusy
                | Scenario::KickSleeping
                | Scenario::NotifyBusy
                | Scenario::NotifySleeping
                | Scenario::PeerEventfdPingpong
        )
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
            Scenario::RdlockPair1Context => rdlock_pair_contexts(env, n, 1),
            Scenario::RdlockPair2Contexts => rdlock_pair_contexts(env, n, 2),
            Scenario::WaitWhileRegister => wait_while_register(env, n),
            Scenario::WrlockPair0Busy => wrlock_pair(env, n, 0),
            Scenario::WrlockPair1Busy => wrlock_pair(env, n, 1),
            Scenario::WrlockPair3Busy => wrlock_pair(env, n, 3),
        };
        let syscalls = match (m.window.kernel(), self.is_library()) {
            (Some(k), _) => Some(k),
            (None, true) => Some(m.window.library),
            (None, false) => m.explicit,
        };
        Sample {
            ops: m.ops,
            ns: m.timed.as_nanos() as f64,
            syscalls,
            membarriers: m.window.membarriers,
            slept: self.main_thread_waits().then_some(m.window.switches),
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
    /// Syscalls made by the whole process during the window (`None`: not countable),
    /// less the rare sides' `membarrier` calls, which are counted apart.
    pub syscalls: Option<u64>,
    /// `membarrier` calls of the asymmetric fences' rare sides during the window.
    pub membarriers: u64,
    /// Voluntary context switches of the main thread during the window, where the main
    /// thread is the one that may sleep (`None` elsewhere).
    pub slept: Option<u64>,
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

/// "The main loop committed to sleep for cycle `i`": its `sleeps` counter moved past
/// the count before the run (`base`) plus `i`.
fn loop_committed(main: &'static Arc<AioContext>, base: u64) -> impl Fn(u64) -> bool {
    move |i| main.stats().sleeps > base + i
}

fn kick_sleeping(env: &Env, n: u64) -> Measured {
    let cycles = Cycles::new();
    let committed = loop_committed(env.main, env.main.stats().sleeps);
    let (_pinned, kicker) = cycles.spawn_waker(env, n, committed, kick);
    let w = Window::open(env);
    kicker.go();
    wait_while(None, || cycles.see() < n);
    let window = w.close();
    Measured {
        ops: n,
        timed: kicker.finish(),
        window,
        explicit: None,
    }
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
    let cycles = Cycles::new();
    let main = env.main;
    let committed = loop_committed(main, main.stats().sleeps);
    let (_pinned, notifier) = cycles.spawn_waker(env, n, committed, || main.notify());
    let w = Window::open(env);
    notifier.go();
    while cycles.see() < n {
        main.poll(true);
    }
    let window = w.close();
    Measured {
        ops: n,
        timed: notifier.finish(),
        window,
        explicit: None,
    }
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
