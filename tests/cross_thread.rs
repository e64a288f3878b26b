//! Four threads schedule 10^6 bottom-half runs in total onto one context: every run
//! happens, none twice. Two shapes: one-shot BHs with a per-run id (a bitmap catches a
//! double or a missing run), and pre-allocated BHs that each producer reschedules only
//! after it observed the previous run (per-BH counters catch a lost or an extra run).
//! The home thread sleeps in `poll(true)` whenever it runs dry, so a lost wake-up shows
//! up as a hang, which the watchdog turns into a failure with the counters.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;

use aioctx::aio::Bh;
use common::{HANG_LIMIT, Watchdog, new_ctx};

const THREADS: usize = 4;
const TOTAL: usize = 1_000_000;
const PER_THREAD: usize = TOTAL / THREADS;
/// Producers of one-shots pause while this many runs are outstanding, to bound memory.
const MAX_BACKLOG: usize = 20_000;

struct OneshotState {
    seen: Vec<AtomicU64>,
    ran: AtomicUsize,
    scheduled: AtomicUsize,
    doubles: AtomicUsize,
}

#[test]
fn four_threads_schedule_a_million_oneshots() {
    let ctx = new_ctx();
    let state = Arc::new(OneshotState {
        seen: (0..TOTAL.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        ran: AtomicUsize::new(0),
        scheduled: AtomicUsize::new(0),
        doubles: AtomicUsize::new(0),
    });
    let diag_state = Arc::clone(&state);
    let diag_ctx = Arc::downgrade(&ctx);
    let _dog = Watchdog::arm_with(HANG_LIMIT, move || {
        format!(
            "scheduled {} ran {} doubles {}; {:?}",
            diag_state.scheduled.load(Ordering::Relaxed),
            diag_state.ran.load(Ordering::Relaxed),
            diag_state.doubles.load(Ordering::Relaxed),
            diag_ctx.upgrade().map(|c| c.stats())
        )
    });
    ctx.poll(false);
    let before = ctx.stats();

    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ctx = Arc::clone(&ctx);
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    while state.scheduled.load(Ordering::Relaxed)
                        - state.ran.load(Ordering::Relaxed)
                        > MAX_BACKLOG
                    {
                        thread::yield_now();
                    }
                    let id = t * PER_THREAD + i;
                    let s = Arc::clone(&state);
                    state.scheduled.fetch_add(1, Ordering::Relaxed);
                    ctx.schedule_oneshot(move || {
                        let bit = 1u64 << (id % 64);
                        if s.seen[id / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                            s.doubles.fetch_add(1, Ordering::Relaxed);
                        }
                        s.ran.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        })
        .collect();

    while state.ran.load(Ordering::Relaxed) < TOTAL {
        ctx.poll(true);
    }
    for p in producers {
        p.join().expect("producer panicked");
    }
    assert!(!ctx.poll(false), "something ran after the last one-shot");

    assert_eq!(
        state.doubles.load(Ordering::Relaxed),
        0,
        "one-shots ran twice"
    );
    assert_eq!(state.ran.load(Ordering::Relaxed), TOTAL);
    let missing: Vec<usize> = (0..TOTAL)
        .filter(|&id| state.seen[id / 64].load(Ordering::Relaxed) & (1 << (id % 64)) == 0)
        .take(10)
        .collect();
    assert!(missing.is_empty(), "one-shots never ran: {missing:?}...");
    let after = ctx.stats();
    assert_eq!(after.bhs_run - before.bhs_run, TOTAL as u64);
}

/// One pre-allocated BH of a producer.
struct Slot {
    /// Set by the producer before scheduling, cleared by the run: a run that finds it
    /// clear is a run nobody asked for.
    armed: AtomicBool,
    runs: AtomicU64,
    unasked: AtomicU64,
}

const BHS_PER_THREAD: usize = 32;

#[test]
fn four_threads_reschedule_owned_bhs_a_million_times() {
    let ctx = new_ctx();
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..THREADS * BHS_PER_THREAD)
            .map(|_| Slot {
                armed: AtomicBool::new(false),
                runs: AtomicU64::new(0),
                unasked: AtomicU64::new(0),
            })
            .collect(),
    );
    let total_runs = Arc::new(AtomicUsize::new(0));
    let diag = (Arc::clone(&total_runs), Arc::downgrade(&ctx));
    let _dog = Watchdog::arm_with(HANG_LIMIT, move || {
        format!(
            "runs {}; {:?}",
            diag.0.load(Ordering::Relaxed),
            diag.1.upgrade().map(|c| c.stats())
        )
    });
    ctx.poll(false);

    let bhs: Vec<Bh> = (0..slots.len())
        .map(|i| {
            let slots = Arc::clone(&slots);
            let total = Arc::clone(&total_runs);
            ctx.bh_new(move || {
                let s = &slots[i];
                // AcqRel: Acquire pairs with the producer's Release store of `armed`, so
                // its bookkeeping before scheduling is visible; Release publishes this
                // run to the producer's Acquire load.
                if !s.armed.swap(false, Ordering::AcqRel) {
                    s.unasked.fetch_add(1, Ordering::Relaxed);
                }
                s.runs.fetch_add(1, Ordering::Relaxed);
                total.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let bhs = Arc::new(bhs);

    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let slots = Arc::clone(&slots);
            let bhs = Arc::clone(&bhs);
            thread::spawn(move || {
                let mine = t * BHS_PER_THREAD..(t + 1) * BHS_PER_THREAD;
                let mut scheduled = vec![0u64; BHS_PER_THREAD];
                let mut total = 0;
                while total < PER_THREAD {
                    let mut any = false;
                    for (k, i) in mine.clone().enumerate() {
                        if total == PER_THREAD {
                            break;
                        }
                        // Acquire: pairs with the AcqRel swap in the BH, so the previous
                        // run is complete before the BH is scheduled again.
                        if slots[i].armed.load(Ordering::Acquire) {
                            continue;
                        }
                        // Release: pairs with the swap in the BH.
                        slots[i].armed.store(true, Ordering::Release);
                        scheduled[k] += 1;
                        total += 1;
                        any = true;
                        bhs[i].schedule();
                    }
                    if !any {
                        thread::yield_now();
                    }
                }
                scheduled
            })
        })
        .collect();

    while total_runs.load(Ordering::Relaxed) < TOTAL {
        ctx.poll(true);
    }
    let scheduled: Vec<u64> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer panicked"))
        .collect();
    assert!(!ctx.poll(false), "a BH ran after the last schedule");

    for (i, s) in slots.iter().enumerate() {
        assert_eq!(s.unasked.load(Ordering::Relaxed), 0, "BH {i} ran unasked");
        assert_eq!(
            s.runs.load(Ordering::Relaxed),
            scheduled[i],
            "BH {i}: runs differ from schedules"
        );
        assert!(
            !s.armed.load(Ordering::Relaxed),
            "BH {i} never ran its last schedule"
        );
    }
    assert_eq!(total_runs.load(Ordering::Relaxed), TOTAL);
    assert_eq!(scheduled.iter().sum::<u64>(), TOTAL as u64);
    drop(bhs);
}
