//! Adaptive busy polling (QEMU: `aio_context_set_poll_params`, `adjust_polling_time`):
//! after a blocking poll, the polling time grows (0 → 4 µs, then × grow) when the wait
//! was longer than it but below `max_ns`, and shrinks (÷ shrink, or to 0) when the wait
//! exceeded `max_ns`.
//!
//! Each wait has a *lower* bound by construction: a kicker thread waits until the loop
//! has counted its sleep (inside the poll being measured), sleeps for the wanted time,
//! then notifies. The growth steps need an upper bound too (wait < `max_ns`); they use
//! `max_ns` = 10 s for waits of about 1 ms.
#![cfg(not(loom))]

mod common;

use std::thread;
use std::time::Duration;

use aioctx::aio::{AioContext, PollParams};
use common::{Watchdog, wait_asleep};

const MAX_GROW: u64 = 10_000_000_000;
const SHORT: Duration = Duration::from_millis(1);
const LONG: Duration = Duration::from_millis(5);

/// Clears pending notifies, then runs one blocking poll that a kicker thread ends after
/// at least `wait`; returns the polling time afterwards.
fn wait_once(ctx: &AioContext, wait: Duration) -> u64 {
    while ctx.poll(false) {}
    let target = ctx.stats().sleeps + 1;
    thread::scope(|s| {
        s.spawn(|| {
            wait_asleep(ctx, target);
            thread::sleep(wait);
            ctx.notify();
        });
        assert!(!ctx.poll(true), "a bare notify counted as progress");
    });
    assert_eq!(
        ctx.stats().sleeps,
        target,
        "the measured poll did not sleep once"
    );
    ctx.poll_ns()
}

#[test]
fn poll_ns_grows_on_short_waits_and_shrinks_on_long_ones() {
    let ctx = AioContext::builder()
        .poll_params(PollParams::from_qemu(MAX_GROW, 0, 0))
        .build()
        .unwrap();
    let _dog = Watchdog::on_ctx(&ctx);
    ctx.poll(false);
    assert!(ctx.is_home_thread());
    assert_eq!(ctx.poll_ns(), 0);

    // Non-blocking polls never adjust.
    for _ in 0..10 {
        ctx.poll(false);
    }
    assert_eq!(ctx.poll_ns(), 0);

    // Growth: 0 -> 4 µs, then doubled (grow 0 means 2).
    assert_eq!(wait_once(&ctx, SHORT), 4000);
    assert_eq!(wait_once(&ctx, SHORT), 8000);
    // grow = 3.
    ctx.set_poll_params(PollParams::from_qemu(MAX_GROW, 3, 0));
    assert_eq!(wait_once(&ctx, SHORT), 24000);

    // Off elsewhere: the polling time is only read on the home thread.
    thread::scope(|s| {
        s.spawn(|| assert_eq!(ctx.poll_ns(), 0));
    });

    // Shrink: a wait above max_ns (1 ms) divides by shrink ...
    ctx.set_poll_params(PollParams::from_qemu(1_000_000, 3, 2));
    assert_eq!(wait_once(&ctx, LONG), 12000);
    assert_eq!(wait_once(&ctx, LONG), 6000);
    // ... or resets to 0 when shrink is 0.
    ctx.set_poll_params(PollParams::from_qemu(1_000_000, 3, 0));
    assert_eq!(wait_once(&ctx, LONG), 0);

    // Grown again, then polling disabled (max 0): a polling time above a lowered
    // maximum starts again from zero at the next poll, and stays there.
    ctx.set_poll_params(PollParams::from_qemu(MAX_GROW, 0, 0));
    assert_eq!(wait_once(&ctx, SHORT), 4000);
    ctx.set_poll_params(PollParams::from_qemu(0, 3, 2));
    assert_eq!(wait_once(&ctx, LONG), 0);
    assert_eq!(wait_once(&ctx, SHORT), 0);
}

#[test]
fn busy_polling_sees_a_bh_without_sleeping() {
    // With a polling time, work that arrives while the loop spins is picked up without a
    // sleep. The kicker only schedules once the loop has started spinning, which it
    // detects by the poll count; the spin is 10 s long, so the BH arrives within it.
    let ctx = AioContext::builder()
        .poll_params(PollParams::from_qemu(MAX_GROW, 0, 0))
        .build()
        .unwrap();
    let _dog = Watchdog::on_ctx(&ctx);
    ctx.poll(false);
    // Grow to a long polling time: 4 µs, then × 1,000,000 = 4 s (under max 10 s).
    assert_eq!(wait_once(&ctx, SHORT), 4000);
    ctx.set_poll_params(PollParams::from_qemu(MAX_GROW, 1_000_000, 0));
    let ns = wait_once(&ctx, SHORT);
    assert_eq!(ns, 4_000_000_000);

    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = runs.clone();
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    while ctx.poll(false) {}
    let before = ctx.stats();
    thread::scope(|s| {
        s.spawn(|| {
            common::wait_until("the loop to start polling", || {
                ctx.stats().polls > before.polls
            });
            thread::sleep(SHORT);
            bh.schedule();
        });
        assert!(ctx.poll(true));
    });
    let after = ctx.stats();
    assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        after.sleeps, before.sleeps,
        "the loop slept instead of polling"
    );
    assert_eq!(after.eventfd_writes, before.eventfd_writes);
    // The wait (about 1 ms) was shorter than the polling time: unchanged.
    assert_eq!(ctx.poll_ns(), ns);
}
