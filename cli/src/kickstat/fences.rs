//! The scenarios of the asymmetric fences: readers on one and on two contexts at once
//! (the hot side's scaling), and the rare sides that pay for the hot sides — a
//! `wait_while` registration, and a write-lock pair with 0, 1 or 3 iothreads busy on a
//! CPU (in asymmetric mode a `membarrier` must interrupt every CPU that runs one).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aioctx::aio::{AioContext, IoThread};
use aioctx::graph::graph_lock;
use aioctx::wait::wait_while;

use super::Env;
use super::harness::{Helper, Measured, Window, single, spin_until};
use crate::sys;

/// `n` `rdlock().await` + drop pairs on each of `readers` threads at once, each thread
/// running its own context (and so its own reader counter) on its own CPU where there
/// are enough. The time per pair is the slowest thread's.
pub(super) fn rdlock_pair_contexts(env: &Env, n: u64, readers: usize) -> Measured {
    let cpus = sys::allowed_cpus().unwrap_or_default();
    let go = Arc::new(AtomicBool::new(false));
    let helpers: Vec<Helper<Duration>> = (0..readers)
        .map(|i| {
            // From the last CPU down: the main thread, which only waits, keeps the first.
            let cpu = cpus.iter().rev().cycle().nth(i).copied();
            let go = Arc::clone(&go);
            Helper::spawn_pinned(
                &format!("reader{i}"),
                move || {
                    if let Some(cpu) = cpu {
                        let _ = sys::set_cpus(&[cpu]);
                    }
                },
                move || {
                    let ctx = AioContext::new().expect("a reader's AioContext");
                    let lock = graph_lock();
                    // Registers this thread's counter, outside the timed part.
                    ctx.block_on(async { drop(lock.rdlock().await) });
                    // Acquire: pairs with the Release store below; starts all readers
                    // together.
                    spin_until("the readers' start", || go.load(Ordering::Acquire));
                    let start = Instant::now();
                    ctx.block_on(async {
                        for _ in 0..n {
                            let guard = lock.rdlock().await;
                            drop(black_box(guard));
                        }
                    });
                    start.elapsed()
                },
            )
        })
        .collect();
    let w = Window::open(env);
    for h in &helpers {
        h.go();
    }
    // Release: pairs with the readers' Acquire spin.
    go.store(true, Ordering::Release);
    let timed = helpers
        .into_iter()
        .map(Helper::finish)
        .max()
        .unwrap_or_default();
    Measured {
        ops: n,
        timed,
        window: w.close(),
        explicit: None,
    }
}

/// `wait_while(None, || false)`: a registration and its drop, no sleep — the rare side
/// of the kick (one `membarrier` in asymmetric mode).
pub(super) fn wait_while_register(env: &Env, n: u64) -> Measured {
    let w = Window::open(env);
    for _ in 0..n {
        black_box(wait_while(None, || black_box(false)));
    }
    single(w.close(), n, None)
}

/// `wrlock()` + drop on the main loop with no reader, while `busy` iothreads spin in a
/// bottom half: the rare side of the read lock (two `membarrier` calls per pair in
/// asymmetric mode — the writer's `wait_while` registration and its [W1] — each of
/// which must interrupt every CPU that runs a busy iothread).
pub(super) fn wrlock_pair(env: &Env, n: u64, busy: usize) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let iothreads: Vec<IoThread> = (0..busy)
        .map(|i| {
            let io = IoThread::new(&format!("busy{i}")).expect("a busy iothread");
            let (stop, spinning) = (Arc::clone(&stop), Arc::clone(&spinning));
            io.ctx().schedule_oneshot(move || {
                spinning.fetch_add(1, Ordering::Relaxed);
                // Acquire: pairs with the Release store after the window.
                while !stop.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            });
            io
        })
        .collect();
    spin_until("the busy iothreads to spin", || {
        spinning.load(Ordering::Relaxed) == busy
    });
    let lock = graph_lock();
    let w = Window::open(env);
    for _ in 0..n {
        drop(black_box(lock.wrlock()));
    }
    let window = w.close();
    // Release: pairs with the busy loops' Acquire loads.
    stop.store(true, Ordering::Release);
    drop(iothreads);
    single(window, n, None)
}
