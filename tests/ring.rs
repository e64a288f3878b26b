//! The ring under pressure: a ring far smaller than the work pushed through
//! it must neither lose nor duplicate a completion (SQ full: submit and retry; CQ
//! overflow: flush the kernel's backlog), and `stats().enters` must count every
//! `io_uring_enter`, also those a full SQ forces. Dropping a context with operations in
//! flight cancels them, reaps their CQEs and runs each callback once with its CQE.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use aioctx::aio::io_uring::{opcode, types};
use aioctx::aio::{AioContext, EventNotifier};
use common::Watchdog;

const OPS: usize = 2000;

/// Per-op completion counters: every op must complete exactly once.
struct Seen(Vec<AtomicU64>);

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self((0..OPS).map(|_| AtomicU64::new(0)).collect()))
    }

    fn check(&self) {
        for (i, c) in self.0.iter().enumerate() {
            assert_eq!(
                c.load(Ordering::Relaxed),
                1,
                "op {i} completed a wrong number of times"
            );
        }
    }
}

fn submit_nop(ctx: &AioContext, seen: &Arc<Seen>, i: usize, done: &Arc<AtomicUsize>) {
    let (seen, done) = (Arc::clone(seen), Arc::clone(done));
    // SAFETY: a NOP names no memory.
    unsafe {
        ctx.submit_raw(
            opcode::Nop::new().build(),
            Box::new(move |res, _| {
                assert_eq!(res, 0, "NOP failed");
                seen.0[i].fetch_add(1, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }
    .expect("submit_raw on io_uring");
}

#[test]
fn nop_flood_on_a_tiny_ring_loses_no_completion() {
    for entries in [1, 2, 8] {
        let Some(ctx) = common::uring_ctx(
            "nop_flood_on_a_tiny_ring_loses_no_completion",
            AioContext::builder().ring_entries(entries),
        ) else {
            return;
        };
        let _dog = Watchdog::for_ctx("nop_flood", &ctx);
        ctx.poll(false);
        let (sq, cq) = ctx.ring_entries();
        assert!(
            sq >= entries && cq >= sq,
            "ring {sq}/{cq} for {entries} entries"
        );
        let seen = Seen::new();
        let done = Arc::new(AtomicUsize::new(0));
        let before = ctx.stats();
        // From the home thread, outside poll: far more than the SQ and the CQ hold.
        for i in 0..OPS {
            submit_nop(&ctx, &seen, i, &done);
        }
        while done.load(Ordering::Relaxed) < OPS {
            assert!(
                ctx.poll(true),
                "a poll with completions pending made no progress"
            );
        }
        assert!(!ctx.poll(false));
        seen.check();
        let after = ctx.stats();
        // A full SQ of `sq` entries forces an io_uring_enter at least every `sq` pushes.
        let forced = (OPS as u64 - 1) / u64::from(sq);
        assert!(
            after.enters - before.enters >= forced,
            "ring {sq}: {} io_uring_enter calls counted, but {forced} were needed: {after:?}",
            after.enters - before.enters
        );
        assert!(after.cqes - before.cqes >= OPS as u64);
    }
}

#[test]
fn nop_flood_from_other_threads_on_a_tiny_ring() {
    let Some(ctx) = common::uring_ctx(
        "nop_flood_from_other_threads_on_a_tiny_ring",
        AioContext::builder().ring_entries(2),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("nop_flood_threads", &ctx);
    ctx.poll(false);
    let seen = Seen::new();
    let done = Arc::new(AtomicUsize::new(0));
    thread::scope(|s| {
        for t in 0..4 {
            let (ctx, seen, done) = (&ctx, &seen, &done);
            s.spawn(move || {
                for i in (t..OPS).step_by(4) {
                    submit_nop(ctx, seen, i, done);
                }
            });
        }
        while done.load(Ordering::Relaxed) < OPS {
            ctx.poll(true);
        }
    });
    assert!(!ctx.poll(false));
    seen.check();
}

#[test]
fn fd_handlers_on_a_tiny_ring_all_fire() {
    // More armed polls than the ring has entries.
    let ctx = AioContext::builder().ring_entries(1).build().unwrap();
    let _dog = Watchdog::for_ctx("fd_handlers_tiny_ring", &ctx);
    let runs = Arc::new(AtomicUsize::new(0));
    let notifiers: Vec<Arc<EventNotifier>> = (0..16)
        .map(|_| Arc::new(EventNotifier::new().unwrap()))
        .collect();
    for e in &notifiers {
        let (e2, r) = (Arc::clone(e), Arc::clone(&runs));
        ctx.set_fd_handler(
            e.fd(),
            Some(Box::new(move || {
                assert!(e2.test_and_clear().unwrap());
                r.fetch_add(1, Ordering::Relaxed);
            })),
            None,
        )
        .unwrap();
    }
    assert!(!ctx.poll(false));
    for round in 1..=3 {
        for e in &notifiers {
            e.set().unwrap();
        }
        while runs.load(Ordering::Relaxed) < 16 * round {
            ctx.poll(true);
        }
        assert_eq!(runs.load(Ordering::Relaxed), 16 * round);
    }
    for e in &notifiers {
        ctx.set_fd_handler(e.fd(), None, None).unwrap();
    }
    assert!(!ctx.poll(false));
}

#[test]
fn dropping_a_context_cancels_operations_in_flight() {
    let Some(ctx) = common::uring_ctx(
        "dropping_a_context_cancels_operations_in_flight",
        AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::new("drop_in_flight", common::HANG_LIMIT, || {
        "AioContext::drop did not return".into()
    });
    ctx.poll(false);
    let called = Arc::new(Mutex::new(Vec::new()));
    let token = Arc::new(());
    // A 100 s timeout, and a read of an eventfd nobody writes: neither completes alone.
    let ts = Box::new(types::Timespec::new().sec(100));
    let e = Arc::new(EventNotifier::new().unwrap());
    let mut buf = Box::new([0u8; 8]);
    let timeout = opcode::Timeout::new(&raw const *ts).build();
    let read = opcode::Read::new(types::Fd(e.fd()), buf.as_mut_ptr(), 8).build();
    for (entry, name) in [(timeout, "timeout"), (read, "read")] {
        let (c, t) = (Arc::clone(&called), Arc::clone(&token));
        let keep = (Arc::clone(&e), name);
        // SAFETY: `ts`, `buf` and the eventfd live in this test until after the context
        // is dropped, and dropping the context reaps both operations.
        unsafe {
            ctx.submit_raw(
                entry,
                Box::new(move |res, _| {
                    let _ = (&t, &keep);
                    c.lock().unwrap().push((name, res));
                }),
            )
        }
        .expect("submit_raw on io_uring");
    }
    let poll_runs = Arc::new(AtomicUsize::new(0));
    let pr = Arc::clone(&poll_runs);
    ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            pr.fetch_add(1, Ordering::Relaxed);
        })),
        None,
    )
    .unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(Arc::strong_count(&token), 3);

    drop(ctx);
    // Each callback ran once, at the drop, with its CQE: the cancel won both.
    let mut seen = called.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [("read", -libc::ECANCELED), ("timeout", -libc::ECANCELED)],
        "callbacks at drop"
    );
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "callbacks were not freed at drop"
    );
    assert_eq!(
        Arc::strong_count(&poll_runs),
        1,
        "the fd handler was not freed at drop"
    );
    assert_eq!(poll_runs.load(Ordering::Relaxed), 0);
    drop((ts, buf));
}
