//! `aio_wait` kick: with no waiter, with a waiter whose main loop is busy, and with one
//! whose main loop sleeps; against the primitives a kick could be built from.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use aioctx_aio::main_context;
use criterion::{Criterion, criterion_group, criterion_main};

/// The main loop on a thread of its own, inside `wait_while`, counting its wake-ups.
struct Waiter {
    stop: Arc<AtomicBool>,
    wakeups: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Waiter {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let wakeups = Arc::new(AtomicU64::new(0));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&wakeups));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("main-loop".into())
            .spawn(move || {
                main_context().make_current();
                ready_tx.send(()).unwrap();
                aioctx_wait::wait_while(None, || {
                    // Relaxed: a counter the bench only compares against itself.
                    w.fetch_add(1, Ordering::Relaxed);
                    // Relaxed: the kick that follows the store carries the wake-up.
                    !s.load(Ordering::Relaxed)
                });
            })
            .unwrap();
        ready_rx.recv().unwrap();
        while aioctx_wait::num_waiters() == 0 {
            thread::yield_now();
        }
        Self {
            stop,
            wakeups,
            thread: Some(thread),
        }
    }

    fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Kicks `iters` times, each time after the loop consumed the previous kick (and,
    /// when `sleeping`, went back to sleep), timing only the kicks.
    fn time_kicks(&self, iters: u64, sleeping: bool) -> Duration {
        let main = main_context();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let seen = self.wakeups();
            if sleeping {
                while !main.is_sleeping() {
                    std::hint::spin_loop();
                }
            }
            let t = Instant::now();
            aioctx_wait::kick();
            total += t.elapsed();
            while self.wakeups() == seen {
                std::hint::spin_loop();
            }
        }
        total
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        aioctx_wait::kick();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kick");

    // Floor: what `kick` is with no waiter, written by hand.
    let waiters = AtomicU32::new(0);
    g.bench_function("fence_load", |b| {
        b.iter(|| {
            fence(Ordering::SeqCst);
            black_box(waiters.load(Ordering::Relaxed))
        })
    });

    g.bench_function("aioctx_no_waiter", |b| b.iter(aioctx_wait::kick));

    {
        let waiter = Waiter::start();
        // Busy: the main loop spins for up to 1 s before it would sleep.
        main_context().set_poll_params(1_000_000_000, 0, 0);
        g.bench_function("aioctx_busy_loop", |b| {
            b.iter_custom(|iters| waiter.time_kicks(iters, false))
        });
        main_context().set_poll_params(0, 0, 0);
        g.bench_function("aioctx_sleeping_loop", |b| {
            b.iter_custom(|iters| waiter.time_kicks(iters, true))
        });
    }

    // SAFETY: creating an eventfd has no memory preconditions.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    g.bench_function("eventfd_write", |b| {
        let one = 1u64;
        b.iter(|| {
            // SAFETY: `one` is a live 8-byte value, as eventfd writes require.
            let r = unsafe { libc::write(efd, (&raw const one).cast(), 8) };
            black_box(r)
        })
    });
    // SAFETY: `efd` is ours and no longer used.
    unsafe { libc::close(efd) };

    let futex = AtomicU32::new(0);
    g.bench_function("futex_wake_no_waiter", |b| {
        b.iter(|| {
            // SAFETY: FUTEX_WAKE only reads the address of a live AtomicU32.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    futex.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                )
            };
            black_box(r)
        })
    });

    let me = thread::current();
    g.bench_function("std_unpark", |b| b.iter(|| me.unpark()));
    thread::park_timeout(Duration::ZERO);

    let notify = tokio::sync::Notify::new();
    g.bench_function("tokio_notify_one", |b| b.iter(|| notify.notify_one()));

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
