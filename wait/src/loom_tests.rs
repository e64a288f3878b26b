//! loom models of the wait/kick pair (DESIGN §7, §9).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-wait --release --lib`.
//!
//! The waiter performs the same steps, in the same order, as `wait_while`: register
//! (`AioWait::register`), then evaluate the condition and sleep while it holds. The
//! main loop's sleep is a `loom::sync::Notify`: like the dummy bottom half (which stays
//! scheduled until the loop polls) it keeps a wake-up that arrives before the wait, and
//! the aio crate's own model proves that a BH scheduled while the loop falls asleep is
//! not lost. The kicker does what every condition changer does: change the condition,
//! then `kick` (`AioWait::must_kick`, and on `true` the wake-up). loom reports a
//! deadlock if the waiter sleeps on with the condition already changed.
//!
//! The mutations share their state through `Box::leak`, not `Arc`: a `should_panic`
//! test unwinds out of the model, and dropping loom objects during that unwinding would
//! abort the run.

use loom::sync::Notify;

use crate::protocol::{AioWait, Registration};
use crate::sync::atomic::{AtomicUsize, Ordering};

/// The state of one model run: the protocol, a condition (`pending != 0`: keep
/// waiting), and the main loop's sleep.
struct Model {
    wait: AioWait,
    pending: AtomicUsize,
    sleep: Notify,
}

impl Model {
    fn leak(pending: usize) -> &'static Model {
        Box::leak(Box::new(Model {
            wait: AioWait::new(),
            pending: AtomicUsize::new(pending),
            sleep: Notify::new(),
        }))
    }

    /// `wait_while(None, || pending != 0)`, with `register` chosen by the test; returns
    /// whether it waited.
    fn wait_while(&'static self, register: fn(&AioWait) -> Registration<'_>) -> bool {
        let _registered = register(&self.wait);
        let mut waited = false;
        // Relaxed: the condition is ordered by the [W1]/[K1] pair, as in real callers.
        while self.pending.load(Ordering::Relaxed) != 0 {
            self.sleep.wait();
            waited = true;
        }
        waited
    }

    /// A condition changer: one unit of work done, then the kick.
    fn finish_one(&'static self, must_kick: fn(&AioWait) -> bool) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if must_kick(&self.wait) {
            self.sleep.notify();
        }
    }
}

fn run(
    workers: usize,
    register: fn(&AioWait) -> Registration<'_>,
    must_kick: fn(&AioWait) -> bool,
) {
    let m = Model::leak(workers);
    let threads: Vec<_> = (0..workers)
        .map(|_| loom::thread::spawn(move || m.finish_one(must_kick)))
        .collect();
    m.wait_while(register);
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
    loom::model(|| run(1, AioWait::register, AioWait::must_kick));
}

/// Two condition changers: the waiter re-checks after each wake-up and leaves once
/// both are done, whatever the interleaving of their kicks.
#[test]
fn two_kickers_waiter_sees_both() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| run(2, AioWait::register, AioWait::must_kick));
}

/// When the condition is already false, the waiter returns without sleeping and says
/// it did not wait.
#[test]
fn condition_already_false_does_not_wait() {
    loom::model(|| {
        let m = Model::leak(0);
        assert!(!m.wait_while(AioWait::register));
    });
}

/// Mutation: QEMU's kick before commit 7455ff1a, with no barrier between the caller's
/// condition store and the count load. loom must find the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_kick_without_fence_loses_wakeup() {
    loom::model(|| run(1, AioWait::register, AioWait::must_kick_without_fence));
}

/// Mutation: a waiter that trusts its SeqCst increment to order the condition load
/// (QEMU before `smp_mb__after_rmw`). loom must find the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn mutation_register_without_fence_loses_wakeup() {
    loom::model(|| run(1, AioWait::register_rmw_only, AioWait::must_kick));
}
