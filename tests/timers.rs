//! Timer semantics (QEMU util/qemu-timer.c): `modify_anticipate`, callbacks that re-arm
//! or delete their own timer, deadline order, and a timer made earliest from another
//! thread waking a sleeping loop (checked through stats and progress, never time).
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use aioctx::aio::{ClockType, Timer};
use common::{Watchdog, new_ctx, wait_asleep};

const SEC: i64 = 1_000_000_000;

fn now() -> i64 {
    ClockType::Realtime.now_ns()
}

#[test]
fn modify_anticipate_only_moves_the_deadline_earlier() {
    let ctx = new_ctx();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    let t = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(t.clock(), ClockType::Realtime);
    assert!(!t.pending());
    assert_eq!(t.expire_time(), None);

    let base = now() + 100 * SEC;
    // On a disarmed timer, anticipate arms it.
    t.modify_anticipate(base);
    assert!(t.pending());
    assert_eq!(t.expire_time(), Some(base));
    // Later: ignored.
    t.modify_anticipate(base + SEC);
    assert_eq!(t.expire_time(), Some(base));
    // Equal: unchanged.
    t.modify_anticipate(base);
    assert_eq!(t.expire_time(), Some(base));
    // Earlier: taken.
    t.modify_anticipate(base - SEC);
    assert_eq!(t.expire_time(), Some(base - SEC));
    // A plain modify may move it later again.
    t.modify(base + 2 * SEC);
    assert_eq!(t.expire_time(), Some(base + 2 * SEC));
    t.delete();
    assert!(!t.pending());
    assert_eq!(t.expire_time(), None);
    t.delete(); // deleting a disarmed timer is fine

    // Anticipating into the past fires on the next poll, once.
    t.modify(base);
    t.modify_anticipate(now() - SEC);
    assert!(ctx.poll(false));
    assert_eq!(fired.load(Ordering::Relaxed), 1);
    assert!(!t.pending());
    assert!(!ctx.poll(false));
    assert_eq!(fired.load(Ordering::Relaxed), 1);
}

#[test]
fn callback_rearms_its_own_timer() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let fired = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Timer>>> = Arc::default();
    let (f, s) = (Arc::clone(&fired), Arc::clone(&slot));
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let n = f.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = s.lock().unwrap();
        let t = slot.as_ref().unwrap();
        assert!(!t.pending(), "a running timer is still pending");
        if n < 5 {
            t.modify(now() + 1_000_000);
            assert!(t.pending());
        }
    });
    timer.modify(now());
    *slot.lock().unwrap() = Some(timer);

    let mut polls = 0;
    while fired.load(Ordering::Relaxed) < 5 {
        let before = fired.load(Ordering::Relaxed);
        let progress = ctx.poll(true);
        let after = fired.load(Ordering::Relaxed);
        // A poll runs a re-armed timer at most once (it is due in the future), and
        // reports progress exactly when it ran it.
        assert!(
            after - before <= 1,
            "the timer ran {} times in one poll",
            after - before
        );
        assert_eq!(progress, after > before);
        polls += 1;
    }
    assert!(polls >= 5);
    let t = slot.lock().unwrap().take().unwrap();
    assert!(!t.pending(), "re-armed after the last run");
    while ctx.poll(false) {}
    assert!(!ctx.poll(false));
    assert_eq!(fired.load(Ordering::Relaxed), 5);
    assert_eq!(ctx.stats().timers_run, 5);
}

#[test]
fn callback_deletes_its_own_timer() {
    let ctx = new_ctx();
    let fired = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Timer>>> = Arc::default();
    let (f, s) = (Arc::clone(&fired), Arc::clone(&slot));
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
        // Re-arm, then drop the handle from inside the callback: it must never run again.
        let t = s.lock().unwrap().take().unwrap();
        t.modify(0);
        drop(t);
    });
    timer.modify(0);
    *slot.lock().unwrap() = Some(timer);
    assert!(ctx.poll(false));
    assert!(!ctx.poll(false));
    assert!(!ctx.poll(false));
    assert_eq!(fired.load(Ordering::Relaxed), 1);
    assert_eq!(Arc::strong_count(&fired), 1, "the callback was not freed");
}

#[test]
fn expired_timers_run_in_deadline_order() {
    let ctx = new_ctx();
    let log = Arc::new(Mutex::new(Vec::new()));
    let base = now();
    let deadlines = [5, 1, 4, 2, 3];
    let timers: Vec<Timer> = deadlines
        .iter()
        .map(|&d| {
            let l = Arc::clone(&log);
            let t = ctx.timer_new(ClockType::Realtime, move || l.lock().unwrap().push(d));
            t.modify(base + d * 1_000_000);
            t
        })
        .collect();
    // A far timer that must not fire.
    let far = ctx.timer_new(ClockType::Realtime, || panic!("the far timer fired"));
    far.modify(base + 100 * SEC);
    thread::sleep(Duration::from_millis(6));
    assert!(ctx.poll(false));
    assert_eq!(*log.lock().unwrap(), [1, 2, 3, 4, 5]);
    assert!(timers.iter().all(|t| !t.pending()));
    assert!(far.pending());
    assert!(!ctx.poll(false));
}

#[test]
fn timer_made_earliest_from_another_thread_wakes_a_sleeping_loop() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    // The loop sleeps with this one's deadline, 100 s away, as its kernel timeout.
    let far = ctx.timer_new(ClockType::Realtime, || panic!("the far timer fired"));
    let near = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    let later = ctx.timer_new(ClockType::Realtime, || panic!("the later timer fired"));

    let (ctx2, fired2) = (Arc::clone(&ctx), Arc::clone(&fired));
    let sleeper = thread::spawn(move || {
        far.modify(now() + 100 * SEC);
        while ctx2.poll(false) {}
        // Polls until the near timer ran; returns the results of every poll.
        let mut results = Vec::new();
        while fired2.load(Ordering::Relaxed) == 0 {
            results.push(ctx2.poll(true));
        }
        far.delete();
        results
    });

    wait_asleep(&ctx, 1);
    let asleep = ctx.stats();
    // Not the earliest: no notify at all.
    later.modify(now() + 200 * SEC);
    assert_eq!(ctx.stats().notifies, asleep.notifies);
    // Now the earliest: one notify, one eventfd write, and the loop runs it.
    near.modify(now());
    let results = sleeper.join().expect("sleeper panicked");
    assert_eq!(fired.load(Ordering::Relaxed), 1);
    assert_eq!(results, [true], "the woken poll should have run the timer");
    let after = ctx.stats();
    assert_eq!(after.notifies - asleep.notifies, 1);
    assert_eq!(after.eventfd_writes - asleep.eventfd_writes, 1);
    assert_eq!(after.sleeps, asleep.sleeps);
    assert_eq!(after.timers_run, 1);
    later.delete();
}

#[test]
fn timers_armed_from_many_threads_all_fire_once() {
    // The loop sleeps whenever it runs dry; each new earliest deadline must wake it, or
    // it sleeps with a stale (or no) timeout and the watchdog reports the hang.
    const THREADS: usize = 4;
    const PER: usize = 500;
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    ctx.poll(false);
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..THREADS * PER).map(|_| AtomicUsize::new(0)).collect());
    let fired = Arc::new(AtomicUsize::new(0));
    let timers: Vec<Timer> = (0..THREADS * PER)
        .map(|i| {
            let (c, f) = (Arc::clone(&counts), Arc::clone(&fired));
            ctx.timer_new(ClockType::Realtime, move || {
                c[i].fetch_add(1, Ordering::Relaxed);
                f.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    thread::scope(|s| {
        for chunk in timers.chunks(PER) {
            s.spawn(move || {
                for (k, t) in chunk.iter().enumerate() {
                    // Deadlines from now to 2 ms ahead, out of order.
                    t.modify(now() + ((k * 7919) % 2000) as i64 * 1000);
                    if k % 50 == 0 {
                        thread::yield_now();
                    }
                }
            });
        }
        while fired.load(Ordering::Relaxed) < THREADS * PER {
            ctx.poll(true);
        }
    });
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(c.load(Ordering::Relaxed), 1, "timer {i}");
    }
    assert!(timers.iter().all(|t| !t.pending()));
    assert!(!ctx.poll(false));
}

#[test]
fn regress_timer_rearmed_into_the_past_runs_once_per_poll() {
    // A callback that re-arms its own timer into the past must not loop inside one
    // `poll`: the re-armed timer is due at the next poll, after BHs and fd handlers.
    const LIMIT: usize = 1000;
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let fired = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Timer>>> = Arc::default();
    let (f, s) = (Arc::clone(&fired), Arc::clone(&slot));
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        // Stops re-arming after LIMIT runs, so the unfixed loop ends and the test fails
        // on its assertion instead of hanging.
        if f.fetch_add(1, Ordering::Relaxed) + 1 < LIMIT {
            s.lock().unwrap().as_ref().unwrap().modify(now() - SEC);
        }
    });
    timer.modify(now() - SEC);
    *slot.lock().unwrap() = Some(timer);
    let bh_ran = Arc::new(AtomicUsize::new(0));
    let b = Arc::clone(&bh_ran);
    let bh = ctx.bh_new(move || {
        b.fetch_add(1, Ordering::Relaxed);
    });
    for poll in 1..=3 {
        bh.schedule();
        assert!(ctx.poll(true), "poll {poll}: the due timer is progress");
        assert_eq!(
            fired.load(Ordering::Relaxed),
            poll,
            "poll {poll} ran the re-armed timer more than once"
        );
        assert_eq!(bh_ran.load(Ordering::Relaxed), poll, "a BH waited");
        assert!(slot.lock().unwrap().as_ref().unwrap().pending());
    }
    slot.lock().unwrap().take();
}

#[test]
fn regress_timer_armed_into_the_past_by_another_timer_waits_for_the_next_poll() {
    // The same rule for a timer armed (not re-armed) during a pass by another timer's
    // callback: every timer armed during a pass is due at the next poll at the earliest.
    let ctx = new_ctx();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let second = Arc::new(ctx.timer_new(ClockType::Realtime, move || {
        l.lock().unwrap().push("second")
    }));
    let (l, s) = (Arc::clone(&log), Arc::clone(&second));
    let first = ctx.timer_new(ClockType::Realtime, move || {
        l.lock().unwrap().push("first");
        s.modify(now() - SEC);
    });
    first.modify(now() - SEC);
    assert!(ctx.poll(false));
    assert_eq!(*log.lock().unwrap(), ["first"]);
    assert!(second.pending());
    assert!(ctx.poll(false));
    assert_eq!(*log.lock().unwrap(), ["first", "second"]);
}

/// A waker that counts its wakes.
struct CountWaker(AtomicUsize);

impl std::task::Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn sleep_wakes_the_waker_of_its_last_poll() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let prev = ctx.make_current();
    let (first, second) = (
        Arc::new(CountWaker(AtomicUsize::new(0))),
        Arc::new(CountWaker(AtomicUsize::new(0))),
    );
    let (w1, w2) = (
        Waker::from(Arc::clone(&first)),
        Waker::from(Arc::clone(&second)),
    );
    let mut sleep = Box::pin(aioctx::aio::sleep(Duration::from_millis(1)));
    assert!(
        sleep
            .as_mut()
            .poll(&mut Context::from_waker(&w1))
            .is_pending()
    );
    // The future moves to another task (another waker): that one must be woken.
    let mut cx2 = Context::from_waker(&w2);
    let mut done = sleep.as_mut().poll(&mut cx2).is_ready();
    while !done {
        ctx.poll(true);
        if second.0.load(Ordering::Relaxed) > 0 {
            done = matches!(sleep.as_mut().poll(&mut cx2), Poll::Ready(()));
            assert!(done, "woken before the deadline passed");
        }
        assert_eq!(
            first.0.load(Ordering::Relaxed),
            0,
            "the waker of an earlier poll was woken instead of the last one"
        );
    }
    drop(prev);
}
