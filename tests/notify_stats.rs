//! The syscall claims of the notify protocol, proven through `ctx.stats()`:
//! a notify to a busy loop costs no syscall; a notify to a sleeping loop costs one
//! eventfd write, however many notifies arrive during that sleep; the woken loop
//! consumes the eventfd through its ring, in the one `io_uring_enter` it slept in.
//!
//! None of these assertions depend on timing: "asleep" is established by waiting until
//! `stats().sleeps` counted the sleep (at which point `notify_me` is raised), and every
//! sleeper polls exactly once per kick, so it cannot go back to sleep and take a second
//! write while the test counts.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use aioctx::aio::{AioContext, Bh, Stats};
use common::{HANG_LIMIT, Watchdog, new_ctx, wait_asleep};

const N: u64 = 1000;

/// What one blocking `poll` on the sleeper thread saw.
struct PollResult {
    progress: bool,
    before: Stats,
    after: Stats,
}

/// A home thread that runs one blocking `poll` per command and reports it.
struct Sleeper {
    ctx: Arc<AioContext>,
    /// `true`: one blocking poll; `false`: one non-blocking poll.
    cmd: Option<mpsc::Sender<bool>>,
    res: mpsc::Receiver<PollResult>,
    thread: Option<JoinHandle<()>>,
}

impl Sleeper {
    fn new(ctx: &Arc<AioContext>) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel::<bool>();
        let (res_tx, res_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let home = Arc::clone(ctx);
        let thread = thread::Builder::new()
            .name("sleeper".into())
            .spawn(move || {
                // Bind the context to this thread, and submit the loop's own eventfd read.
                home.poll(false);
                ready_tx.send(()).unwrap();
                while let Ok(blocking) = cmd_rx.recv() {
                    let before = home.stats();
                    let progress = home.poll(blocking);
                    let after = home.stats();
                    res_tx
                        .send(PollResult {
                            progress,
                            before,
                            after,
                        })
                        .unwrap();
                }
            })
            .unwrap();
        ready_rx.recv().unwrap();
        Self {
            ctx: Arc::clone(ctx),
            cmd: Some(cmd_tx),
            res: res_rx,
            thread: Some(thread),
        }
    }

    /// Makes the sleeper run one blocking `poll`, waits until it sleeps, runs `kick`,
    /// and returns what the `poll` saw.
    fn cycle(&self, kick: impl FnOnce()) -> PollResult {
        let sleeps = self.ctx.stats().sleeps;
        self.cmd.as_ref().unwrap().send(true).unwrap();
        common::wait_until("the loop to go to sleep", || {
            if let Ok(r) = self.res.try_recv() {
                panic!(
                    "the loop did not sleep: its poll returned {} at once: {:?} -> {:?}",
                    r.progress, r.before, r.after
                );
            }
            self.ctx.stats().sleeps > sleeps
        });
        wait_asleep(&self.ctx, sleeps + 1);
        kick();
        self.res
            .recv_timeout(HANG_LIMIT)
            .unwrap_or_else(|_| panic!("the sleeping loop did not wake: {:?}", self.ctx.stats()))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        drop(self.cmd.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
            && !thread::panicking()
        {
            panic!("sleeper thread panicked");
        }
    }
}

#[test]
fn notifies_to_a_busy_loop_make_no_syscall() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("notifies_to_a_busy_loop", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    ctx.poll(false);

    // On the home thread, between non-blocking polls.
    for i in 0..N {
        ctx.notify();
        bh.schedule();
        assert!(ctx.poll(false));
        assert_eq!(runs.load(Ordering::Relaxed), i + 1);
    }

    // From another thread, while the home thread polls without blocking.
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..N {
                ctx.notify();
                bh.schedule();
            }
            // Release: pairs with the Acquire load below, after the last schedule.
            done.store(true, Ordering::Release);
        });
        // Acquire: pairs with the Release store above.
        while !done.load(Ordering::Acquire) {
            ctx.poll(false);
        }
        ctx.poll(false);
    });

    let s = ctx.stats();
    assert!(s.notifies >= 4 * N, "notifies not counted: {s:?}");
    assert_eq!(s.sleeps, 0, "a non-blocking poll slept: {s:?}");
    assert_eq!(
        s.eventfd_writes, 0,
        "a notify to a busy loop wrote the eventfd: {s:?}"
    );
}

#[test]
fn notifies_to_a_loop_that_always_has_work_make_no_syscall() {
    // A blocking poll that finds a BH to run never raises notify_me, so it costs
    // notifiers nothing either.
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("loop_with_work", &ctx);
    let slot: Arc<Mutex<Option<Bh>>> = Arc::new(Mutex::new(None));
    let s2 = Arc::clone(&slot);
    let bh = ctx.bh_new(move || {
        if let Some(bh) = s2.lock().unwrap().as_ref() {
            bh.schedule();
        }
    });
    bh.schedule();
    *slot.lock().unwrap() = Some(bh);

    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..N {
                ctx.notify();
            }
            // Release: pairs with the Acquire load below.
            done.store(true, Ordering::Release);
        });
        // Acquire: pairs with the Release store above.
        while !done.load(Ordering::Acquire) {
            assert!(ctx.poll(true));
        }
    });
    drop(slot.lock().unwrap().take());

    let s = ctx.stats();
    assert!(s.notifies >= N, "notifies not counted: {s:?}");
    assert_eq!(s.sleeps, 0, "a loop with work to do slept: {s:?}");
    assert_eq!(
        s.eventfd_writes, 0,
        "a notify to a busy loop wrote the eventfd: {s:?}"
    );
}

#[test]
fn notify_to_sleeping_loop_writes_eventfd_once() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("notify_to_sleeping_loop", &ctx);
    let sleeper = Sleeper::new(&ctx);

    // Several kick-and-wake cycles: each costs exactly one write, and the sleeper exactly
    // one io_uring_enter (the wait itself, which also consumed the eventfd through the
    // loop's ring read: its one CQE). Were the eventfd left unconsumed, the next sleep
    // would return at once and the next notify would find the loop awake.
    for cycle in 0..5 {
        let before = ctx.stats();
        let r = sleeper.cycle(|| ctx.notify());
        let after = ctx.stats();
        assert!(
            !r.progress,
            "cycle {cycle}: a bare notify counted as progress"
        );
        assert_eq!(
            after.eventfd_writes - before.eventfd_writes,
            1,
            "cycle {cycle}: {before:?} -> {after:?}"
        );
        assert_eq!(after.sleeps - before.sleeps, 1, "cycle {cycle}");
        assert_eq!(
            r.after.enters - r.before.enters,
            1,
            "cycle {cycle}: the woken loop made extra io_uring_enter calls: {:?} -> {:?}",
            r.before,
            r.after
        );
        assert_eq!(
            r.after.cqes - r.before.cqes,
            1,
            "cycle {cycle}: expected exactly the eventfd read's completion: {:?} -> {:?}",
            r.before,
            r.after
        );
    }
}

#[test]
fn hundred_notifies_during_one_sleep_write_once() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("hundred_notifies", &ctx);
    let sleeper = Sleeper::new(&ctx);

    // From the test thread.
    let before = ctx.stats();
    let r = sleeper.cycle(|| {
        for _ in 0..100 {
            ctx.notify();
        }
    });
    let after = ctx.stats();
    assert!(!r.progress);
    assert_eq!(after.notifies - before.notifies, 100);
    assert_eq!(after.eventfd_writes - before.eventfd_writes, 1, "{after:?}");
    assert_eq!(r.after.enters - r.before.enters, 1);
    // Notifies that came after the wake-up set `notified` without writing; take them.
    sleeper.settle();
    assert_eq!(ctx.stats().eventfd_writes, after.eventfd_writes);

    // From four threads at once.
    let before = ctx.stats();
    let r = sleeper.cycle(|| {
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        ctx.notify();
                    }
                });
            }
        });
    });
    let after = ctx.stats();
    assert!(!r.progress);
    assert_eq!(after.notifies - before.notifies, 100);
    assert_eq!(after.eventfd_writes - before.eventfd_writes, 1, "{after:?}");
    assert_eq!(r.after.enters - r.before.enters, 1);
}

#[test]
fn bh_schedules_during_one_sleep_write_once_and_all_run() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("bh_schedules_during_sleep", &ctx);
    let runs = Arc::new(AtomicU64::new(0));
    let bhs: Vec<Bh> = (0..100)
        .map(|_| {
            let r = Arc::clone(&runs);
            ctx.bh_new(move || {
                r.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let sleeper = Sleeper::new(&ctx);

    let before = ctx.stats();
    let r = sleeper.cycle(|| {
        thread::scope(|s| {
            for chunk in bhs.chunks(25) {
                s.spawn(move || chunk.iter().for_each(Bh::schedule));
            }
        });
    });
    let after = ctx.stats();
    assert!(r.progress, "the woken loop ran no BH");
    assert_eq!(after.eventfd_writes - before.eventfd_writes, 1, "{after:?}");

    // The BHs scheduled after the wake-up run on the next poll, which does not sleep.
    while runs.load(Ordering::Relaxed) < 100 {
        let r = sleeper.cycle_nowait();
        assert!(r.progress);
    }
    assert_eq!(runs.load(Ordering::Relaxed), 100);
    let end = ctx.stats();
    assert_eq!(end.eventfd_writes, after.eventfd_writes);
    assert_eq!(end.sleeps, after.sleeps, "slept with BHs pending");
}

impl Sleeper {
    /// One non-blocking `poll` on the sleeper's thread: takes the notifies that arrived
    /// after the last wake-up (they set `notified` without writing), so that the next
    /// blocking poll sleeps.
    fn settle(&self) {
        self.cmd.as_ref().unwrap().send(false).unwrap();
        self.res
            .recv_timeout(HANG_LIMIT)
            .expect("a non-blocking poll blocked");
    }

    /// One blocking `poll` that is expected not to sleep.
    fn cycle_nowait(&self) -> PollResult {
        self.cmd.as_ref().unwrap().send(true).unwrap();
        self.res
            .recv_timeout(HANG_LIMIT)
            .unwrap_or_else(|_| panic!("poll with work pending blocked: {:?}", self.ctx.stats()))
    }
}
