#![cfg(not(loom))]
//! `kick`, `wait_while` and `bh_oneshot` against real contexts and iothreads.
//!
//! The main context has one home thread per process, so every test that touches it
//! runs its body on one long-lived "main loop" thread, one at a time (`on_main`),
//! with a watchdog that turns a hang into a failure naming the test.
//!
//! The tests assert process-wide state (`num_waiters()`, the main context's stats), so
//! this binary keeps one rule: every `wait_while`, every `bh_oneshot` and every kick
//! runs inside an `on_main` body, and is finished when the body returns (a test whose
//! iothreads kick waits for them to be done). So while a body runs, the waiters and
//! kicks in the process are its own. Checks of what a panicking wait leaves behind run
//! in a binary of their own (`wait_misuse.rs`).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use aioctx_aio::{AioContext, IoThread, main_context};
use aioctx_testkit::{allocs, panic_message as message, wait_until as spin_until};
use aioctx_wait::{bh_oneshot, kick, num_waiters, wait_while};

#[global_allocator]
static ALLOC: aioctx_testkit::CountingAlloc = aioctx_testkit::CountingAlloc;

const WATCHDOG: Duration = Duration::from_secs(20);

/// Runs `f` on the main context's home thread (the test kit's one main-loop thread) and
/// returns its value (or its panic); a hang fails the test with its name and
/// `num_waiters()`.
fn on_main<R: Send + 'static>(_test: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    aioctx_testkit::on_main_with(|| format!("num_waiters = {}", num_waiters()), f)
}

#[test]
fn kick_without_waiter_schedules_nothing_and_allocates_nothing() {
    on_main("kick_without_waiter", || {
        let main = main_context();
        // A dummy BH left by an earlier test's last kick may still be pending.
        while main.poll(false) {}
        let before = main.stats();
        let a = allocs();
        for _ in 0..1000 {
            kick();
        }
        assert_eq!(allocs() - a, 0, "kick() with no waiter allocated");
        let after = main.stats();
        assert_eq!(
            after.notifies, before.notifies,
            "kick() with no waiter notified"
        );
        assert_eq!(after.eventfd_writes, before.eventfd_writes);
        assert!(!main.poll(false), "kick() with no waiter scheduled a BH");
        assert_eq!(main.stats().bhs_run, before.bhs_run);
    });
}

#[test]
fn kick_with_waiter_runs_one_dummy_bh_and_allocates_nothing() {
    on_main("kick_with_waiter", || {
        let main = main_context();
        let mut step = 0;
        let mut seen = (0, 0, u64::MAX);
        let bhs_before = main.stats().bhs_run;
        let waited = wait_while(None, || {
            step += 1;
            if step > 1 {
                return false;
            }
            kick(); // first kick with a waiter: creates the dummy BH once
            let before = main.stats();
            let a = allocs();
            for _ in 0..100 {
                kick();
            }
            seen = (
                num_waiters(),
                main.stats().eventfd_writes - before.eventfd_writes,
                allocs() - a,
            );
            true
        });
        assert!(waited);
        let (waiters, writes, allocated) = seen;
        assert_eq!(waiters, 1);
        assert_eq!(writes, 0, "kicks to an awake main loop wrote the eventfd");
        assert_eq!(allocated, 0, "kick() with a waiter allocated");
        assert_eq!(
            main.stats().bhs_run - bhs_before,
            1,
            "101 kicks, one dummy BH run"
        );
        assert_eq!(num_waiters(), 0);
    });
}

#[test]
fn wait_while_false_condition_returns_false_without_polling() {
    on_main("wait_while_false", || {
        let main = main_context();
        let polls = main.stats().polls;
        let mut evaluated = 0;
        assert!(!wait_while(None, || {
            evaluated += 1;
            assert_eq!(num_waiters(), 1, "registered before the first evaluation");
            false
        }));
        assert!(!wait_while(Some(main), || false));
        assert_eq!(evaluated, 1);
        assert_eq!(
            main.stats().polls,
            polls,
            "wait_while polled with a false condition"
        );
        assert_eq!(num_waiters(), 0);
    });
}

#[test]
fn wait_while_returns_once_iothread_changes_condition_and_kicks() {
    let io = IoThread::new("io-kick").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (d, ctx) = (done.clone(), io.ctx().clone());
    let seen_waiters = on_main("wait_while_iothread", move || {
        let seen = Arc::new(AtomicU32::new(0));
        let (s, d2) = (seen.clone(), d.clone());
        ctx.schedule_oneshot(move || {
            // Let the main loop register and fall asleep, then change and kick.
            spin_until("the main loop's registration", || num_waiters() > 0);
            s.store(num_waiters(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            d2.store(true, Ordering::Release);
            kick();
        });
        assert!(wait_while(Some(&ctx), || !d.load(Ordering::Acquire)));
        assert_eq!(num_waiters(), 0);
        seen.load(Ordering::Relaxed)
    });
    assert!(done.load(Ordering::Acquire));
    assert_eq!(seen_waiters, 1);
}

#[test]
fn condition_change_without_kick_is_slept_through_until_the_kick() {
    let io = IoThread::new("io-nokick").unwrap();
    let ctx = io.ctx().clone();
    let still_waiting = on_main("condition_change_without_kick", move || {
        let main = main_context();
        let done = Arc::new(AtomicBool::new(false));
        let still_waiting = Arc::new(AtomicU32::new(0));
        let (d, s) = (done.clone(), still_waiting.clone());
        let base = main.stats().sleeps;
        ctx.schedule_oneshot(move || {
            spin_until("the main loop to fall asleep in wait_while", || {
                num_waiters() > 0 && main_context().stats().sleeps > base
            });
            // Break the rule: change the condition without a kick.
            d.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(100));
            s.store(num_waiters(), Ordering::Relaxed);
            // Now follow it: the kick wakes the waiter, which sees the change.
            kick();
        });
        assert!(wait_while(None, || !done.load(Ordering::Acquire)));
        still_waiting.load(Ordering::Relaxed)
    });
    assert_eq!(
        still_waiting, 1,
        "without a kick, the sleeping main loop must not have noticed the change"
    );
}

#[test]
fn wait_while_many_kicks_from_two_iothreads() {
    const PER_THREAD: u32 = 2000;
    let ios = [
        IoThread::new("io-a").unwrap(),
        IoThread::new("io-b").unwrap(),
    ];
    let ctxs: Vec<Arc<AioContext>> = ios.iter().map(|io| io.ctx().clone()).collect();
    on_main("wait_while_many_kicks", move || {
        let count = Arc::new(AtomicU32::new(0));
        let mut started = false;
        // The kickers start from the first evaluation, once the waiter is registered,
        // so that it waits whatever their speed.
        assert!(wait_while(None, || {
            if !started {
                started = true;
                for ctx in &ctxs {
                    let c = count.clone();
                    let target = ctx.clone();
                    ctx.schedule_oneshot(move || step(target, c, PER_THREAD));
                }
                return true;
            }
            count.load(Ordering::Acquire) < 2 * PER_THREAD
        }));
        assert_eq!(count.load(Ordering::Relaxed), 2 * PER_THREAD);
        // The last increment comes before its kick: wait until each iothread has run
        // its last step to the end, so no kick of this test lands in the next one.
        for ctx in &ctxs {
            bh_oneshot(ctx, || ());
        }
    });

    /// One increment and kick per BH run, rescheduling itself on its own context.
    fn step(ctx: Arc<AioContext>, count: Arc<AtomicU32>, left: u32) {
        count.fetch_add(1, Ordering::Release);
        kick();
        if left > 1 {
            let again = ctx.clone();
            ctx.schedule_oneshot(move || step(again, count, left - 1));
        }
    }
}

#[test]
fn wait_while_on_own_iothread_context_polls_it() {
    let io = IoThread::new("io-own").unwrap();
    let ctx = io.ctx().clone();
    let (waited, own_polls) = on_main("wait_while_own_ctx", move || {
        let inner = ctx.clone();
        bh_oneshot(&ctx, move || {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            // A BH on the iothread's own context changes the condition.
            inner.schedule_oneshot(move || f.store(true, Ordering::Relaxed));
            // (Polling the main context from here would panic: this is not its home
            // thread. So the check is that the wait polled its own context.)
            let polls = inner.stats().polls;
            let waited = wait_while(Some(&inner), || !flag.load(Ordering::Relaxed));
            (waited, inner.stats().polls - polls)
        })
    });
    assert!(waited);
    assert!(
        own_polls > 0,
        "an iothread waiting on its own context did not poll it"
    );
}

#[test]
fn bh_oneshot_returns_value_from_ctx_thread() {
    let io = IoThread::new("io-value").unwrap();
    let ctx = io.ctx().clone();
    let (name, value) = on_main("bh_oneshot_value", move || {
        let name = bh_oneshot(&ctx, || std::thread::current().name().map(str::to_owned));
        (name, bh_oneshot(&ctx, || vec![1u8, 2, 3]))
    });
    assert_eq!(name.as_deref(), Some("io-value"));
    assert_eq!(value, vec![1, 2, 3]);
}

#[test]
fn bh_oneshot_on_main_context_runs_on_main_loop() {
    let name = on_main("bh_oneshot_main", || {
        bh_oneshot(main_context(), || {
            std::thread::current().name().map(str::to_owned)
        })
    });
    assert_eq!(name.as_deref(), Some("main-loop"));
}

#[test]
fn bh_oneshot_propagates_panic_and_ctx_survives() {
    let io = IoThread::new("io-panic").unwrap();
    let ctx = io.ctx().clone();
    let (msg, after) = on_main("bh_oneshot_panic", move || {
        let err = panic::catch_unwind(AssertUnwindSafe(|| {
            bh_oneshot(&ctx, || -> u32 { panic!("boom {}", 42) })
        }))
        .expect_err("the closure's panic must reach the caller");
        assert_eq!(num_waiters(), 0);
        (message(&*err), bh_oneshot(&ctx, || 7))
    });
    assert_eq!(msg, "boom 42");
    assert_eq!(
        after, 7,
        "the iothread keeps running after a panicking closure"
    );
}

/// `wait_while(Some(own))` on an iothread is woken by a `kick` from another thread
/// after that thread changed the condition (QEMU's `aio_wait_kick` wakes only the main
/// loop; here the kick also notifies iothreads waiting on their own context).
#[test]
fn regress_kick_wakes_iothread_waiting_on_own_context() {
    let io = IoThread::new("io-own-kick").unwrap();
    let ctx = io.ctx().clone();
    let result = on_main("kick_wakes_iothread_waiter", move || {
        let done = Arc::new(AtomicBool::new(false));
        // The iothread's sleep count when it last evaluated the condition.
        let at_eval = Arc::new(AtomicU64::new(u64::MAX));
        let (tx, rx) = mpsc::channel();
        let (d, e, c) = (done.clone(), at_eval.clone(), ctx.clone());
        ctx.schedule_oneshot(move || {
            let waited = wait_while(Some(&c), || {
                e.store(c.stats().sleeps, Ordering::Release);
                !d.load(Ordering::Acquire)
            });
            let _ = tx.send(waited);
        });
        // Change the condition only once the iothread has gone to sleep after its last
        // evaluation: from then on only an event can wake it.
        spin_until("the iothread to sleep in wait_while", || {
            let e = at_eval.load(Ordering::Acquire);
            e != u64::MAX && ctx.stats().sleeps > e
        });
        done.store(true, Ordering::Release);
        kick();
        rx.recv_timeout(WATCHDOG)
    });
    match result {
        Ok(waited) => assert!(waited),
        Err(_) => {
            // The iothread sleeps for good: joining it would hang the test binary.
            std::mem::forget(io);
            panic!("the kick did not wake the iothread waiting on its own context");
        }
    }
}

/// Every test of this binary again, in a child process per fence mode (the mode is
/// process-wide and chosen once, so a second mode needs a second process).
#[test]
fn every_case_again_in_both_fence_modes() {
    const CHILD: &str = "AIOCTX_WAIT_FENCES_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    aioctx_testkit::rerun_in_each_fence_mode(
        CHILD,
        &["--skip", "every_case_again_in_both_fence_modes"],
    );
}
