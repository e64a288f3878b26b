//! loom models of the wait/kick pair.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-wait --release --lib`.
//!
//! The waiter runs the real `AioWait::wait_while` and the kicker the real
//! `AioWait::kick`; only the loops' sleep (the [`EventLoop`] trait) is a model: a
//! `loom::sync::Notify`, which like the dummy bottom half (scheduled until the loop
//! polls) or a context's `notify` keeps a wake-up that arrives before the wait — the aio
//! crate's own model proves that a BH or notify arriving while the loop falls asleep is
//! not lost. The kicker does what every condition changer does: change the condition,
//! then kick. loom reports a deadlock if the waiter sleeps on with the condition already
//! changed. The mutations replace one step of the protocol by its broken version.
//!
//! loom cannot model `membarrier(2)` — an inter-processor interrupt that makes other
//! threads fence is outside its memory model — so under loom `light_fence` ([K1]) and
//! `heavy_fence` ([W1]) are both SeqCst fences: the symmetric protocol, which is what
//! the membarrier guarantee reduces to (the proof is in `fence.rs`). The asymmetric
//! mode itself is exercised by the integration tests under `AIOCTX_FENCES=asymmetric`.
//! So under loom the `MUST_FENCE` bit of the count stays set, and every kick reads the
//! word, fences and reads the count again: the symmetric kick, as shipped.
//!
//! The mutations share their state through `Box::leak`, not `Arc`: a `should_panic`
//! test unwinds out of the model, and dropping loom objects during that unwinding would
//! abort the run.

use loom::sync::Notify;

use crate::protocol::{AioWait, EventLoop, Registration};
use crate::sync::atomic::{AtomicUsize, Ordering};

/// A loop whose sleep is a `Notify`.
#[derive(Clone, Copy)]
struct ModelLoop(&'static Notify);

impl EventLoop for ModelLoop {
    fn sleep(&self) {
        self.0.wait();
    }

    fn wake(&self) {
        self.0.notify();
    }
}

/// The state of one model run: the protocol, a condition (`pending != 0`: keep
/// waiting), the main loop and an iothread's loop.
struct Model {
    wait: AioWait<ModelLoop>,
    pending: AtomicUsize,
    main: ModelLoop,
    io: ModelLoop,
}

fn notify() -> &'static Notify {
    Box::leak(Box::new(Notify::new()))
}

impl Model {
    fn leak(pending: usize) -> &'static Model {
        Box::leak(Box::new(Model {
            wait: AioWait::new(),
            pending: AtomicUsize::new(pending),
            main: ModelLoop(notify()),
            io: ModelLoop(notify()),
        }))
    }

    /// The condition: work left. Relaxed: it is ordered by the [W1]/[K1] pair, as in
    /// real callers.
    fn busy(&self) -> bool {
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// `wait_while(None, || pending != 0)` on the main loop; returns whether it waited.
    fn wait_main(&'static self) -> bool {
        self.wait.wait_while(&self.main, true, || self.busy())
    }

    /// `wait_while(Some(own), || pending != 0)` on an iothread's own loop.
    fn wait_io(&'static self) -> bool {
        self.wait.wait_while(&self.io, false, || self.busy())
    }

    /// The waiter loop with a mutated registration.
    fn wait_main_with(
        &'static self,
        register: fn(&AioWait<ModelLoop>) -> Registration<'_, ModelLoop>,
    ) {
        let _registered = register(&self.wait);
        while self.busy() {
            self.main.sleep();
        }
    }

    /// A condition changer: one unit of work done, then the real kick.
    fn finish_one(&'static self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.wait.kick(|| self.main.wake());
    }

    /// A condition changer whose kick is `kick`, a mutation.
    fn finish_one_with(&'static self, kick: fn(&'static Model)) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        kick(self);
    }
}

fn run(workers: usize, waiter: fn(&'static Model) -> bool) {
    let m = Model::leak(workers);
    let threads: Vec<_> = (0..workers)
        .map(|_| loom::thread::spawn(move || m.finish_one()))
        .collect();
    waiter(m);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(m.pending.load(Ordering::Relaxed), 0);
    assert_eq!(m.wait.num_waiters(), 0, "the registration was dropped");
}

/// The protocol as shipped: a condition set and kicked by another thread while the
/// waiter registers, reads it and goes to sleep is never slept through.
#[test]
fn kick_after_condition_change_never_lost() {
    loom::model(|| run(1, Model::wait_main));
}

/// Two condition changers: the waiter re-checks after each wake-up and leaves once
/// both are done, whatever the interleaving of their kicks.
#[test]
fn two_kickers_waiter_sees_both() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| run(2, Model::wait_main));
}

/// An iothread waiting on its own loop is woken by a kick from another thread ([AW5]).
#[test]
fn kick_wakes_iothread_waiting_on_own_loop() {
    loom::model(|| run(1, Model::wait_io));
}

/// When the condition is already false, the waiter returns without sleeping and says
/// it did not wait.
#[test]
fn condition_already_false_does_not_wait() {
    loom::model(|| {
        let m = Model::leak(0);
        assert!(!m.wait_main());
        assert!(!m.wait_io());
    });
}

fn run_mutated(waiter: fn(&'static Model), kick: fn(&'static Model)) {
    let m = Model::leak(1);
    let t = loom::thread::spawn(move || m.finish_one_with(kick));
    waiter(m);
    t.join().unwrap();
}

/// Mutation: QEMU's kick before commit 7455ff1a, with no barrier between the caller's
/// condition store and the count load. loom must find the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_kick_without_fence_loses_wakeup() {
    loom::model(|| {
        run_mutated(
            |m| {
                m.wait_main();
            },
            |m| {
                if m.wait.must_kick_without_fence() {
                    m.wait.wake_all(|| m.main.wake());
                }
            },
        )
    });
}

/// Mutation: a waiter that trusts its SeqCst increment to order the condition load
/// (QEMU before `smp_mb__after_rmw`). loom must find the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_register_without_fence_loses_wakeup() {
    loom::model(|| {
        run_mutated(
            |m| m.wait_main_with(AioWait::register_rmw_only),
            |m| m.wait.kick(|| m.main.wake()),
        )
    });
}

/// Mutation: a kick that wakes only the main loop (QEMU's `aio_wait_kick`, and this
/// crate before [AW5]): an iothread waiting on its own loop sleeps on.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_kick_only_main_loop_loses_iothread_wakeup() {
    loom::model(|| {
        run_mutated(
            |m| {
                m.wait_io();
            },
            |m| {
                if m.wait.must_kick() {
                    m.main.wake();
                }
            },
        )
    });
}
