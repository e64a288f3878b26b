//! The peer scenarios: what the primitives a kick could be built from cost, measured
//! in the same windows as the library's scenarios.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

use super::Env;
use super::harness::{Cycles, Helper, Measured, Pinned, Window, single};
use crate::sys;

/// Stands in for `num_waiters` in the floor of `kick-idle`.
static PEER_WAITERS: AtomicU32 = AtomicU32::new(0);

#[cold]
#[inline(never)]
fn peer_never_taken() {
    black_box(());
}

pub(super) fn peer_fence_load(env: &Env, n: u64) -> Measured {
    // Opaque to the optimizer, like the real count: never provably zero.
    let waiters = black_box(&PEER_WAITERS);
    let w = Window::open(env);
    for _ in 0..n {
        // The floor of `kick`: its [K1] fence and its count load, nothing else.
        fence(Ordering::SeqCst);
        if waiters.load(Ordering::Relaxed) != 0 {
            peer_never_taken();
        }
    }
    single(w.close(), n, Some(0))
}

pub(super) fn peer_eventfd_write(env: &Env, n: u64) -> Measured {
    let efd = sys::eventfd(true).expect("creating an eventfd");
    let w = Window::open(env);
    for _ in 0..n {
        sys::eventfd_write(&efd);
    }
    let window = w.close();
    sys::eventfd_read(&efd);
    single(window, n, Some(n))
}

pub(super) fn peer_futex_wake(env: &Env, n: u64) -> Measured {
    let word = AtomicU32::new(0);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(sys::futex_wake(&word));
    }
    single(w.close(), n, Some(n))
}

pub(super) fn peer_unpark(env: &Env, n: u64) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    // Running, never parked: each unpark only flips the parker's state.
    let (_pinned, pin_helper) = Pinned::main_side();
    let runner = Helper::spawn_pinned("runner", pin_helper, move || {
        // Acquire: pairs with the Release store below.
        // No deadline: it runs as long as the unparks do, however many were asked for.
        while !s.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    });
    let thread = runner.handle.thread().clone();
    runner.go();
    let w = Window::open(env);
    for _ in 0..n {
        thread.unpark();
    }
    let window = w.close();
    // Release: pairs with the runner's Acquire spin.
    stop.store(true, Ordering::Release);
    runner.finish();
    single(window, n, None)
}

pub(super) fn peer_tokio_notify(env: &Env, n: u64) -> Measured {
    let notify = tokio::sync::Notify::new();
    let w = Window::open(env);
    for _ in 0..n {
        notify.notify_one();
    }
    single(w.close(), n, None)
}

/// The floor of the sleeping scenarios, cycle for cycle: the main thread blocks in
/// `read(2)` on an eventfd; the writer waits until it is asleep (outside the timed part,
/// as for the loop), writes, and times until the reader signals back through an atomic.
/// Two syscalls per cycle: the write and the read.
pub(super) fn peer_eventfd_pingpong(env: &Env, n: u64) -> Measured {
    let efd = Arc::new(sys::eventfd(false).expect("creating an eventfd"));
    let e = Arc::clone(&efd);
    let cycles = Cycles::new();
    let (_pinned, writer) = cycles.spawn_waker(env, n, |_| true, move || sys::eventfd_write(&e));
    let w = Window::open(env);
    writer.go();
    while cycles.see() < n {
        sys::eventfd_read(&efd);
    }
    let window = w.close();
    Measured {
        ops: n,
        timed: writer.finish(),
        window,
        explicit: Some(2 * n),
    }
}

pub(super) fn peer_std_rwlock_read(env: &Env, n: u64) -> Measured {
    let lock = std::sync::RwLock::new(0u64);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(*lock.read().expect("an uncontended RwLock"));
    }
    single(w.close(), n, Some(0))
}

pub(super) fn peer_parking_lot_read(env: &Env, n: u64) -> Measured {
    let lock = parking_lot::RwLock::new(0u64);
    let w = Window::open(env);
    for _ in 0..n {
        black_box(*lock.read());
    }
    single(w.close(), n, Some(0))
}
